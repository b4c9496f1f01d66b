"""Hugging Face text-embeddings-inference routes: ``/embed``, ``/predict``, ``/tokenize``,
``/info`` (TEI's ``/rerank`` dialect lives in :mod:`trt_async.http.rerank`).

TEI serves one model; here a ``model`` body field or query parameter picks one, and the
first model of the right kind is the default.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Router, get
from litestar.params import FromQuery
from msgspec import Meta

from trt_async import __version__
from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.requests import (
    Classification,
    ClassifyRequest,
    Embeddings,
    Tokens,
)
from trt_async.core.requests import EmbedRequest as CoreEmbed
from trt_async.core.requests import TokenizeRequest as CoreTokenize
from trt_async.core.tasks import ServedModel
from trt_async.http.common import (
    AnyRequest,
    DirectionName,
    PromptName,
    PromptText,
    Truncate,
    direction,
    error_responses,
    provide_inference,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.openai_api import EmbeddingInput, split_input
from trt_async.http.routes import Call, Translation, inference_route, vector_matrix

TruncationDirection = Annotated[
    DirectionName, Meta(description="Which end of an over-long input is cut.")
]
RawScores = Annotated[bool, Meta(description="Return logits instead of probabilities.")]


class EmbedRequest(msgspec.Struct, kw_only=True):
    """TEI's embed request; the answer is a bare array of vectors."""

    inputs: Annotated[
        EmbeddingInput,
        Meta(description="A text, a list of texts, or this model's own token ids."),
    ]
    truncate: Truncate = None
    truncation_direction: TruncationDirection = "right"
    normalize: Annotated[bool, Meta(description="Scale each vector to unit length.")] = True
    dimensions: (
        Annotated[
            int,
            Meta(ge=1, description="Keep the first n components (Matryoshka), then normalise."),
        ]
        | None
    ) = None
    prompt_name: PromptName = None
    prompt: PromptText = None
    model: Annotated[
        str | None,
        Meta(description="A served embedding model (default: the first one)."),
    ] = None


#: A text, a ``[text, text]`` pair, or a batch of texts and pairs (``[[text]]``,
#: ``[[text, text]]``). A flat list of two texts is a pair, as TEI reads it.
PredictInput = str | list[str | list[str]]


class PredictRequest(msgspec.Struct, kw_only=True):
    """TEI's classify request: texts, or ``[premise, hypothesis]`` pairs for NLI."""

    inputs: Annotated[
        PredictInput,
        Meta(
            description="A text, a `[premise, hypothesis]` pair, or a list of texts and "
            "pairs (`[[text], [premise, hypothesis]]`)."
        ),
    ]
    raw_scores: RawScores = False
    truncate: Truncate = None
    truncation_direction: TruncationDirection = "right"
    model: Annotated[
        str | None,
        Meta(description="A served NLI model or reranker (default: the first NLI model)."),
    ] = None


class Prediction(msgspec.Struct):
    """One label and its score."""

    label: str
    score: float


class TokenizeRequest(msgspec.Struct, kw_only=True):
    """TEI's tokenize request."""

    inputs: Annotated[str | list[str], Meta(description="A text or a list of texts.")]
    add_special_tokens: Annotated[
        bool, Meta(description="Include the model's special tokens ([CLS], [SEP], ...).")
    ] = True
    prompt_name: PromptName = None
    model: Annotated[str | None, Meta(description="A served model (default: the first one).")] = (
        None
    )


class SimpleToken(msgspec.Struct):
    """One token; ``start`` and ``stop`` are character offsets into the text."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class Info(msgspec.Struct):
    """TEI's description of the served model and the server's limits."""

    model_id: str
    model_dtype: str
    model_type: dict[str, dict[str, Any]]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    model_sha: str | None = None
    sha: str | None = None
    docker_label: str | None = None
    #: Not TEI's: the embedder's prompt names (``prompt_name``) and the one used when a
    #: request names none.
    prompt_names: list[str] | None = None
    default_prompt_name: str | None = None
    #: Not TEI's: an LLM reranker's template (it takes an ``instruction`` per request).
    pair_template: str | None = None


def _predict_inputs(value: PredictInput) -> tuple[list[str | tuple[str, str]], bool]:
    """The items and whether the answer is a batch (a list per item)."""
    if isinstance(value, str):
        return [value], False
    if len(value) == 2 and all(isinstance(x, str) for x in value):
        return [(str(value[0]), str(value[1]))], False
    items: list[str | tuple[str, str]] = []
    for i, x in enumerate(value):
        if isinstance(x, str):
            items.append(x)
        elif len(x) == 1:
            items.append(x[0])
        elif len(x) == 2:
            items.append((x[0], x[1]))
        else:
            raise InvalidInput(
                f"inputs[{i}] has {len(x)} texts; send one text or a [premise, hypothesis] pair",
                field="inputs",
            )
    return items, True


#: TEI's names for the poolings.
_TEI_POOLING = {"cls": "cls", "mean": "mean", "last": "last_token"}


def _model_type(model: ServedModel) -> dict[str, dict[str, Any]]:
    caps = model.capabilities
    if caps.embeds and caps.role is ModelKind.EMBEDDING:
        pooling: str = model.runtime.pooling
        manifest = model.runtime.files.manifest
        if pooling == "none" and manifest is not None and manifest.graph_pooling is not None:
            pooling = manifest.graph_pooling  # pooled inside the graph at export
        return {"embedding": {"pooling": _TEI_POOLING.get(pooling, pooling)}}
    labels = {str(i): name for i, name in sorted(caps.labels.items())} or {"0": "LABEL_0"}
    if caps.role is ModelKind.RERANKER:
        return {"reranker": {"id2label": labels}}
    return {"classifier": {"id2label": labels}}


def embed_request(data: EmbedRequest, model: str | None) -> CoreEmbed:
    """TEI's ``/embed`` body as the core's request."""
    return CoreEmbed(
        inputs=split_input(data.inputs),
        model=model,
        normalize=data.normalize,
        dimensions=data.dimensions,
        truncate=data.truncate,
        direction=direction(data.truncation_direction),
        prompt_name=data.prompt_name,
        prompt=data.prompt,
    )


def embed_answer(result: Embeddings, data: object) -> msgspec.Raw:
    """TEI's ``/embed`` answer: a bare array of vectors."""
    return vector_matrix(result.vectors)


