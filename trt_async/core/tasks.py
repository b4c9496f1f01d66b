"""The tasks clients ask for: embed, rerank, classify, zero-shot, tokenize.

:class:`ServedModel` is a configured name with a kind over a
:class:`~trt_async.core.runtime.ModelRuntime`; its task methods are what every API dialect
translates to, in domain terms (the HTTP layer names the request fields). Dialects never
reach past this module and the runtime.
"""

from __future__ import annotations

import enum
import logging
import string
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np

from trt_async.backends.modelfiles import PairTemplate
from trt_async.core import heads, quantize
from trt_async.core.capabilities import Capabilities, model_prompts
from trt_async.core.config import ModelConfig, ModelKind
from trt_async.core.errors import (
    DimensionsOutOfRange,
    EmptyInput,
    InputTooLong,
    InvalidTemplate,
    MixedInputs,
    OverCapacity,
    Part,
    Unavailable,
)
from trt_async.core.heads import finish_embeddings
from trt_async.core.multivector import Head
from trt_async.core.prompting import check_configured, encode_llm_pairs, encode_prompted
from trt_async.core.requests import Timings
from trt_async.core.runtime import TOKENIZE_POOL, ModelRuntime
from trt_async.core.scheduler import Prepared, ScheduleResult, prepare
from trt_async.core.templates import PromptWithTokenIds
from trt_async.core.tokenize_queue import AnyTextRequest
from trt_async.core.tokenizer import Direction, Encoding, TextInput, TextTokenizer, TokenInfo

log = logging.getLogger(__name__)

_TEXT_TYPES = {str, tuple}

T = TypeVar("T")


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"
    UNLOADED = "unloaded"


