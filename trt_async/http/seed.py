"""The seed server's native API: ``GET /models`` and ``POST /infer/{model}``.

Bodies and answers keep the seed's shapes exactly; errors use its FastAPI ``{"detail"}``.
The reranker answer is the raw logit, as the seed's example shows (9.51, 7.24).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Router, get
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import EmptyInput, InvalidInput, Part
from trt_async.core.multivector import Head
from trt_async.core.requests import (
    Classification,
    ClassifyRequest,
    Embeddings,
    EmbedRequest,
    Ranking,
    Request,
    RerankRequest,
)
from trt_async.core.templates import InstructionNotTaken, NotTakenBy
from trt_async.http.common import (
    Instruction,
    PromptName,
    PromptText,
    RegistryDep,
    Truncate,
    elapsed_ms,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.openai_api import refuse_prompts
from trt_async.http.routes import Call, Translation, inference_route, vector_matrix, vector_rows


class ModelLists(msgspec.Struct):
    embedding_models: list[str]
    reranking_models: list[str]
    nli_models: list[str]


class ModelsResponse(msgspec.Struct):
    models: ModelLists


class InferRequest(msgspec.Struct, kw_only=True):
    """One body for the three kinds; which fields are needed depends on the model's kind.

    embedding: ``documents``; reranker: ``query`` and ``documents``; NLI: ``premises`` and
    ``hypotheses`` (one hypothesis per premise).
    """

    documents: Annotated[
        str | list[str] | None,
        Meta(description="Embedding: the texts to embed. Reranker: the texts to score."),
    ] = None
    query: Annotated[str | None, Meta(description="Reranker: the query.")] = None
    premises: Annotated[str | list[str] | None, Meta(description="NLI: the premises.")] = None
    hypotheses: Annotated[
        str | list[str] | None, Meta(description="NLI: one hypothesis per premise.")
    ] = None
    model: Annotated[str | None, Meta(description="Ignored: the path names the model.")] = None
    truncate: Truncate = None
    return_dense: Annotated[
        bool, Meta(description="Embedding: the dense vectors (FlagEmbedding's switch).")
    ] = True
    return_sparse: Annotated[
        bool, Meta(description="bge-m3 exports: lexical weights per text.")
    ] = False
    return_colbert_vecs: Annotated[
        bool, Meta(description="bge-m3 exports: ColBERT vectors per text.")
    ] = False
    sparse_keys: Annotated[
        Literal["id", "token"],
        Meta(description="Key lexical weights by token id (a string) or by token text."),
    ] = "id"
    prompt_name: PromptName = None
    prompt: PromptText = None
    instruction: Instruction = None


class EmbedInferResponse(msgspec.Struct):
    embeddings: list[list[float]]
    elapsed_ms: float


class M3InferResponse(msgspec.Struct, omit_defaults=True):
    """bge-m3's outputs as FlagEmbedding's ``encode`` names them (dense under the seed's
    ``embeddings``); only those asked for are present."""

    elapsed_ms: float
    embeddings: list[list[float]] | None = None
    lexical_weights: list[dict[str, float]] | None = None
    colbert_vecs: list[list[list[float]]] | None = None


class RerankInferResponse(msgspec.Struct):
    scores: list[float]
    elapsed_ms: float


class NLIInferResponse(msgspec.Struct):
    predictions: list[str]
    logits: list[list[float]]
    elapsed_ms: float


def _as_list(value: str | list[str] | None, param: str) -> list[str]:
    if value is None:
        raise InvalidInput(f"{param} is required for this model", field=param)
    return [value] if isinstance(value, str) else value


InferResponse = EmbedInferResponse | M3InferResponse | RerankInferResponse | NLIInferResponse


class _WireEmbedResponse(msgspec.Struct):
    embeddings: list[msgspec.Raw]
    elapsed_ms: float


class _WireM3Response(msgspec.Struct, omit_defaults=True):
    elapsed_ms: float
    embeddings: list[msgspec.Raw] | None = None
    lexical_weights: list[dict[str, float]] | None = None
    colbert_vecs: list[msgspec.Raw] | None = None


def _heads(data: InferRequest) -> frozenset[Head]:
    heads: set[Head] = set()
    if data.return_sparse:
        heads.add("sparse")
    if data.return_colbert_vecs:
        heads.add("colbert")
    return frozenset(heads)


def _to_request(data: InferRequest, call: Call[InferRequest]) -> Request:
    name = call.path("model")
    served = call.inference.lookup(name)
    if served.capabilities.role is ModelKind.NLI:
        refuse_prompts(data.prompt_name, data.prompt, "classifying")
        if data.instruction is not None:
            raise InstructionNotTaken(name)
        premises = _as_list(data.premises, "premises")
        hypotheses = _as_list(data.hypotheses, "hypotheses")
        if len(premises) != len(hypotheses):
            raise InvalidInput(
                f"premises and hypotheses must have the same length; got {len(premises)} "
                f"and {len(hypotheses)}",
                field="hypotheses",
            )
        return ClassifyRequest(
            inputs=list(zip(premises, hypotheses, strict=True)),
            model=name,
            part=Part.PREMISES,
            activation="none",
            truncate=data.truncate,
        )
    documents = _as_list(data.documents, "documents")
    if served.capabilities.role is ModelKind.RERANKER or data.query is not None:
        if data.query is None:
            raise InvalidInput("query is required for a reranker", field="query")
        if not documents:
            raise EmptyInput(Part.DOCUMENTS)
        refuse_prompts(data.prompt_name, data.prompt, "reranking")
        return RerankRequest(
            query=data.query, documents=documents, model=name, raw_scores=True,
            truncate=data.truncate, instruction=data.instruction,
        )  # fmt: skip
    if data.instruction is not None:
        raise NotTakenBy(Part.INSTRUCTION, "embedding", "reranking (send a `query`)")
    heads = _heads(data)
    if not heads and not data.return_dense:
        raise InvalidInput(
            "ask for at least one of return_dense, return_sparse and return_colbert_vecs",
            field="return_dense",
        )
    return EmbedRequest(
        inputs=documents,
        model=name,
        truncate=data.truncate,
        heads=heads,
        sparse_tokens=data.sparse_keys == "token",
        prompt_name=data.prompt_name,
        prompt=data.prompt,
    )


def _to_answer(
    result: Embeddings | Ranking | Classification, data: InferRequest
) -> _WireEmbedResponse | _WireM3Response | RerankInferResponse | NLIInferResponse:
    elapsed = elapsed_ms(result.timings)
    if isinstance(result, Classification):
        return NLIInferResponse(
            predictions=result.predictions(),
            logits=result.logits.astype(float).tolist(),
            elapsed_ms=elapsed,
        )
    if isinstance(result, Ranking):
        return RerankInferResponse(scores=result.scores.astype(float).tolist(), elapsed_ms=elapsed)
    if not (data.return_sparse or data.return_colbert_vecs or not data.return_dense):
        return _WireEmbedResponse(vector_rows(result.vectors), elapsed)
    body = _WireM3Response(elapsed_ms=elapsed)
    if data.return_dense:
        body.embeddings = vector_rows(result.vectors)
    if data.return_sparse and result.sparse is not None:
        if result.sparse_tokens is not None:
            body.lexical_weights = [
                dict(zip(tokens, v.weights.tolist(), strict=True))
                for tokens, v in zip(result.sparse_tokens, result.sparse, strict=True)
            ]
        else:
            body.lexical_weights = [
                {str(i): w for i, w in zip(v.ids.tolist(), v.weights.tolist(), strict=True)}
                for v in result.sparse
            ]
    if data.return_colbert_vecs and result.colbert is not None:
        body.colbert_vecs = [vector_matrix(v) for v in result.colbert]
    return body


@get("/models", summary="Served models by kind (seed shape)")
async def list_models(registry: RegistryDep) -> ModelsResponse:
    by_kind = registry.names_by_kind()
    return ModelsResponse(
        ModelLists(
            embedding_models=by_kind[ModelKind.EMBEDDING],
            reranking_models=by_kind[ModelKind.RERANKER],
            nli_models=by_kind[ModelKind.NLI],
        )
    )


def router() -> Router:
    """The seed's routes, answering errors in its ``{"detail"}`` shape."""
    infer = inference_route(
        "/infer/{model:str}",
        body=InferRequest,
        translation=Translation(_to_request, _to_answer, field_names={Part.INPUTS: "documents"}),
        dialect=Dialect.DETAIL,
        answers=InferResponse,
        summary="Embed, rerank or classify with the named model (seed API)",
    )
    return Router(
        "/",
        route_handlers=[list_models, infer],
        tags=["seed"],
        exception_handlers=dialect_handlers(Dialect.DETAIL),
    )
