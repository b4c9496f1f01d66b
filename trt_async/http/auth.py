"""Bearer API key: every route needs it when ``server.api_key`` is set, except the probes
and the API docs (load balancers and humans reach those without a secret)."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

PUBLIC_OPT = "public"


def make_api_key_guard(api_key: str | None, public_prefixes: tuple[str, ...] = ()) -> list[Any]:
    """Guards for the app: none without a key."""
    if not api_key:
        return []
    expected = api_key.encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if handler.opt.get(PUBLIC_OPT) or connection.scope["path"].startswith(public_prefixes):
            return
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise NotAuthorizedException(
                "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
            )

    return [guard]
