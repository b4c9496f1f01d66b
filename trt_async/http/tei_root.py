"""TEI's root routes, for clients that post to the server's base URL.

text-embeddings-inference answers ``POST /`` and ``POST /invocations`` (SageMaker's route)
with its one model's own task: an embedder embeds, a classifier predicts, a reranker takes
``{"query", "texts"}``. ``huggingface_hub.InferenceClient(base_url=...)`` posts the Hugging
Face Inference API's shapes there: ``feature_extraction`` sends ``{"inputs", ...}``,
``text_classification`` ``{"inputs", "parameters"}`` and ``sentence_similarity``
``{"inputs": {"source_sentence", "sentences"}}``.

This server serves several models, so the body picks the task and the model:

* ``{"query", "texts"}``: TEI's rerank, with the first reranker (else embedder);
* ``{"inputs": {"source_sentence", "sentences"}}``: cosine of each sentence to the source,
  with the first embedding model;
* ``{"inputs", "parameters"}``: text classification (``[[{label, score}]]`` per input), with
  the first NLI model or reranker;
* any other ``{"inputs"}``: the root model's own task (TEI's ``/embed`` or ``/predict``).

A ``model`` query parameter or body field names the model instead; without it, the root
model is the first one in the config file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from litestar import Controller, Response, get, post
from litestar.params import FromQuery
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.tasks import ServedModel
from trt_async.http.admin import Health
from trt_async.http.auth import PUBLIC_OPT
from trt_async.http.common import (
    JsonBody,
    Models,
    ModelsDep,
    error_responses,
    require_kind,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.rerank import AnyRerankRequest, tei_rerank
from trt_async.http.tei import (
    EmbedRequest,
    Prediction,
    PredictRequest,
    classify_items,
    embed_answer,
    predict_answer,
)

_CLASSIFIER_KINDS = (ModelKind.NLI, ModelKind.RERANKER)
_EMBED_KINDS = (ModelKind.EMBEDDING,)
_RERANK_KINDS = (ModelKind.RERANKER, ModelKind.EMBEDDING)


class SimilarityInputs(msgspec.Struct):
    """The Inference API's sentence-similarity input."""

    source_sentence: str
    sentences: list[str]


class SimilarityRequest(msgspec.Struct, kw_only=True):
    """``huggingface_hub``'s ``sentence_similarity``: one cosine per sentence."""

    inputs: SimilarityInputs
    model: str | None = None


class ClassificationParameters(msgspec.Struct, kw_only=True):
    """The Inference API's text-classification parameters."""

    top_k: Annotated[int, Meta(ge=1)] | None = None
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None


class ClassificationRequest(msgspec.Struct, kw_only=True):
    """``huggingface_hub``'s ``text_classification``: labels per text, best first."""

    inputs: str | list[str]
    parameters: ClassificationParameters = msgspec.field(default_factory=ClassificationParameters)
    truncate: bool | None = None
    model: str | None = None


def _convert(body: dict[str, Any], type_: type[Any]) -> Any:
    try:
        return msgspec.convert(body, type_, strict=True)
    except msgspec.ValidationError as exc:
        what, _, where = str(exc).rpartition(" - at `")
        param = where.rstrip("`").removeprefix("$").lstrip(".") or None
        raise InvalidInput(f"invalid request: {what or exc}", field=param) from None


def _root_model(models: Models, name: str | None) -> ServedModel:
    if name:
        return models.pick(name, (), "/")
    first = next(iter(models.registry), None)
    if first is None:
        return models.pick(None, tuple(ModelKind), "/")
    return models.pick(first.name, (), "/")


class TEIRootController(Controller):
    tags = ["tei"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.TEI)

    @get(["/", "/ping"], summary="Liveness, as TEI answers at / and /ping", opt={PUBLIC_OPT: True})
    async def ping(self) -> Health:
        return Health("ok")

    @post(
        ["/", "/invocations"],
        status_code=200,
        summary="TEI's root route: the task the body and the model call for",
        description=__doc__,
        responses=error_responses(Dialect.TEI),
    )
    async def invoke(
        self,
        models: ModelsDep,
        data: JsonBody[dict[str, Any]],
        model: FromQuery[str | None] = None,
    ) -> Response[Any]:
        name = model or (data.get("model") if isinstance(data.get("model"), str) else None)
        if "query" in data and "texts" in data:
            rerank: AnyRerankRequest = _convert(data, AnyRerankRequest)
            rerank.model = name
            ranks, result = await tei_rerank(models, rerank)
            return Response(ranks, headers=timing_headers(result.timings, result.tokens))
        inputs = data.get("inputs")
        if isinstance(inputs, dict):
            similarity: SimilarityRequest = _convert(data, SimilarityRequest)
            return await self._similarity(models, similarity, name)
        if "parameters" in data:
            classification: ClassificationRequest = _convert(data, ClassificationRequest)
            return await self._classify(models, classification, name)
        served = _root_model(models, name)
        if served.kind is ModelKind.EMBEDDING:
            return await embed_answer(models, served, _convert(data, EmbedRequest))
        return await predict_answer(models, served, _convert(data, PredictRequest))

    async def _similarity(
        self, models: Models, data: SimilarityRequest, name: str | None
    ) -> Response[Any]:
        served = models.pick(name, _EMBED_KINDS, "/")
        require_kind(served, _EMBED_KINDS, "sentence similarity needs an embedding model")
        texts = [data.inputs.source_sentence, *data.inputs.sentences]
        models.check_batch(len(texts), "inputs.sentences")
        result = await served.embed(texts, normalize=True)
        vectors = result.vectors.astype(np.float64)
        scores: list[float] = (vectors[1:] @ vectors[0]).tolist()
        return Response(scores, headers=timing_headers(result.timings, result.tokens))

    async def _classify(
        self, models: Models, data: ClassificationRequest, name: str | None
    ) -> Response[Any]:
        served = models.pick(name, _CLASSIFIER_KINDS, "/")
        require_kind(served, _CLASSIFIER_KINDS, "text classification needs an NLI model")
        texts = [data.inputs] if isinstance(data.inputs, str) else data.inputs
        models.check_batch(len(texts), "inputs")
        activation = data.parameters.function_to_apply
        ranked, result = await classify_items(
            served,
            list(texts),
            raw_scores=activation == "none",
            truncate=data.truncate,
            activation=activation if activation != "none" else None,
        )
        top_k = data.parameters.top_k
        body: list[list[Prediction]] = [row[:top_k] for row in ranked]
        return Response(body, headers=timing_headers(result.timings, result.tokens))
