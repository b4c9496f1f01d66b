"""Errors the core raises: what went wrong, never how to say it over HTTP.

They carry what a client needs to fix the request, never a traceback, in the core's own
terms: which :class:`Part` of the request is wrong, which item of it, and the facts (a
length, a limit). Sentences that name a whole part take its name from a :data:`Naming`:
the core's own nouns by default (:attr:`ServingError.message`), each API's field names when
the HTTP layer describes the error (:mod:`trt_async.http.errors`, which also maps each class
to a status and each API dialect's error body, in one table).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable


class Part(enum.Enum):
    """The part of a request an error is about; the value is the core's own name for it.
    Each API names the field that carries a part its own way (OpenAI's ``input``, TEI's
    ``inputs``, Cohere's ``texts``)."""

    #: The texts (or token-id lists) to embed, classify or tokenize.
    INPUTS = "input"
    QUERY = "query"
    DOCUMENTS = "documents"
    #: The texts of a zero-shot classification.
    TEXTS = "text"
    #: The first texts of (premise, hypothesis) pairs.
    PREMISES = "premises"
    LABELS = "candidate labels"
    TEMPLATE = "hypothesis template"
    DIMENSIONS = "dimensions"
    #: How a request turns truncation on (the model config's own ``truncate: true``).
    TRUNCATION = "truncate=true"
    MODEL = "model"
    #: The name of one of the model's prompts (sentence-transformers' ``prompt_name``).
    PROMPT_NAME = "prompt_name"
    #: A prompt's own text, sent with the request.
    PROMPT = "prompt"
    #: The name a model is loaded under.
    NAME = "name"
    #: An LLM reranker's instruction.
    INSTRUCTION = "instruction"
    #: The images to embed (URLs, ``data:`` URIs or base64).
    IMAGES = "image"


#: How a part is named in a sentence: :func:`core_name`, or an API's field names.
Naming = Callable[[Part], str]

#: Parts that hold several items, and what one item is called.
ITEMS: dict[Part, str] = {
    Part.INPUTS: "text",
    Part.PREMISES: "premise",
    Part.DOCUMENTS: "document",
    Part.TEXTS: "text",
    Part.LABELS: "label",
    Part.IMAGES: "image",
}


def core_name(part: Part) -> str:
    return part.value


class ServingError(Exception):
    """Base of every error a client may see, about ``part`` of the request when one is to
    blame. ``field`` is an API's own field name: only the HTTP layer gives one, for checks it
    makes on its own fields; the core names parts."""

    def __init__(
        self, message: str = "", *, part: Part | None = None, field: str | None = None
    ) -> None:
        super().__init__()
        self.part = part
        self.field = field
        self._message = message

    def __str__(self) -> str:
        return self.message

    def describe(self, name: Naming) -> str:
        """The message, with each part named by ``name``."""
        return self._message

    @property
    def message(self) -> str:
        return self.describe(core_name)


class InvalidInput(ServingError):
    """Input that cannot be served as given."""


class EmptyInput(InvalidInput):
    """No items in ``part`` (``index`` None), or an empty item at ``index``."""

    def __init__(
        self,
        part: Part,
        index: int | None = None,
        *,
        token_list: bool = False,
        field: str | None = None,
    ) -> None:
        self.index = index
        self.token_list = token_list
        super().__init__(part=part, field=field)

    def describe(self, name: Naming) -> str:
        assert self.part is not None
        own = self.field or name(self.part)
        item = ITEMS.get(self.part)
        if item is None:
            return f"{own} is an empty string"
        if self.index is None:
            return f"{own} is empty; send at least one {item}"
        what = "token list" if self.token_list else "string; send non-empty text"
        return f"{own}[{self.index}] is an empty {what}"


class InputTooLong(InvalidInput):
    """An item of ``part`` is longer than the model takes and truncation is off (or cannot
    help: ``truncatable`` False)."""

    def __init__(
        self,
        index: int,
        length: int,
        max_length: int,
        *,
        part: Part = Part.INPUTS,
        what: str = "",
        at_least: bool = False,
        truncatable: bool = True,
    ) -> None:
        self.index = index
        self.length = length
        self.max_length = max_length
        self.what = what or f"input {index}"
        self.at_least = at_least
        self.truncatable = truncatable
        super().__init__(part=part)

    def describe(self, name: Naming) -> str:
        given = f"at least {self.length}" if self.at_least else str(self.length)
        fix = (
            f"Shorten it or send {name(Part.TRUNCATION)}."
            if self.truncatable
            else "Send it in shorter parts."
        )
        return (
            f"{self.what} must have less than {self.max_length + 1} tokens. Given: {given}. {fix}"
        )

    def about(self, index: int, part: Part, what: str) -> InputTooLong:
        """The same error about item ``index`` of ``part``, called ``what`` (for inputs the
        server rearranged, e.g. a query put first or texts paired with every label)."""
        return InputTooLong(index, self.length, self.max_length, part=part, what=what)


class MixedInputs(InvalidInput):
    """Texts and token-id lists in one request."""

    def __init__(self, index: int) -> None:
        super().__init__(f"input {index}: mixes token ids and text", part=Part.INPUTS)
        self.index = index


class ForeignTokenIds(InvalidInput):
    """Token ids that cannot be this model's own tokenisation of a text."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(
            f"input {index} is not a token-id list made by this model's tokenizer: {reason}. "
            "Send text instead, or ids from this model's own tokenizer with its special "
            "tokens. LangChain's OpenAIEmbeddings sends OpenAI "
            "(tiktoken cl100k) token ids by default: create it with "
            "check_embedding_ctx_length=False to send text.",
            part=Part.INPUTS,
        )
        self.index = index


class TooManyInputs(InvalidInput):
    """More items in one request than the server allows."""

    def __init__(self, count: int, limit: int, *, part: Part = Part.INPUTS) -> None:
        super().__init__(
            f"batch size {count} > maximum allowed batch size {limit}; split the request",
            part=part,
        )


class DimensionsOutOfRange(InvalidInput):
    """A Matryoshka cut the model cannot give."""

    def __init__(self, model: str, asked: int, maximum: int | None) -> None:
        super().__init__(part=Part.DIMENSIONS)
        self.model = model
        self.asked = asked
        self.maximum = maximum

    def describe(self, name: Naming) -> str:
        return (
            f"{name(Part.DIMENSIONS)} must be between 1 and {self.maximum} for model "
            f"{self.model!r}; got {self.asked}"
        )


class InvalidTemplate(InvalidInput):
    """A zero-shot hypothesis template that cannot be filled with a label (``reason`` says
    why), or that fills to more characters than allowed (``size`` over ``limit``)."""

    def __init__(self, reason: str = "", *, size: int = 0, limit: int = 0) -> None:
        super().__init__(part=Part.TEMPLATE)
        self.reason = reason
        self.size = size
        self.limit = limit

    def describe(self, name: Naming) -> str:
        field = name(Part.TEMPLATE)
        if self.limit:
            return (
                f"{field} filled with every candidate label gives {self.size} characters, more "
                f"than {self.limit}; use fewer {{}} fields, fewer or shorter labels"
            )
        rule = (
            f"{field} must contain {{}} where the label goes and no other {{...}} field "
            "(write {{ and }} for literal braces)"
        )
        return f"{rule}; {self.reason}" if self.reason else rule


class OverCapacity(InvalidInput):
    """A request larger than a limit that waiting cannot lift: retrying never helps."""

    def __init__(self, what: str, size: int, limit: int, setting: str) -> None:
        super().__init__(
            f"this request needs {size} {what}, more than the server ever holds for one "
            f"model at once ({setting}: {limit}); split it into smaller requests"
        )
        self.size = size
        self.limit = limit


class WrongModelKind(InvalidInput):
    """The model cannot do what was asked (e.g. embed with a reranker)."""

    def __init__(self, model: str, kind: str, hint: str) -> None:
        super().__init__(f"model {model!r} is a {kind} model: {hint}", part=Part.MODEL)


class MissingHead(WrongModelKind):
    """A request for a token-level result (sparse weights, ColBERT or token vectors) the
    model's graph does not give."""

    def __init__(self, model: str, kind: str, head: str, hint: str) -> None:
        super().__init__(model, kind, f"its graph has no {head} output; {hint}")
        self.head = head


class InvalidPath(InvalidInput):
    """A path that cannot name a model folder."""


class Forbidden(ServingError):
    """A request for something the configuration does not allow (e.g. outside model_roots)."""


class Conflict(ServingError):
    """The request contradicts the current state (e.g. a name already loaded)."""


class ModelNotFound(ServingError):
    """No model is served under that name."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"model {name!r} not found; served models: {names}", part=Part.MODEL)
        self.name = name


class Overloaded(ServingError):
    """The queue is full; ``retry_after_s`` says when to try again."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServingError):
    """Not ready, shutting down, unloaded while queued, or waited past the queue timeout."""


class BackendFailure(ServingError):
    """A batch failed in the backend; ``error_id`` is logged with the traceback."""

    def __init__(self, error_id: str) -> None:
        super().__init__(f"inference failed (error id {error_id}); the server logged the cause")
        self.error_id = error_id


class InvalidImage(InvalidInput):
    """An image of ``part`` (item ``index``) that cannot be used; ``reason`` says why in
    words that follow the item's name ("is not an image ...", "is truncated ...")."""

    def __init__(self, index: int, reason: str, *, part: Part = Part.IMAGES) -> None:
        super().__init__(part=part)
        self.index = index
        self.reason = reason

    def describe(self, name: Naming) -> str:
        assert self.part is not None
        return f"{name(self.part)}[{self.index}] {self.reason}"


class ImageTooLarge(InvalidImage):
    """An image over a size limit: its pixels (a decompression bomb) or a URL's bytes."""


class ImageUrlRefused(InvalidImage):
    """An image URL the configuration does not let the server fetch (URLs off, a host not
    allowed, an address that is not public)."""


class ImageFetchFailed(InvalidImage):
    """An image URL that was allowed but did not give an image (an HTTP error, a timeout,
    too many redirects, a content type that is not an image)."""
