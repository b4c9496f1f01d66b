"""Errors the core raises: what went wrong, never how to say it over HTTP.

They carry what a client needs to fix the request, never a traceback. The HTTP layer maps
each class to a status and to each API dialect's error body, in one table
(:mod:`trt_async.http.errors`).
"""

from __future__ import annotations

from collections.abc import Iterable


class ServingError(Exception):
    """Base of every error a client may see. ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidInput(ServingError):
    """Input that cannot be served as given."""


class EmptyInput(InvalidInput):
    """No input, or an empty text."""


class InputTooLong(InvalidInput):
    """An item is longer than the model takes and truncation is off."""

    def __init__(
        self,
        index: int,
        length: int,
        max_length: int,
        *,
        param: str = "input",
        what: str = "",
        at_least: bool = False,
        fix: str = "Shorten it or send truncate=true.",
    ) -> None:
        what = what or f"input {index}"
        given = f"at least {length}" if at_least else str(length)
        super().__init__(
            f"{what} must have less than {max_length + 1} tokens. Given: {given}. {fix}",
            param=param,
        )
        self.index = index
        self.length = length
        self.max_length = max_length

    def renamed(self, index: int, param: str, what: str = "") -> InputTooLong:
        """The same error about item ``index`` of field ``param`` (for inputs the server
        rearranged, e.g. a query put first or texts paired with every label)."""
        return InputTooLong(index, self.length, self.max_length, param=param, what=what)


class ForeignTokenIds(InvalidInput):
    """Token ids that cannot be this model's own tokenisation of a text."""

    def __init__(self, index: int, reason: str, *, param: str = "input") -> None:
        super().__init__(
            f"input {index} is not a token-id list made by this model's tokenizer: {reason}. "
            "Send text instead, or ids from this model's own tokenizer with its special "
            "tokens. LangChain's OpenAIEmbeddings sends OpenAI "
            "(tiktoken cl100k) token ids by default: create it with "
            "check_embedding_ctx_length=False to send text.",
            param=param,
        )
        self.index = index


class TooManyInputs(InvalidInput):
    """More items in one request than the server allows."""

    def __init__(self, count: int, limit: int, *, param: str = "input") -> None:
        super().__init__(
            f"batch size {count} > maximum allowed batch size {limit}; split the request",
            param=param,
        )


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
        super().__init__(f"model {model!r} is a {kind} model: {hint}", param="model")


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
        super().__init__(f"model {name!r} not found; served models: {names}", param="model")
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
