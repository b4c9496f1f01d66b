"""Hugging Face text-embeddings-inference routes: ``/embed``, ``/predict``, ``/tokenize``,
``/info`` (TEI's ``/rerank`` dialect lives in :mod:`trt_async.http.rerank`).

TEI serves one model; here a ``model`` body field or query parameter picks one, and the
first model of the right kind is the default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec
import numpy as np
from litestar import Controller, Response, get, post
from litestar.params import FromQuery
from msgspec import Meta

from trt_async import __version__
from trt_async.core import heads
from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.tasks import ClassifyResult, ServedModel
from trt_async.http.common import (
    DirectionName,
    JsonBody,
    Models,
    ModelsDep,
    Truncate,
    error_responses,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.openai_api import EmbeddingInput, split_input

_EMBED_KINDS = (ModelKind.EMBEDDING,)
_PREDICT_KINDS = (ModelKind.NLI, ModelKind.RERANKER)
_ALL_KINDS = (ModelKind.EMBEDDING, ModelKind.RERANKER, ModelKind.NLI)


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
    prompt_name: Annotated[
        str | None, Meta(description="Refused: the served models define no prompts.")
    ] = None
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


def refuse_prompt(served: ServedModel, prompt_name: str | None) -> None:
    if prompt_name is not None:
        raise InvalidInput(
            f"model {served.name!r} has no prompts; prompt_name cannot be used",
            field="prompt_name",
        )


def direction(value: DirectionName) -> Literal["left", "right"]:
    return "left" if value.lower() == "left" else "right"


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


def _model_type(model: ServedModel) -> dict[str, dict[str, Any]]:
    rt = model.runtime
    if rt.is_embedder and model.kind is ModelKind.EMBEDDING:
        return {"embedding": {"pooling": rt.pooling}}
    labels = {str(i): name for i, name in sorted(rt.labels.items())} or {"0": "LABEL_0"}
    if model.kind is ModelKind.RERANKER:
        return {"reranker": {"id2label": labels}}
    return {"classifier": {"id2label": labels}}


async def embed_answer(
    models: Models, served: ServedModel, data: EmbedRequest
) -> Response[list[list[float]]]:
    """TEI's ``/embed`` answer with ``served``: a bare array of vectors."""
    refuse_prompt(served, data.prompt_name)
    inputs = split_input(data.inputs, "inputs")
    models.check_batch(len(inputs), "inputs")
    result = await served.embed(
        inputs,
        normalize=data.normalize,
        dimensions=data.dimensions,
        truncate=data.truncate,
        direction=direction(data.truncation_direction),
    )
    vectors: list[list[float]] = result.vectors.tolist()
    return Response(vectors, headers=timing_headers(result.timings, result.tokens))


async def classify_items(
    served: ServedModel,
    items: list[str | tuple[str, str]],
    *,
    raw_scores: bool,
    truncate: bool | None,
    activation: Literal["sigmoid", "softmax"] | None = None,
) -> tuple[list[list[Prediction]], ClassifyResult]:
    """Labels per item sorted by score: a softmax over the model's labels (a sigmoid for a
    one-label model, or the ``activation`` asked for) unless ``raw_scores``."""
    # Texts and pairs may mix in one TEI batch; the tokenizer takes both.
    result = await served.classify(cast("list[str]", items), truncate=truncate)
    logits = result.logits.astype(np.float64)
    if raw_scores:
        scores = logits
    elif activation == "sigmoid" or (activation is None and logits.shape[-1] == 1):
        scores = heads.sigmoid(logits)
    else:
        scores = heads.softmax(logits)
    ranked = [
        [Prediction(label, score) for label, score in row]
        for row in heads.top_labels(scores, result.labels)
    ]
    return ranked, result


async def predict_answer(
    models: Models, served: ServedModel, data: PredictRequest
) -> Response[list[Prediction] | list[list[Prediction]]]:
    """TEI's ``/predict`` answer with ``served``: one list, or a list per input."""
    items, batched = _predict_inputs(data.inputs)
    models.check_batch(len(items), "inputs")
    ranked, result = await classify_items(
        served, items, raw_scores=data.raw_scores, truncate=data.truncate
    )
    body: list[Prediction] | list[list[Prediction]] = ranked if batched else ranked[0]
    return Response(body, headers=timing_headers(result.timings, result.tokens))


class TEIController(Controller):
    tags = ["tei"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.TEI)

    @post(
        "/embed",
        status_code=200,
        summary="Embeddings as a bare array (TEI)",
        responses=error_responses(Dialect.TEI),
    )
    async def embed(
        self, models: ModelsDep, data: JsonBody[EmbedRequest], model: FromQuery[str | None] = None
    ) -> Response[list[list[float]]]:
        served = models.pick(data.model or model, _EMBED_KINDS, "/embed")
        return await embed_answer(models, served, data)

    @post(
        "/predict",
        status_code=200,
        summary="Classify texts or [premise, hypothesis] pairs (TEI)",
        description=(
            "Labels sorted by score: a softmax over the model's labels (a sigmoid for a "
            "one-label model) unless `raw_scores`. A single input answers one list, a batch "
            "a list per input."
        ),
        responses=error_responses(Dialect.TEI),
    )
    async def predict(
        self,
        models: ModelsDep,
        data: JsonBody[PredictRequest],
        model: FromQuery[str | None] = None,
    ) -> Response[list[Prediction] | list[list[Prediction]]]:
        served = models.pick(data.model or model, _PREDICT_KINDS, "/predict")
        return await predict_answer(models, served, data)

    @post(
        "/tokenize",
        status_code=200,
        summary="Tokens with character offsets (TEI)",
        responses=error_responses(Dialect.TEI, 400, 401, 404, 413, 422),
    )
    async def tokenize(
        self,
        models: ModelsDep,
        data: JsonBody[TokenizeRequest],
        model: FromQuery[str | None] = None,
    ) -> list[list[SimpleToken]]:
        served = models.pick(data.model or model, _ALL_KINDS, "/tokenize")
        texts = [data.inputs] if isinstance(data.inputs, str) else data.inputs
        models.check_batch(len(texts), "inputs")
        rows = await served.tokenize(texts, add_special_tokens=data.add_special_tokens)
        return [
            [SimpleToken(t.id, t.text, t.special, t.start, t.stop) for t in row] for row in rows
        ]

    @get(
        "/info",
        summary="Model and server facts (TEI)",
        responses=error_responses(Dialect.TEI, 401, 404),
    )
    async def info(self, models: ModelsDep, model: FromQuery[str | None] = None) -> Info:
        served = models.pick(model, _ALL_KINDS, "/info")
        server = models.server
        cfg = served.config
        return Info(
            model_id=served.name,
            model_dtype=served.runtime.spec.dtype(served.config.precision),
            model_type=_model_type(served),
            max_concurrent_requests=cfg.max_queue_items,
            max_input_length=served.max_length,
            max_batch_tokens=served.runtime.grid.max_batch_tokens,
            max_batch_requests=max(served.runtime.grid.batch_sizes),
            max_client_batch_size=server.max_client_batch_size,
            auto_truncate=cfg.truncate,
            tokenization_workers=2,
            version=__version__,
        )
