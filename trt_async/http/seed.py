"""The seed server's native API: ``GET /models`` and ``POST /infer/{model}``.

Bodies and answers keep the seed's shapes exactly; errors use its FastAPI ``{"detail"}``.
The reranker answer is the raw logit, as the seed's example shows (9.51, 7.24).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import FromPath
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import EmptyInput, InvalidInput, Part
from trt_async.core.multivector import Head, SparseVector
from trt_async.core.tasks import ServedModel
from trt_async.http.common import (
    JsonBody,
    ModelsDep,
    RegistryDep,
    Truncate,
    elapsed_ms,
    error_responses,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers


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


async def _m3_infer(
    served: ServedModel, documents: list[str], data: InferRequest
) -> Response[InferResponse]:
    heads: list[Head] = []
    if data.return_sparse:
        heads.append("sparse")
    if data.return_colbert_vecs:
        heads.append("colbert")
    if not heads and not data.return_dense:
        raise InvalidInput(
            "ask for at least one of return_dense, return_sparse and return_colbert_vecs",
            field="return_dense",
        )
    result = await served.embed(documents, truncate=data.truncate, heads=heads)
    body = M3InferResponse(elapsed_ms=elapsed_ms(result.timings))
    if data.return_dense:
        body.embeddings = result.vectors.tolist()
    if data.return_sparse:
        vectors = [v for v in result.heads["sparse"] if isinstance(v, SparseVector)]
        if data.sparse_keys == "token":
            strings = served.runtime.tokenizer.token_strings
            body.lexical_weights = [
                dict(zip(strings(v.ids.tolist()), v.weights.tolist(), strict=True)) for v in vectors
            ]
        else:
            body.lexical_weights = [
                {str(i): w for i, w in zip(v.ids.tolist(), v.weights.tolist(), strict=True)}
                for v in vectors
            ]
    if data.return_colbert_vecs:
        body.colbert_vecs = [v.tolist() for v in result.heads["colbert"]]  # type: ignore[attr-defined]
    return Response(body, headers=timing_headers(result.timings, result.tokens))


class SeedController(Controller):
    tags = ["seed"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.DETAIL)

    @get("/models", summary="Served models by kind (seed shape)")
    async def list_models(self, registry: RegistryDep) -> ModelsResponse:
        by_kind = registry.names_by_kind()
        return ModelsResponse(
            ModelLists(
                embedding_models=by_kind[ModelKind.EMBEDDING],
                reranking_models=by_kind[ModelKind.RERANKER],
                nli_models=by_kind[ModelKind.NLI],
            )
        )

    @post(
        "/infer/{model:str}",
        status_code=200,
        summary="Embed, rerank or classify with the named model (seed API)",
        responses=error_responses(Dialect.DETAIL),
    )
    async def infer(
        self, models: ModelsDep, model: FromPath[str], data: JsonBody[InferRequest]
    ) -> Response[InferResponse]:
        served = models.get(model)
        if served.kind is ModelKind.NLI:
            premises = _as_list(data.premises, "premises")
            hypotheses = _as_list(data.hypotheses, "hypotheses")
            if len(premises) != len(hypotheses):
                raise InvalidInput(
                    f"premises and hypotheses must have the same length; got {len(premises)} "
                    f"and {len(hypotheses)}",
                    field="hypotheses",
                )
            models.check_batch(len(premises), "premises")
            result = await served.classify(
                list(zip(premises, hypotheses, strict=True)), truncate=data.truncate
            )
            return Response(
                NLIInferResponse(
                    predictions=result.predictions(),
                    logits=result.logits.astype(float).tolist(),
                    elapsed_ms=elapsed_ms(result.timings),
                ),
                headers=timing_headers(result.timings, result.tokens),
            )
        documents = _as_list(data.documents, "documents")
        models.check_batch(len(documents), "documents")
        if served.kind is ModelKind.RERANKER or data.query is not None:
            if data.query is None:
                raise InvalidInput("query is required for a reranker", field="query")
            if not documents:
                raise EmptyInput(Part.DOCUMENTS, field="documents")
            scores = await served.rerank(
                data.query, documents, raw_scores=True, truncate=data.truncate
            )
            return Response(
                RerankInferResponse(
                    scores=scores.scores.astype(float).tolist(),
                    elapsed_ms=elapsed_ms(scores.timings),
                ),
                headers=timing_headers(scores.timings, scores.tokens),
            )
        if data.return_sparse or data.return_colbert_vecs or not data.return_dense:
            return await _m3_infer(served, documents, data)
        embedded = await served.embed(documents, truncate=data.truncate)
        return Response(
            EmbedInferResponse(
                embeddings=embedded.vectors.tolist(), elapsed_ms=elapsed_ms(embedded.timings)
            ),
            headers=timing_headers(embedded.timings, embedded.tokens),
        )
