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
from litestar import Router, get
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.requests import (
    Classification,
    ClassifyRequest,
    Embeddings,
    Ranking,
    Request,
    Similarities,
    SimilarityRequest,
)
from trt_async.http.admin import Health
from trt_async.http.auth import PUBLIC_OPT
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.rerank import AnyRerankRequest, tei_rerank_answer, tei_rerank_request
from trt_async.http.routes import Call, Translation, inference_route, vector_matrix
from trt_async.http.tei import (
    EmbedRequest,
    Prediction,
    PredictRequest,
    embed_answer,
    embed_request,
    predict_answer,
    predict_request,
)


class SimilarityInputs(msgspec.Struct):
    """The Inference API's sentence-similarity input."""

    source_sentence: str
    sentences: list[str]


class SimilarityBody(msgspec.Struct, kw_only=True):
    """``huggingface_hub``'s ``sentence_similarity``: one cosine per sentence."""

    inputs: SimilarityInputs
    model: str | None = None


class ClassificationParameters(msgspec.Struct, kw_only=True):
    """The Inference API's text-classification parameters."""

    top_k: Annotated[int, Meta(ge=1)] | None = None
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = None


class ClassificationBody(msgspec.Struct, kw_only=True):
    """``huggingface_hub``'s ``text_classification``: labels per text, best first."""

    inputs: str | list[str]
    parameters: ClassificationParameters = msgspec.field(default_factory=ClassificationParameters)
    truncate: bool | None = None
    model: str | None = None


#: The bodies the root route takes, told apart by their keys (see the module's docstring).
RootBody = AnyRerankRequest | SimilarityBody | ClassificationBody | EmbedRequest | PredictRequest


def _convert(body: dict[str, Any], type_: type[Any]) -> Any:
    try:
        return msgspec.convert(body, type_, strict=True)
    except msgspec.ValidationError as exc:
        what, _, where = str(exc).rpartition(" - at `")
        param = where.rstrip("`").removeprefix("$").lstrip(".") or None
        raise InvalidInput(f"invalid request: {what or exc}", field=param) from None


def _parse(data: dict[Any, Any], call: Call[dict[Any, Any]]) -> tuple[RootBody, str | None]:
    """Which body ``data`` is, and the model named (query parameter, else body)."""
    name = call.query("model") or (
        data.get("model") if isinstance(data.get("model"), str) else None
    )
    if "query" in data and "texts" in data:
        return _convert(data, AnyRerankRequest), name
    if isinstance(data.get("inputs"), dict):
        return _convert(data, SimilarityBody), name
    if "parameters" in data:
        return _convert(data, ClassificationBody), name
    if name is None:
        # Without a name, the root model is the first one in the config file, as TEI's one.
        first = next(iter(call.inference.registry), None)
        name = first.name if first is not None else None
    served = call.inference.lookup(name, tuple(ModelKind))
    if served.capabilities.role is ModelKind.EMBEDDING:
        return _convert(data, EmbedRequest), served.name
    return _convert(data, PredictRequest), served.name


#: Where ``_to_request`` leaves the body it parsed, for ``_to_answer``: a key no JSON
#: object can hold (their keys are strings).
_PARSED = object()


def _to_request(data: dict[Any, Any], call: Call[dict[Any, Any]]) -> Request:
    body, name = _parse(data, call)
    data[_PARSED] = body
    if isinstance(body, AnyRerankRequest):
        body.model = name
        return tei_rerank_request(body)
    if isinstance(body, SimilarityBody):
        return SimilarityRequest(
            source=body.inputs.source_sentence, sentences=body.inputs.sentences, model=name
        )
    if isinstance(body, ClassificationBody):
        function = body.parameters.function_to_apply
        return ClassifyRequest(
            inputs=[body.inputs] if isinstance(body.inputs, str) else body.inputs,
            model=name,
            activation="auto" if function is None else function,
            truncate=body.truncate,
        )
    if isinstance(body, EmbedRequest):
        return embed_request(body, name)
    return predict_request(body, name)


def _to_answer(
    result: Ranking | Similarities | Classification | Embeddings, data: dict[Any, Any]
) -> Any:
    body: RootBody = data[_PARSED]
    if isinstance(body, AnyRerankRequest) and isinstance(result, Ranking):
        return tei_rerank_answer(result, body)
    if isinstance(result, Similarities):
        return vector_matrix(result.scores)
    if isinstance(body, ClassificationBody) and isinstance(result, Classification):
        top_k = body.parameters.top_k
        return [
            [Prediction(label, score) for label, score in row][:top_k] for row in result.ranked()
        ]
    if isinstance(result, Embeddings):
        return embed_answer(result, body)
    assert isinstance(body, PredictRequest) and isinstance(result, Classification)
    return predict_answer(result, body)


@get(["/", "/ping"], summary="Liveness, as TEI answers at / and /ping", opt={PUBLIC_OPT: True})
async def ping() -> Health:
    return Health("ok")


def router() -> Router:
    """TEI's root routes, answering errors in TEI's shape."""
    invoke = inference_route(
        ["/", "/invocations"],
        body=dict[str, Any],
        translation=Translation(_to_request, _to_answer),
        dialect=Dialect.TEI,
        answers=Any,
        summary="TEI's root route: the task the body and the model call for",
        description=__doc__,
    )
    return Router(
        "/",
        route_handlers=[ping, invoke],
        tags=["tei"],
        exception_handlers=dialect_handlers(Dialect.TEI),
    )
