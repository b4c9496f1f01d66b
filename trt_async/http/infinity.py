"""infinity's image route, ``POST /embeddings_image`` (also under ``/v1``): images in
``input``, answered in OpenAI's shape. infinity's newer form, ``/embeddings`` with
``"modality": "image"``, is the OpenAI route's (:mod:`trt_async.http.openai_api`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Router
from msgspec import Meta

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.requests import (
    Embeddings,
    EmbedRequest,
    ImageTextEmbeddings,
    ImageTextEmbedRequest,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.image_requests import image_list
from trt_async.http.openai_api import EmbeddingResponse, embedding_answer
from trt_async.http.routes import Call, Translation, inference_route


class ImageEmbeddingRequest(msgspec.Struct, kw_only=True):
    """infinity's ``/embeddings_image`` body: images to embed."""

    input: Annotated[
        str | list[str],
        Meta(description="An image or a list of images: http(s) URLs, data: URIs or base64."),
    ]
    model: Annotated[
        str | None, Meta(description="A served image-text model (default: the first).")
    ] = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def _to_request(
    data: ImageEmbeddingRequest, call: Call[ImageEmbeddingRequest]
) -> EmbedRequest | ImageTextEmbedRequest:
    items = image_list(data.input, "input")
    if not len(items):
        raise InvalidInput("input is empty; send at least one image", field="input")
    return items.request(data.model)


def _to_answer(result: Embeddings | ImageTextEmbeddings, data: ImageEmbeddingRequest) -> object:
    rows = result.in_order() if isinstance(result, ImageTextEmbeddings) else result.vectors
    return embedding_answer(rows, result.model, result.tokens, data.encoding_format)


def router() -> Router:
    """infinity's image route, answering errors in OpenAI's shape."""
    images = inference_route(
        ["/embeddings_image", "/v1/embeddings_image"],
        body=ImageEmbeddingRequest,
        translation=Translation(_to_request, _to_answer, field_names={Part.IMAGES: "input"}),
        dialect=Dialect.OPENAI,
        answers=EmbeddingResponse,
        summary="Embed images (infinity; or /v1/embeddings with modality image)",
    )
    return Router(
        "/",
        route_handlers=[images],
        tags=["images"],
        exception_handlers=dialect_handlers(Dialect.OPENAI),
    )
