"""Cohere's embed API: ``POST /v2/embed`` and ``POST /v1/embed``.

``embedding_types`` picks any of float, int8, uint8, binary and ubinary (and base64,
little-endian float32) at once; the quantised types are computed by
:meth:`~trt_async.core.tasks.ServedModel.quantize` (sentence-transformers' arithmetic,
int8/uint8 calibrated per model). ``output_dimension`` keeps the first dimensions
(Matryoshka) and re-normalises. ``input_type`` is accepted and has no effect: the models
served here use no prompts. v1 without ``embedding_types`` answers ``embeddings_floats``.
Errors are Cohere's ``{"message"}`` body.
"""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Literal, get_args

import msgspec
from litestar import Controller, Response, post

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.tasks import EmbedResult, ServedModel
from trt_async.http.common import (
    JsonBody,
    Models,
    ModelsDep,
    error_responses,
    require_kind,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]
Truncate = Literal["NONE", "START", "END"]
_KINDS = (ModelKind.EMBEDDING,)


class CohereEmbedRequest(msgspec.Struct, kw_only=True):
    texts: list[str]
    model: str | None = None
    input_type: InputType | None = None
    embedding_types: list[str] | None = None
    output_dimension: Annotated[int, msgspec.Meta(ge=1)] | None = None
    truncate: Truncate = "END"
    #: v2: cut each text to this many tokens first.
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None


class EmbeddingsByType(msgspec.Struct, omit_defaults=True, rename={"float_": "float"}):
    float_: list[list[float]] | None = None
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class ApiVersion(msgspec.Struct):
    version: str


class BilledUnits(msgspec.Struct):
    input_tokens: int


class EmbedMeta(msgspec.Struct):
    api_version: ApiVersion
    billed_units: BilledUnits


class EmbedByTypeResponse(msgspec.Struct):
    id: str
    embeddings: EmbeddingsByType
    texts: list[str]
    meta: EmbedMeta
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"


class EmbedFloatsResponse(msgspec.Struct):
    id: str
    embeddings: list[list[float]]
    texts: list[str]
    meta: EmbedMeta
    response_type: Literal["embeddings_floats"] = "embeddings_floats"


def _types(requested: list[str] | None, default: list[str]) -> list[EmbeddingType]:
    names = default if requested is None else requested
    allowed = get_args(EmbeddingType)
    bad = [t for t in names if t not in allowed]
    if bad:
        raise InvalidInput(
            f"invalid embedding_types {bad}; each must be one of {', '.join(allowed)}",
            field="embedding_types",
        )
    if not names:
        raise InvalidInput(
            "embedding_types is empty; ask for at least one type", field="embedding_types"
        )
    return [t for t in allowed if t in names]


async def _embed(
    models: Models, data: CohereEmbedRequest, route: str
) -> tuple[ServedModel, EmbedResult]:
    model = models.pick(data.model, _KINDS, route)
    require_kind(model, _KINDS, f"{route} takes an embedding model")
    models.check_batch(len(data.texts), "texts")
    texts = data.texts
    if data.max_tokens is not None:
        texts = await model.clip(texts, data.max_tokens)
    result = await model.embed(
        texts,
        normalize=True,
        dimensions=data.output_dimension,
        truncate=data.truncate != "NONE",
        direction="left" if data.truncate == "START" else "right",
    )
    return model, result


async def _by_type(
    model: ServedModel, result: EmbedResult, types: list[EmbeddingType], dimensions: int | None
) -> EmbeddingsByType:
    out = EmbeddingsByType()
    vectors = result.vectors
    for kind in types:
        if kind == "float":
            out.float_ = vectors.tolist()
        elif kind == "base64":
            rows = vectors.astype("<f4", copy=False)
            out.base64 = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
        else:
            q = await model.quantize(vectors, kind, normalize=True, dimensions=dimensions)
            setattr(out, kind, q.tolist())
    return out


def _meta(version: str, tokens: int) -> EmbedMeta:
    return EmbedMeta(ApiVersion(version), BilledUnits(tokens))


class CohereEmbedController(Controller):
    tags = ["cohere"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.COHERE)

    @post(
        "/v2/embed",
        status_code=200,
        summary="Embed texts, as float and quantised types (Cohere v2)",
        responses=error_responses(Dialect.COHERE),
    )
    async def embed_v2(
        self, models: ModelsDep, data: JsonBody[CohereEmbedRequest]
    ) -> Response[EmbedByTypeResponse]:
        types = _types(data.embedding_types, ["float"])
        model, result = await _embed(models, data, "/v2/embed")
        body = EmbedByTypeResponse(
            id=str(uuid.uuid4()),
            embeddings=await _by_type(model, result, types, data.output_dimension),
            texts=data.texts,
            meta=_meta("2", result.tokens),
        )
        return Response(body, headers=timing_headers(result.timings, result.tokens))

    @post(
        "/v1/embed",
        status_code=200,
        summary="Embed texts (Cohere v1): floats, or by type with embedding_types",
        responses=error_responses(Dialect.COHERE),
    )
    async def embed_v1(
        self, models: ModelsDep, data: JsonBody[CohereEmbedRequest]
    ) -> Response[EmbedByTypeResponse | EmbedFloatsResponse]:
        types = None if data.embedding_types is None else _types(data.embedding_types, [])
        model, result = await _embed(models, data, "/v1/embed")
        meta = _meta("1", result.tokens)
        headers = timing_headers(result.timings, result.tokens)
        if types is None:
            floats = EmbedFloatsResponse(
                str(uuid.uuid4()), result.vectors.tolist(), data.texts, meta
            )
            return Response(floats, headers=headers)
        by_type = await _by_type(model, result, types, data.output_dimension)
        return Response(
            EmbedByTypeResponse(str(uuid.uuid4()), by_type, data.texts, meta), headers=headers
        )
