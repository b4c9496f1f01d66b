"""How every inference route runs: one generic handler, and per route two translations.

A route is declared by its body's Struct and two functions of its dialect: ``to_request``
(the decoded body, and the HTTP request for its path and query, into one of the core's
request structs) and ``to_answer`` (the core's result and the body into the answer). The
handler does the rest, the same way for every route: read the body, decode it once,
strictly, straight into its Struct; find the model and check it can do the task
(:meth:`Inference.model`); note its name for the access log and metrics; run it; encode the
answer with msgspec; add the timing headers.

Litestar converts a handler's ``data`` parameter in lax mode, from a dict it decoded first
(``"dimensions": "64"`` would pass); decoding here is msgspec's strict JSON decoding, once.
The OpenAPI schema still documents every body and answer (``docs.add_bodies``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np
import orjson
from litestar import post
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import (
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
)
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from trt_async.core.errors import Part
from trt_async.core.inference import Inference
from trt_async.core.requests import Request, Timings, Tokens
from trt_async.http.common import AnyRequest, error_responses, provide_inference
from trt_async.http.errors import (
    DIALECT_STATE_KEY,
    FIELD_NAMES_OPT,
    Dialect,
    UndecodableBody,
)
from trt_async.http.observability import MODEL_STATE_KEY

B = TypeVar("B")

#: Route options: the body's Struct and the answer's type, for the OpenAPI schema.
BODY_OPT = "body_type"
ANSWER_OPT = "answer_type"

_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Call(Generic[B]):
    """What ``to_request`` may read besides the body."""

    inference: Inference
    request: AnyRequest

    def query(self, name: str) -> str | None:
        value = self.request.query_params.get(name)
        return value if isinstance(value, str) else None

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


@dataclass(frozen=True, slots=True)
class Translation(Generic[B]):
    """A route's two translations between its dialect and the core."""

    to_request: Callable[[B, Call[B]], Request]
    #: ``(result, body) -> answer``; the result is the type ``to_request``'s request gives.
    to_answer: Callable[[Any, B], Any]
    #: Names this route gives parts of the request, where its dialect's differ.
    field_names: Mapping[Part, str] = field(default_factory=dict)
    #: For a route whose dialect its body decides: the dialect of a body that does not
    #: decode into the route's Struct (None: the route's own).
    invalid_body: Callable[[bytes], Dialect | None] | None = None


# -- decoding --------------------------------------------------------------------------------


