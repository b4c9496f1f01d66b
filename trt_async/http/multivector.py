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
from litestar import Controller, Response, post
from litestar.params import FromQuery

from trt_async.core.config import ModelKind
from trt_async.core.multivector import Head, SparseVector
from trt_async.core.tasks import EmbedResult
from trt_async.http.common import (
    DirectionName,
    JsonBody,
    Models,
    ModelsDep,
    error_responses,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.openai_api import EmbeddingInput, split_input
from trt_async.http.tei import direction, refuse_prompt

_KINDS = (ModelKind.EMBEDDING,)


class TokenEmbedRequest(msgspec.Struct, kw_only=True):
    inputs: EmbeddingInput
    truncate: bool | None = None
    truncation_direction: DirectionName = "right"
    prompt_name: str | None = None
    model: str | None = None


class SparseValue(msgspec.Struct):
    index: int
    value: float


def sparse_values(vector: SparseVector) -> list[SparseValue]:
    return [
        SparseValue(i, w) for i, w in zip(vector.ids.tolist(), vector.weights.tolist(), strict=True)
    ]


async def _run(
    models: Models, data: TokenEmbedRequest, model: str | None, route: str, head: Head
) -> EmbedResult:
    served = models.pick(data.model or model, _KINDS, route)
    refuse_prompt(served, data.prompt_name)
    served.require_head(head)
    inputs = split_input(data.inputs, "inputs")
    models.check_batch(len(inputs), "inputs")
    return await served.embed(
        inputs,
        truncate=data.truncate,
        direction=direction(data.truncation_direction),
        heads=(head,),
    )


class TokenEmbeddingController(Controller):
    tags = ["tei"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.TEI)

    @post(
        "/embed_sparse",
        status_code=200,
        summary="Sparse lexical weights per text (TEI; bge-m3 exports)",
        responses=error_responses(Dialect.TEI),
    )
    async def embed_sparse(
        self,
        models: ModelsDep,
        data: JsonBody[TokenEmbedRequest],
        model: FromQuery[str | None] = None,
    ) -> Response[list[list[SparseValue]]]:
        result = await _run(models, data, model, "/embed_sparse", "sparse")
        body = [sparse_values(v) for v in result.heads["sparse"]]  # type: ignore[arg-type]
        return Response(body, headers=timing_headers(result.timings, result.tokens))

    @post(
        "/embed_all",
        status_code=200,
        summary="Every token's vector per text (TEI)",
        responses=error_responses(Dialect.TEI),
    )
    async def embed_all(
        self,
        models: ModelsDep,
        data: JsonBody[TokenEmbedRequest],
        model: FromQuery[str | None] = None,
    ) -> Response[list[list[list[float]]]]:
        result = await _run(models, data, model, "/embed_all", "tokens")
        body = [v.tolist() for v in result.heads["tokens"]]  # type: ignore[attr-defined]
        return Response(body, headers=timing_headers(result.timings, result.tokens))
