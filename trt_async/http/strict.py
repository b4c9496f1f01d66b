"""Request bodies checked strictly before a management handler runs.

The inference routes decode their bodies themselves, strictly and once
(:mod:`trt_async.http.routes`); the management routes take Litestar's ``data``. Litestar
converts a handler's ``data`` with msgspec in lax mode (its query and path
parameters arrive as strings), which would accept ``"dimensions": "64"``, ``"top_n": 1.0``
or a token id ``1e2``. The body's JSON has real types, so it is checked here against the
handler's body type with ``strict=True`` first; a body that passes converts the same way in
Litestar. Empty and compressed bodies are answered with what to fix.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from litestar.exceptions import HTTPException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.status_codes import HTTP_415_UNSUPPORTED_MEDIA_TYPE

from trt_async.http.common import AnyRequest
from trt_async.http.errors import UndecodableBody


@cache
def _body_type(handler: BaseRouteHandler) -> Any:
    """The msgspec Struct a handler takes as ``data``, or None."""
    parameter = handler.parsed_fn_signature.parameters.get("data")
    if parameter is None:
        return None
    annotation = parameter.annotation
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def _field(error: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.top_n`" as ("top_n", "Expected ..."),
    and "Object missing required field `input`" as ("input", "Object missing ...")."""
    what, sep, where = str(error).rpartition(" - at `")
    if not sep:
        what = str(error)
        return what.partition("`")[2].partition("`")[0], what
    return where.rstrip("`").removeprefix("$").lstrip("."), what


async def decode_body(request: AnyRequest) -> None:
    """Decode the body as the handler's argument parsing will (the result is cached on the
    request), so that a body that is not JSON is reported as such before its types are
    checked, and the two failures Litestar's decoder lets through as non-HTTP errors —
    nesting deeper than it recurses, bytes that are not UTF-8 — are known to come from the
    body."""
    try:
        await request.json()
    except RecursionError:
        raise UndecodableBody("it is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise UndecodableBody(f"it is not UTF-8 ({exc.reason} at byte {exc.start})") from None


async def strict_body(request: AnyRequest) -> None:
    """Litestar ``before_request`` hook: refuse a body that is not JSON, or whose JSON types
    are not the schema's."""
    target = _body_type(request.route_handler)
    if target is None:
        return None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPException(
            f"Content-Encoding {encoding!r} is not supported; send the JSON body uncompressed",
            status_code=HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )
    body = await request.body()
    if not body.strip():
        raise ValidationException(
            "invalid request: the body is empty; send a JSON object",
            extra=[{"key": None, "message": "the body is empty; send a JSON object"}],
        )
    await decode_body(request)
    try:
        msgspec.json.decode(body, type=target, strict=True)
    except msgspec.ValidationError as exc:
        key, message = _field(exc)
        raise ValidationException(
            f"invalid request: {key}: {message}",
            extra=[{"key": key or None, "message": message, "source": "body"}],
        ) from None
    except (msgspec.DecodeError, RecursionError):
        return None  # Litestar's decoder took it above: its parsing reports the rest
    return None
