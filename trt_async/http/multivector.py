"""Token-level embeddings over HTTP: TEI's ``POST /embed_sparse`` and ``POST /embed_all``.

``/embed_sparse`` answers bge-m3's lexical weights (a graph exported with FlagEmbedding's
heads) as TEI does, ``[[{"index": token id, "value": weight}]]`` with only the positive
weights, ids ascending; a model without a sparse output gets a 400 naming what is missing.
``/embed_all`` answers every token's hidden state, special tokens included, for any
embedding model whose graph gives them. Both come from the same forward pass as the dense
vector; the seed's ``/infer/{model}`` offers the same heads with FlagEmbedding's switches.
"""

from __future__ import annotations

import msgspec
from litestar import Router

from trt_async.core.multivector import Head, SparseVector
from trt_async.core.requests import Embeddings, EmbedRequest
from trt_async.http.common import DirectionName, PromptName, PromptText, direction
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.openai_api import EmbeddingInput, split_input
from trt_async.http.routes import Call, Translation, inference_route, vector_matrix


class TokenEmbedRequest(msgspec.Struct, kw_only=True):
    inputs: EmbeddingInput
    truncate: bool | None = None
    truncation_direction: DirectionName = "right"
    prompt_name: PromptName = None
    prompt: PromptText = None
    model: str | None = None


class SparseValue(msgspec.Struct):
    index: int
    value: float


def sparse_values(vector: SparseVector) -> list[SparseValue]:
    return [
        SparseValue(i, w) for i, w in zip(vector.ids.tolist(), vector.weights.tolist(), strict=True)
    ]


def _request(head: Head) -> Translation[TokenEmbedRequest]:
    def to_request(data: TokenEmbedRequest, call: Call[TokenEmbedRequest]) -> EmbedRequest:
        return EmbedRequest(
            inputs=split_input(data.inputs),
            model=data.model or call.query("model"),
            truncate=data.truncate,
            direction=direction(data.truncation_direction),
            heads=frozenset((head,)),
            prompt_name=data.prompt_name,
            prompt=data.prompt,
        )

    if head == "sparse":
        return Translation(to_request, _sparse_answer)
    return Translation(to_request, _tokens_answer)


def _sparse_answer(result: Embeddings, data: TokenEmbedRequest) -> list[list[SparseValue]]:
    return [sparse_values(v) for v in result.sparse or []]


def _tokens_answer(result: Embeddings, data: TokenEmbedRequest) -> list[msgspec.Raw]:
    return [vector_matrix(v) for v in result.token_vectors or []]


def router() -> Router:
    """TEI's token-level routes."""
    sparse = inference_route(
        "/embed_sparse",
        body=TokenEmbedRequest,
        translation=_request("sparse"),
        dialect=Dialect.TEI,
        answers=list[list[SparseValue]],
        summary="Sparse lexical weights per text (TEI; bge-m3 exports)",
    )
    every_token = inference_route(
        "/embed_all",
        body=TokenEmbedRequest,
        translation=_request("tokens"),
        dialect=Dialect.TEI,
        answers=list[list[list[float]]],
        summary="Every token's vector per text (TEI)",
    )
    return Router(
        "/",
        route_handlers=[sparse, every_token],
        tags=["tei"],
        exception_handlers=dialect_handlers(Dialect.TEI),
    )