def _field(error: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.top_n`" as ("top_n", "Expected ..."),
    and "Object missing required field `input`" as ("input", "Object missing ...")."""
    what, sep, where = str(error).rpartition(" - at `")
    if not sep:
        what = str(error)
        return what.partition("`")[2].partition("`")[0], what
    return where.rstrip("`").removeprefix("$").lstrip("."), what


async def read_body(request: AnyRequest) -> bytes:
    """The request's body, refused with 413 past the route's ``request_max_body_size``.

    Read from ``receive`` directly: Litestar's ``Request.body()`` parses every header into
    a mapping to find the content length, on every request.
    """
    limit = request.route_handler.resolve_request_max_body_size()
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            if limit is not None and value.isdigit() and int(value) > limit:
                raise HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE)
            break
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise HTTPException("the client closed the connection", status_code=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_encoding(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            return value.decode("latin-1").strip().lower()
    return ""


def decode(request: AnyRequest, body: bytes, decoder: msgspec.json.Decoder[B]) -> B:
    """The body decoded strictly into the route's Struct; what is wrong with it as a 4xx."""
    encoding = _content_encoding(request.scope)
    if encoding not in ("", "identity"):
        raise HTTPException(
            f"Content-Encoding {encoding!r} is not supported; send the JSON body uncompressed",
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    if not body.strip():
        raise ValidationException(
            "invalid request: the body is empty; send a JSON object",
            extra=[{"key": None, "message": "the body is empty; send a JSON object"}],
        )
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        # A typed decode stops at the first wrong type; a body that is not JSON at all
        # (``[1,``) is reported as such.
        _check_json(body)
        key, message = _field(exc)
        raise ValidationException(
            f"invalid request: {key}: {message}",
            extra=[{"key": key or None, "message": message, "source": "body"}],
        ) from None
    except msgspec.DecodeError as exc:
        raise UndecodableBody(str(exc)) from None
    except RecursionError:
        raise UndecodableBody("it is nested too deeply") from None


def _check_json(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise UndecodableBody(str(exc)) from None
    except RecursionError:
        raise UndecodableBody("it is nested too deeply") from None


# -- encoding vectors --------------------------------------------------------------------------


def vector_rows(vectors: np.ndarray) -> list[msgspec.Raw]:
    """Each row of a float matrix as a JSON array, ready to embed in a msgspec answer.

    orjson writes float32 arrays straight from numpy, each number in the shortest form that
    reads back as the same float32 (text-embeddings-inference writes the same); building
    Python floats with ``tolist()`` for msgspec cost twice as much, for longer text.
    """
    rows = vectors.astype(np.float32, copy=False)
    if rows.shape[0] == 0:
        return []
    text = orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)
    # "[[a,b],[c,d]]": rows hold no brackets of their own, so "],[" separates them.
    return [msgspec.Raw(b"[" + row + b"]") for row in text[2:-2].split(b"],[")]


def vector_matrix(vectors: np.ndarray) -> msgspec.Raw:
    """A float matrix (or vector) as one JSON array of arrays, as :func:`vector_rows` writes
    each row."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    return msgspec.Raw(orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY))


def _ms(seconds: float) -> bytes:
    return b"%.3f" % (seconds * 1000)


_JSON = (b"content-type", b"application/json")


def timing_headers(timings: Timings, tokens: int) -> list[tuple[bytes, bytes]]:
    """TEI's per-request headers, in milliseconds."""
    total = _ms(timings.total_s)
    return [
        (b"x-compute-time", total),
        (b"x-compute-tokens", b"%d" % tokens),
        (b"x-tokenization-time", _ms(timings.tokenize_s)),
        (b"x-queue-time", _ms(timings.queue_s)),
        (b"x-inference-time", _ms(timings.inference_s)),
        (b"x-total-time", total),
    ]


class JsonAnswer:
    """A 200 answer with a JSON body, sent as it is.

    A handler that returns an ASGI app is answered by that app: Litestar's ``Response`` would
    build header objects (lower-casing and checking every name) for headers that are already
    plain bytes here.
    """

    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = self.headers
        headers.append(_JSON)
        headers.append((b"content-length", b"%d" % len(self.body)))
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": headers,
        }
        await send(start)
        body: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": self.body,
            "more_body": False,
        }
        await send(body)


# -- the route -------------------------------------------------------------------------------


def inference_route(
    paths: str | Sequence[str],
    *,
    body: type[B],
    translation: Translation[B],
    dialect: Dialect,
    summary: str,
    description: str | None = None,
    answers: Any = None,
    statuses: Sequence[int] = (),
    **options: Any,
) -> HTTPRouteHandler:
    """A POST route whose body is ``body`` and whose work is ``translation``'s request.

    ``answers`` is the answer's type, for the OpenAPI schema only; ``statuses`` the error
    statuses it documents (default: all of them).
    """
    decoder = msgspec.json.Decoder(body)
    to_request, to_answer = translation.to_request, translation.to_answer
    invalid_body = translation.invalid_body

    async def handler(request: AnyRequest) -> ASGIApp:
        body = await read_body(request)
        try:
            data = decode(request, body, decoder)
        except ValidationException:
            if invalid_body is not None and (decided := invalid_body(body)) is not None:
                request.state[DIALECT_STATE_KEY] = decided
            raise
        inference = provide_inference(request.app.state)
        core_request = to_request(data, Call(inference, request))
        model = inference.model(core_request)
        request.scope["state"][MODEL_STATE_KEY] = model.name
        result = await inference.run(model, core_request)
        answer = _ENCODER.encode(to_answer(result, data))
        if isinstance(result, Tokens):
            return JsonAnswer(answer, [])
        return JsonAnswer(answer, timing_headers(result.timings, result.tokens))

    handler.__name__ = handler.__qualname__ = _handler_name(paths)
    opt = {BODY_OPT: body, ANSWER_OPT: answers, FIELD_NAMES_OPT: dict(translation.field_names)}
    return post(
        paths,
        status_code=200,
        summary=summary,
        description=description,
        responses=error_responses(dialect, *statuses),
        opt=opt,
        include_in_schema=True,
        **options,
    )(handler)


def _handler_name(paths: str | Sequence[str]) -> str:
    first = paths if isinstance(paths, str) else paths[0]
    return "post_" + ("".join(c if c.isalnum() else "_" for c in first).strip("_") or "root")
