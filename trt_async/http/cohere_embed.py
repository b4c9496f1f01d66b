"""Cohere's embed API: ``POST /v2/embed`` and ``POST /v1/embed``.

``embedding_types`` picks any of float, int8, uint8, binary and ubinary (and base64,
little-endian float32) at once; the quantised types are computed by
:meth:`~trt_async.core.tasks.ServedModel.quantize` (sentence-transformers' arithmetic,
int8/uint8 calibrated per model). ``output_dimension`` keeps the first dimensions
(Matryoshka) and re-normalises. ``input_type`` picks the model's prompt for that use
(``search_query``: its ``query`` prompt, ``search_document``: its ``document`` or
``passage`` prompt...); a model without one embeds the texts as sent. v1 without
``embedding_types`` answers ``embeddings_floats``. Errors are Cohere's ``{"message"}`` body.
"""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Literal, get_args

import msgspec
from litestar import Router

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.requests import (
    Embeddings,
    EmbedRequest,
    ImageTextEmbeddings,
    ImageTextEmbedRequest,
    QuantizedType,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.image_requests import CohereInput, cohere_items
from trt_async.http.routes import Call, Translation, inference_route, vector_rows

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]
Truncate = Literal["NONE", "START", "END"]


class CohereEmbedRequest(msgspec.Struct, kw_only=True):
    texts: list[str] | None = None
    #: v2, image-text models: images (data: URIs, base64 or allowed URLs), or inputs of
    #: one text or image content part each (see image_requests).
    images: list[str] | None = None
    inputs: list[CohereInput] | None = None
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


def _request(
    data: CohereEmbedRequest, types: list[EmbeddingType]
) -> EmbedRequest | ImageTextEmbedRequest:
    if (data.texts is not None) + (data.images is not None) + (data.inputs is not None) != 1:
        raise InvalidInput("send exactly one of texts, images and inputs", field="texts")
    items = cohere_items(data.images, data.inputs)
    if items is not None:
        bad = [t for t in types if t not in ("float", "base64")]
        if bad:
            raise InvalidInput(
                f"embedding_types {bad} are given for texts only; ask for float or base64 "
                "with images and inputs",
                field="embedding_types",
            )
        return items.request(
            data.model, dimensions=data.output_dimension, truncate=data.truncate != "NONE"
        )
    assert data.texts is not None
    return EmbedRequest(
        inputs=data.texts,
        model=data.model,
        normalize=True,
        dimensions=data.output_dimension,
        truncate=data.truncate != "NONE",
        direction="left" if data.truncate == "START" else "right",
        max_tokens=data.max_tokens,
        quantized=tuple(t for t in types if t in _QUANTIZED),
        input_type=data.input_type,
    )


_QUANTIZED: tuple[QuantizedType, ...] = ("int8", "uint8", "binary", "ubinary")


def _by_type(result: Embeddings | ImageTextEmbeddings, types: list[EmbeddingType]) -> _WireByType:
    out = _WireByType()
    vectors = result.in_order() if isinstance(result, ImageTextEmbeddings) else result.vectors
    for kind in types:
        if kind == "float":
            out.float_ = vector_rows(vectors)
        elif kind == "base64":
            rows = vectors.astype("<f4", copy=False)
            out.base64 = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
        elif isinstance(result, Embeddings):
            setattr(out, kind, result.quantized[kind].tolist())
    return out


def _meta(version: str, tokens: int) -> EmbedMeta:
    return EmbedMeta(ApiVersion(version), BilledUnits(tokens))


def _v2_request(
    data: CohereEmbedRequest, call: Call[CohereEmbedRequest]
) -> EmbedRequest | ImageTextEmbedRequest:
    return _request(data, _types(data.embedding_types, ["float"]))


def _v2_answer(
    result: Embeddings | ImageTextEmbeddings, data: CohereEmbedRequest
) -> _WireByTypeResponse:
    return _WireByTypeResponse(
        id=str(uuid.uuid4()),
        embeddings=_by_type(result, _types(data.embedding_types, ["float"])),
        texts=data.texts or [],
        meta=_meta("2", result.tokens),
    )


def _v1_request(
    data: CohereEmbedRequest, call: Call[CohereEmbedRequest]
) -> EmbedRequest | ImageTextEmbedRequest:
    types = [] if data.embedding_types is None else _types(data.embedding_types, [])
    return _request(data, types)


def _v1_answer(
    result: Embeddings | ImageTextEmbeddings, data: CohereEmbedRequest
) -> _WireByTypeResponse | _WireFloatsResponse:
    meta = _meta("1", result.tokens)
    texts = data.texts or []
    if data.embedding_types is None:
        rows = result.in_order() if isinstance(result, ImageTextEmbeddings) else result.vectors
        return _WireFloatsResponse(str(uuid.uuid4()), vector_rows(rows), texts, meta)
    by_type = _by_type(result, _types(data.embedding_types, []))
    return _WireByTypeResponse(str(uuid.uuid4()), by_type, texts, meta)


class _WireByType(msgspec.Struct, omit_defaults=True, rename={"float_": "float"}):
    """:class:`EmbeddingsByType` as written: float vectors already JSON."""

    float_: list[msgspec.Raw] | None = None
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class _WireByTypeResponse(msgspec.Struct):
    id: str
    embeddings: _WireByType
    texts: list[str]
    meta: EmbedMeta
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"


class _WireFloatsResponse(msgspec.Struct):
    id: str
    embeddings: list[msgspec.Raw]
    texts: list[str]
    meta: EmbedMeta
    response_type: Literal["embeddings_floats"] = "embeddings_floats"


#: Images are counted among ``images`` or ``inputs`` (whichever the body used: both
#: number items from 0 the same way).
_IMAGE_FIELDS = {Part.IMAGES: "images"}


def router() -> Router:
    """Cohere's embed routes, answering errors in Cohere's shape."""
    v2 = inference_route(
        "/v2/embed",
        body=CohereEmbedRequest,
        translation=Translation(_v2_request, _v2_answer, field_names=_IMAGE_FIELDS),
        dialect=Dialect.COHERE,
        answers=EmbedByTypeResponse,
        summary="Embed texts, as float and quantised types, or images (Cohere v2)",
    )
    v1 = inference_route(
        "/v1/embed",
        body=CohereEmbedRequest,
        translation=Translation(_v1_request, _v1_answer, field_names=_IMAGE_FIELDS),
        dialect=Dialect.COHERE,
        answers=EmbedByTypeResponse | EmbedFloatsResponse,
        summary="Embed texts (Cohere v1): floats, or by type with embedding_types",
    )
    return Router(
        "/",
        route_handlers=[v2, v1],
        tags=["cohere"],
        exception_handlers=dialect_handlers(Dialect.COHERE),
    )
