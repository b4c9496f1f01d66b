"""The API of the Rust proxy in front of Triton for bge-m3: ``POST /v1/embedding``.

The body is a bare list, ``[{"query": "text"}, ...]``, answered
``[{"embedding": [floats]}, ...]`` in the same order, by the model that proxy's
``MODEL_NAME`` names (when set: the worker reads it at start) or else the first embedding
model. Errors are 4xx with ``{"detail": message}``. Its other settings map onto the server's:
``SERVER_PORT`` is the port when ``--port`` is not given, and ``EMBEDDING_SIZE``, when set,
must equal the model's embedding size or the server does not start
(:mod:`trt_async.http.serve`).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Router
from msgspec import Meta

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.requests import Embeddings, EmbedRequest
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.routes import Call, Translation, inference_route, vector_rows

#: The environment variables of that proxy the server reads.
MODEL_NAME_ENV = "MODEL_NAME"
EMBEDDING_SIZE_ENV = "EMBEDDING_SIZE"
SERVER_PORT_ENV = "SERVER_PORT"


class Query(msgspec.Struct, kw_only=True):
    """One text to embed."""

    query: Annotated[str, Meta(description="The text.")]


class EmbeddingItem(msgspec.Struct):
    """The vector of the query at the same position."""

    embedding: list[float]


class _WireItem(msgspec.Struct):
    embedding: msgspec.Raw


def translation(model: str | None) -> Translation[list[Query]]:
    """The route's translations, for ``model`` (None: the first embedding model)."""

    def to_request(data: list[Query], call: Call[list[Query]]) -> EmbedRequest:
        if not data:
            raise InvalidInput(
                'the body is an empty list; send [{"query": "text"}, ...]', field="query"
            )
        return EmbedRequest(inputs=[item.query for item in data], model=model)

    def to_answer(result: Embeddings, data: list[Query]) -> list[_WireItem]:
        return [_WireItem(row) for row in vector_rows(result.vectors)]

    return Translation(to_request, to_answer, field_names={Part.INPUTS: "query"})


def router(model: str | None = None) -> Router:
    """``POST /v1/embedding`` on ``model`` (None: the first embedding model)."""
    embedding = inference_route(
        "/v1/embedding",
        body=list[Query],
        translation=translation(model),
        dialect=Dialect.DETAIL,
        answers=list[EmbeddingItem],
        summary="Embed queries (the Triton proxy's API: a list in, a list out)",
    )
    return Router(
        "/",
        route_handlers=[embedding],
        tags=["proxy"],
        exception_handlers=dialect_handlers(Dialect.DETAIL),
    )