def predict_request(data: PredictRequest, model: str | None) -> ClassifyRequest:
    """TEI's ``/predict`` body as the core's request."""
    items, _ = _predict_inputs(data.inputs)
    return ClassifyRequest(
        inputs=items,
        model=model,
        activation="none" if data.raw_scores else "auto",
        truncate=data.truncate,
        direction=direction(data.truncation_direction),
    )


def predict_answer(
    result: Classification, data: PredictRequest
) -> list[Prediction] | list[list[Prediction]]:
    """TEI's ``/predict`` answer: one list, or a list per input, sorted by score."""
    ranked = [[Prediction(label, score) for label, score in row] for row in result.ranked()]
    _, batched = _predict_inputs(data.inputs)
    return ranked if batched else ranked[0]


def _embed_request(data: EmbedRequest, call: Call[EmbedRequest]) -> CoreEmbed:
    return embed_request(data, data.model or call.query("model"))


def _predict_request(data: PredictRequest, call: Call[PredictRequest]) -> ClassifyRequest:
    return predict_request(data, data.model or call.query("model"))


def _tokenize_request(data: TokenizeRequest, call: Call[TokenizeRequest]) -> CoreTokenize:
    texts = [data.inputs] if isinstance(data.inputs, str) else data.inputs
    return CoreTokenize(
        texts=texts,
        model=data.model or call.query("model"),
        add_special_tokens=data.add_special_tokens,
        prompt_name=data.prompt_name,
    )


def _tokenize_answer(result: Tokens, data: TokenizeRequest) -> list[list[SimpleToken]]:
    return [
        [SimpleToken(t.id, t.text, t.special, t.start, t.stop) for t in row]
        for row in result.tokens
    ]


@get(
    "/info",
    summary="Model and server facts (TEI)",
    responses=error_responses(Dialect.TEI, 401, 404),
)
async def info(request: AnyRequest, model: FromQuery[str | None] = None) -> Info:
    inference = provide_inference(request.app.state)
    served = inference.lookup(model, (ModelKind.EMBEDDING, ModelKind.RERANKER, ModelKind.NLI))
    server = inference.server
    cfg = served.config
    return Info(
        model_id=served.name,
        model_dtype=served.runtime.dtype,
        model_type=_model_type(served),
        max_concurrent_requests=cfg.max_queue_items,
        max_input_length=served.max_length,
        max_batch_tokens=served.runtime.grid.max_batch_tokens,
        max_batch_requests=max(served.runtime.grid.batch_sizes),
        max_client_batch_size=server.max_client_batch_size,
        auto_truncate=cfg.truncate,
        tokenization_workers=2,
        version=__version__,
        prompt_names=sorted(served.capabilities.prompts) or None,
        default_prompt_name=served.capabilities.default_prompt_name,
        pair_template=(
            served.capabilities.pair_template.name if served.capabilities.pair_template else None
        ),
    )


def router() -> Router:
    """TEI's routes, answering errors in TEI's shape."""
    embed = inference_route(
        "/embed",
        body=EmbedRequest,
        translation=Translation(_embed_request, embed_answer),
        dialect=Dialect.TEI,
        answers=list[list[float]],
        summary="Embeddings as a bare array (TEI)",
    )
    predict = inference_route(
        "/predict",
        body=PredictRequest,
        translation=Translation(_predict_request, predict_answer),
        dialect=Dialect.TEI,
        answers=list[Prediction] | list[list[Prediction]],
        summary="Classify texts or [premise, hypothesis] pairs (TEI)",
        description=(
            "Labels sorted by score: a softmax over the model's labels (a sigmoid for a "
            "one-label model) unless `raw_scores`. A single input answers one list, a batch "
            "a list per input."
        ),
    )
    tokenize = inference_route(
        "/tokenize",
        body=TokenizeRequest,
        translation=Translation(_tokenize_request, _tokenize_answer),
        dialect=Dialect.TEI,
        answers=list[list[SimpleToken]],
        summary="Tokens with character offsets (TEI)",
        statuses=(400, 401, 404, 413, 422),
    )
    return Router(
        "/",
        route_handlers=[embed, predict, tokenize, info],
        tags=["tei"],
        exception_handlers=dialect_handlers(Dialect.TEI),
    )