@dataclass(frozen=True, slots=True)
class EmbedResult:
    vectors: np.ndarray
    tokens: int
    timings: Timings
    #: Per head asked for, one value per input: :class:`~trt_async.core.multivector.
    #: SparseVector` for ``sparse``, a ``(tokens, dim)`` array for ``colbert`` and ``tokens``.
    heads: Mapping[Head, list[object]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Scores per document, in the order sent (callers sort)."""

    scores: np.ndarray
    tokens: int
    timings: Timings


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    logits: np.ndarray
    #: Label names by class index.
    labels: Mapping[int, str]
    tokens: int
    timings: Timings

    def probabilities(self) -> np.ndarray:
        return heads.softmax(self.logits.astype(np.float64))

    def predictions(self) -> list[str]:
        return heads.predictions(self.logits, self.labels)


@dataclass(frozen=True, slots=True)
class ZeroShotResult:
    #: ``(texts, candidate labels)``: probability of each candidate label for each text.
    scores: np.ndarray
    tokens: int
    timings: Timings


@dataclass(frozen=True, slots=True)
class SharedPairs:
    """Pairs ``(firsts[i], seconds[j])`` whose texts repeat (a rerank query, a zero-shot
    text and its hypotheses): each text is tokenised once (see ``encode_pairs``)."""

    firsts: Sequence[str]
    seconds: Sequence[str]
    index: Sequence[tuple[int, int]]
    #: The parts of the request the firsts and the seconds come from.
    parts: tuple[Part, Part]

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True, slots=True)
class TemplatePairs:
    """An LLM reranker's (query, document) pairs, each laid out in its template with an
    instruction (see :func:`~trt_async.core.prompting.encode_llm_pairs`)."""

    template: PairTemplate
    query: str
    documents: Sequence[str]
    #: The request's instruction, and the model's configured one (used when it gives none).
    instruction: str | None
    configured_instruction: str | None

    def __len__(self) -> int:
        return len(self.documents)

    def encode(self, tok: TextTokenizer, *, truncate: bool) -> list[Encoding]:
        return encode_llm_pairs(
            tok,
            self.template,
            self.query,
            self.documents,
            instruction=self.instruction,
            configured_instruction=self.configured_instruction,
            truncate=truncate,
        )


@dataclass(frozen=True, slots=True)
class QueryAndDocuments:
    """A query and documents for an embedder to rerank by cosine, each with its own prompt
    (the model's query and document prompts): item 0 is the query."""

    query: str
    query_prompt: str
    documents: Sequence[str]
    document_prompt: str

    def __len__(self) -> int:
        return 1 + len(self.documents)

    def encode(self, tok: TextTokenizer, *, truncate: bool) -> list[Encoding]:
        query = encode_prompted(tok, [self.query], self.query_prompt, truncate=truncate)
        try:
            documents = encode_prompted(
                tok, self.documents, self.document_prompt, truncate=truncate
            )
        except InputTooLong as exc:  # numbered as in [query, *documents]
            raise exc.about(exc.index + 1, Part.INPUTS, "") from None
        return [*query, *documents]


@dataclass(frozen=True, slots=True)
class Prompt:
    """The text put before each input of an embedding request, and where it came from."""

    text: str
    #: The request asked for a prompt (by name or text), not only the model's default.
    asked: bool = False
    part: Part = Part.PROMPT_NAME


#: What a task hands :meth:`ServedModel._run`: texts (or pairs), token-id lists, or inputs
#: laid out for one kind of model.
ModelInputs = (
    Sequence[TextInput] | Sequence[Sequence[int]] | SharedPairs | TemplatePairs | QueryAndDocuments
)


#: Characters all of one request's zero-shot hypotheses may hold together: a template with
#: many ``{}`` fields and long labels would otherwise multiply a small body into megabytes.
MAX_HYPOTHESES_CHARS = 1 << 20


def _template_filler(template: str) -> Callable[[str], str]:
    """``template.format(label)`` as transformers' pipeline does, but only with bare ``{}``
    fields: ``{0}``, ``{x}``, ``{0.attr}`` or a format spec would fail or reach into the
    label object, so they are refused up front."""
    try:
        fields = [f[1:] for f in string.Formatter().parse(template) if f[1] is not None]
    except ValueError as exc:
        raise InvalidTemplate(str(exc)) from None
    if not fields or any(name or spec or conversion for name, spec, conversion in fields):
        raise InvalidTemplate()
    count = len(fields)
    return lambda label: template.format(*([label] * count))


# -- served model -------------------------------------------------------------------------------


class ServedModel:
    """A configured name and kind over a runtime; the one API every dialect calls."""

    def __init__(
        self,
        name: str,
        kind: ModelKind,
        config: ModelConfig,
        runtime: ModelRuntime,
        *,
        on_timings: Callable[[Timings], None] | None = None,
        unhealthy_after: int = 3,
    ):
        self.name = name
        self._on_timings = on_timings
        self.kind = kind
        self.config = config
        self.runtime = runtime
        manifest = runtime.files.manifest
        prompts, default_prompt_name = model_prompts(name, config, manifest)
        #: What it can do, decided once from its role, its graph and what goes around its
        #: inputs (prompts, a pair template); a config it cannot take is refused here.
        self.capabilities = Capabilities.of(
            kind,
            gives_vectors=runtime.is_embedder,
            heads_available=frozenset(runtime.head_reducers),
            labels=runtime.labels,
            prompts=prompts,
            default_prompt_name=default_prompt_name,
            pair_template=manifest.pair_template if manifest is not None else None,
            instruction=config.instruction,
            embeds_images=runtime.vision is not None,
        )
        check_configured(name, self.capabilities, config, runtime.tokenizer)
        #: The lifecycle state the registry sets; health is read from the runtime.
        self._state = ModelState.LOADING
        self._unhealthy_after = unhealthy_after
        self.created = int(time.time())

    @property
    def state(self) -> ModelState:
        """The lifecycle state, or UNHEALTHY while a ready model's batches keep failing."""
        if self._state is ModelState.READY and self.reason is not None:
            return ModelState.UNHEALTHY
        return self._state

    @state.setter
    def state(self, value: ModelState) -> None:
        self._state = value

    @property
    def reason(self) -> str | None:
        """Why a ready model is unhealthy (None when it is not)."""
        if self._state is not ModelState.READY:
            return None
        return self.runtime.failing(self._unhealthy_after)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return self.runtime.max_length

    @property
    def labels(self) -> Mapping[int, str]:
        return self.runtime.labels

    def _check_ready(self) -> None:
        if self.state not in (ModelState.READY, ModelState.UNHEALTHY):
            raise Unavailable(
                f"model {self.name!r} is {self.state.value}"
                + (f": {self.reason}" if self.reason else "")
            )

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        return await TOKENIZE_POOL.run(self.runtime, fn)

    def _making(
        self,
        inputs: ModelInputs,
        truncate: bool | None,
        direction: Direction,
        prompt: Prompt | None = None,
    ) -> tuple[Callable[[], Prepared], AnyTextRequest | None]:
        """How the inputs become the scheduler's items: a call that makes them on any
        thread but the event loop's and, for texts, the request the model's shared
        tokenisation hops take instead. Raises the inputs' own errors found without
        tokenising."""
        if len(inputs) == 0:
            raise EmptyInput(Part.INPUTS)
        trunc = self.config.truncate if truncate is None else truncate
        tok = self.runtime.tokenizer
        grid = self.runtime.grid
        if isinstance(inputs, QueryAndDocuments | TemplatePairs):
            laid_out = inputs
            return lambda: prepare(laid_out.encode(tok, truncate=trunc), grid), None
        if isinstance(inputs, SharedPairs):
            shared = inputs
            return (
                lambda: prepare(
                    tok.encode_pairs(
                        shared.firsts,
                        shared.seconds,
                        shared.index,
                        truncate=trunc,
                        parts=shared.parts,
                    ),
                    grid,
                ),
                None,
            )
        first = inputs[0]
        if isinstance(first, str | tuple):
            # One pass in C over the items' types; a mixed list is searched only to name
            # the first item that does not fit.
            if not {type(x) for x in inputs} <= _TEXT_TYPES:
                raise MixedInputs(
                    next(i for i, x in enumerate(inputs) if not isinstance(x, str | tuple))
                )
            queue = self.runtime.tokenize_queue
            request = queue.request(
                cast("Sequence[TextInput]", inputs),
                truncate=trunc,
                direction=direction,
                prompt=prompt.text if prompt is not None else "",
                prompt_part=prompt.part if prompt is not None else Part.PROMPT_NAME,
            )
            return lambda: queue.encode_now(request), request
        if prompt is not None and prompt.asked:
            raise PromptWithTokenIds(prompt.part)
        id_lists: list[Sequence[int]] = []
        for i, x in enumerate(inputs):
            if isinstance(x, str | tuple):
                raise MixedInputs(i)
            id_lists.append(x)
        # Checking up to millions of ids against the vocabulary is Python work: off the loop.
        return (
            lambda: prepare(tok.encode_ids(id_lists, truncate=trunc, direction=direction), grid),
            None,
        )

    async def _run(
        self,
        inputs: ModelInputs,
        truncate: bool | None,
        direction: Direction = "right",
        heads: Collection[Head] = (),
        unit: bool = False,
        prompt: Prompt | None = None,
    ) -> tuple[ScheduleResult, Timings]:
        self._check_ready()
        scheduler = self.runtime.scheduler
        # Refuse what cannot be queued before paying for its tokenisation.
        scheduler.admit(len(inputs))
        start = time.perf_counter()
        make, texts = self._making(inputs, truncate, direction, prompt)
        queue = self.runtime.tokenize_queue
        # Nothing else to share a tokenisation hop or a batch with: the request is made and
        # run on the lane's thread with one handoff (token-level heads take the queue, whose
        # budget check comes between the two).
        if (
            not heads
            and len(inputs) <= scheduler.grid.max_batch
            and queue.idle
            and scheduler.alone()
        ):
            alone = await scheduler.run_alone(make, unit=unit)
            encodings, tokenize_s = alone.prepared, alone.made_s
            found = alone.result
        else:
            made_at = time.perf_counter()
            encodings = await (queue.run(texts) if texts is not None else self._off_loop(make))
            tokenize_s = time.perf_counter() - made_at
            found = None
        if heads:
            self._check_output_budget(encodings, heads)
        result = found if found is not None else await scheduler.submit(encodings, heads, unit=unit)
        timings = Timings(
            tokenize_s=tokenize_s,
            queue_s=result.queue_s,
            inference_s=result.inference_s,
            total_s=time.perf_counter() - start,
        )
        if self._on_timings is not None:
            self._on_timings(timings)
        return result, timings

    def _check_output_budget(self, encodings: Prepared, heads: Collection[Head]) -> None:
        """Token-level results grow with every token (a 1024-float vector per token for
        bge-m3's ColBERT head): refuse a request whose results cannot fit the budget before
        any batch is spent on it."""
        tokens = encodings.tokens
        width = 4 * (self.runtime.output_dim or 1)  # float32 vectors as wide as the model's
        per_token = sum(8 if head == "sparse" else width for head in heads)  # sparse: id + weight
        need_mib = -(-tokens * per_token // (1 << 20))
        limit = self.config.max_request_output_mib
        if need_mib > limit:
            raise OverCapacity(
                "MiB of token-level results", need_mib, limit, "max_request_output_mib"
            )

    # -- tasks -----------------------------------------------------------------------------

    async def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        truncate: bool | None = None,
        direction: Direction = "right",
        heads: Collection[Head] = (),
        prompt: Prompt | None = None,
    ) -> EmbedResult:
        """Embeddings, normalised unless told otherwise, cut to ``dimensions`` (Matryoshka).

        ``heads`` asks for token-level results from the same forward pass: bge-m3's
        ``sparse`` lexical weights and ``colbert`` vectors, or every token's vector
        (``tokens``); a model whose graph lacks one answers :class:`MissingHead`.
        ``prompt`` goes before each text (token ids take none: :class:`PromptWithTokenIds`
        when one was asked for); without it, texts go as sent.
        """
        self.capabilities.require_embeds(self.name)
        for head in heads:
            self.require_head(head)
        dim = self.runtime.output_dim
        if dimensions is not None and (dimensions < 1 or (dim is not None and dimensions > dim)):
            raise DimensionsOutOfRange(self.name, dimensions, dim)
        norm = self.config.normalize if normalize is None else normalize
        # Unit rows come normalised with their batch; anything else is finished here.
        unit = norm and dimensions is None
        result, timings = await self._run(
            inputs, truncate, direction, heads, unit=unit, prompt=prompt
        )
        vectors = (
            result.rows
            if unit
            else finish_embeddings(result.rows, normalize=norm, dimensions=dimensions)
        )
        return EmbedResult(
            vectors.astype(np.float32, copy=False), result.tokens, timings, result.heads
        )

    async def quantize(
        self,
        vectors: np.ndarray,
        kind: quantize.ScalarType | quantize.BinaryType,
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
    ) -> np.ndarray:
        """``vectors`` (as :meth:`embed` returned them with the same ``normalize`` and
        ``dimensions``) as int8 / uint8 (ranges of this model's calibration set, finished
        the same way) or sign bits packed 8 per byte (binary / ubinary)."""
        if kind == "binary" or kind == "ubinary":
            return quantize.pack_bits(vectors, kind)
        calibration = await self.runtime.calibration()
        norm = self.config.normalize if normalize is None else normalize
        finished = finish_embeddings(calibration, normalize=norm, dimensions=dimensions)
        return quantize.quantize_scalar(vectors, quantize.scalar_ranges(finished), kind)

    def has_head(self, head: Head) -> bool:
        return head in self.capabilities.heads

    def require_head(self, head: Head) -> None:
        self.capabilities.require_head(self.name, head)

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        raw_scores: bool = False,
        truncate: bool | None = None,
        max_tokens_per_doc: int | None = None,
        instruction: str | None = None,
    ) -> ScoreResult:
        """Relevance of each document to ``query``.

        A cross-encoder scores (query, document) pairs (sigmoid of the logit unless raw
        scores are asked for or configured); an LLM reranker does the same with each pair
        laid out in its template, read with ``instruction`` (else the configured one, else
        the template's); an embedding model scores the cosine of the two vectors, so an
        embedder can rerank too (the query with its query prompt, the documents with its
        document prompt, where it has them). ``max_tokens_per_doc`` cuts each document to
        that many tokens first (Cohere v2).
        """
        if not documents:
            raise EmptyInput(Part.DOCUMENTS)
        if not query:
            raise EmptyInput(Part.QUERY)
        empty = next((i for i, document in enumerate(documents) if not document), None)
        if empty is not None:
            raise EmptyInput(Part.DOCUMENTS, empty)
        caps = self.capabilities
        caps.require_reranks(self.name)
        if instruction is not None:
            caps.require_instruction(self.name)
        if max_tokens_per_doc is not None:
            documents = await self.clip(documents, max_tokens_per_doc)
        if caps.pair_template is not None:
            return await self._rerank_in_template(
                caps.pair_template, query, documents, raw_scores, truncate, instruction
            )
        if caps.embeds:
            inputs: ModelInputs = [query, *documents]
            if caps.prompts:
                inputs = QueryAndDocuments(
                    query,
                    caps.prompt_for("search_query"),
                    documents,
                    caps.prompt_for("search_document"),
                )
            try:
                result, timings = await self._run(inputs, truncate)
            except InputTooLong as exc:  # item 0 is the query, item i + 1 document i
                if exc.index == 0:
                    raise exc.about(0, Part.QUERY, "query") from None
                i = exc.index - 1
                raise exc.about(i, Part.DOCUMENTS, f"document {i}") from None
            scores = heads.cosine_scores(result.rows[0], result.rows[1:])
            return ScoreResult(scores, result.tokens, timings)
        pairs = SharedPairs(
            [query],
            documents,
            [(0, i) for i in range(len(documents))],
            (Part.QUERY, Part.DOCUMENTS),
        )
        try:
            result, timings = await self._run(pairs, truncate)
        except InputTooLong as exc:
            what = f"the query with document {exc.index}"
            raise exc.about(exc.index, Part.DOCUMENTS, what) from None
        return self._scores(result, timings, raw_scores)

    def _scores(self, result: ScheduleResult, timings: Timings, raw_scores: bool) -> ScoreResult:
        logits = result.rows[:, 0].astype(np.float64)
        activate = not raw_scores and self.config.score_activation == "sigmoid"
        return ScoreResult(heads.sigmoid(logits) if activate else logits, result.tokens, timings)

    async def _rerank_in_template(
        self,
        template: PairTemplate,
        query: str,
        documents: Sequence[str],
        raw_scores: bool,
        truncate: bool | None,
        instruction: str | None,
    ) -> ScoreResult:
        """An LLM reranker's scores: each pair laid out in ``template``; the graph's row per
        pair is already its score's logit (see ``heads.make_score_reducer``)."""
        configured = self.capabilities.instruction
        pairs = TemplatePairs(template, query, documents, instruction, configured)
        try:
            result, timings = await self._run(pairs, truncate)
        except InputTooLong as exc:
            what = f"the query with document {exc.index}"
            raise exc.about(exc.index, Part.DOCUMENTS, what) from None
        return self._scores(result, timings, raw_scores)

    async def classify(
        self,
        inputs: Sequence[str | tuple[str, str]],
        *,
        truncate: bool | None = None,
        direction: Direction = "right",
    ) -> ClassifyResult:
        """Logits for texts or (premise, hypothesis) pairs; labels from the model's label map."""
        self.capabilities.require_classifies(self.name)
        result, timings = await self._run(inputs, truncate, direction)
        return ClassifyResult(result.rows, self.labels, result.tokens, timings)

    async def zero_shot(
        self,
        texts: Sequence[str],
        candidate_labels: Sequence[str],
        *,
        hypothesis_template: str = "This example is {}.",
        multi_label: bool = False,
        truncate: bool | None = None,
    ) -> ZeroShotResult:
        """Zero-shot classification from NLI logits, as transformers' pipeline computes it."""
        self.capabilities.require_zero_shot(self.name)
        if not candidate_labels:
            raise EmptyInput(Part.LABELS)
        fill = _template_filler(hypothesis_template)
        expanded = sum(
            len(hypothesis_template) + hypothesis_template.count("{}") * len(label)
            for label in candidate_labels
        )
        if expanded > MAX_HYPOTHESES_CHARS:
            raise InvalidTemplate(size=expanded, limit=MAX_HYPOTHESES_CHARS)
        hypotheses = [fill(label) for label in candidate_labels]
        pairs = SharedPairs(
            texts,
            hypotheses,
            [(t, h) for t in range(len(texts)) for h in range(len(hypotheses))],
            (Part.TEXTS, Part.LABELS),
        )
        try:
            result, timings = await self._run(pairs, truncate)
        except InputTooLong as exc:  # pair i is text i // labels with one hypothesis
            i = exc.index // len(hypotheses)
            raise exc.about(i, Part.TEXTS, f"text {i} with its hypothesis") from None
        logits = result.rows.reshape(len(texts), len(candidate_labels), -1)
        scores = heads.zero_shot_scores(logits, self.labels, multi_label=multi_label)
        return ZeroShotResult(scores, result.tokens, timings)

    async def clip(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut to its first ``max_tokens`` tokens (Cohere's ``max_tokens``)."""
        tok = self.runtime.tokenizer
        return await self._off_loop(lambda: tok.clip(texts, max_tokens))

    async def tokenize(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, prompt: str = ""
    ) -> list[list[TokenInfo]]:
        """Each text's tokens, with ``prompt`` before it (offsets are into the prompt and
        the text joined, as the model reads them)."""
        if not texts:
            raise EmptyInput(Part.INPUTS)
        empty = next((i for i, text in enumerate(texts) if not text), None)
        if prompt and empty is not None:
            raise EmptyInput(Part.INPUTS, empty)
        tok = self.runtime.tokenizer
        joined = [prompt + text for text in texts] if prompt else texts
        return await self._off_loop(
            lambda: tok.tokens(joined, add_special_tokens=add_special_tokens)
        )
