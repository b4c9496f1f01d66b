"""Bearer API keys.

The inference key (``server.api_key``): every route needs it when it is set, except the
probes and the API docs (load balancers and humans reach those without a secret).

The admin key (``server.admin_api_key``): loading and unloading models needs it, and it is
the only key those routes take. Without one, management is off: a default server cannot be
emptied by whoever reaches its port.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from trt_async.core.errors import Forbidden

PUBLIC_OPT = "public"
#: Routes that change which models are served; they take the admin key.
ADMIN_OPT = "admin"


def _bearer_matches(connection: ASGIConnection[Any, Any, Any, Any], expected: bytes) -> bool:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)


def make_api_key_guard(
    api_key: str | None,
    public_prefixes: tuple[str, ...] = (),
    *,
    admin_api_key: str | None = None,
) -> list[Any]:
    """The app-wide guards: the inference key check, none without a key.

    Guards are coroutines because Litestar runs a plain-function guard in a worker thread:
    two thread hops on every request for a header comparison. And there are as few as can
    be: Litestar copies the route handler for every guard call of every request."""
    guards: list[Any] = []
    if api_key:
        expected = api_key.encode()

        async def guard(
            connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
        ) -> None:
            if handler.opt.get(PUBLIC_OPT) or connection.scope["path"].startswith(public_prefixes):
                return
            if admin_api_key and handler.opt.get(ADMIN_OPT):
                return  # the admin guard checks its own key
            if not _bearer_matches(connection, expected):
                raise NotAuthorizedException(
                    "missing or wrong API key; send the header 'Authorization: Bearer <key>'"
                )

        guards.append(guard)
    return guards


def make_admin_guard(admin_api_key: str | None) -> Any:
    """The guard of the management routes alone (see :data:`ADMIN_OPT`)."""
    admin = admin_api_key.encode() if admin_api_key else None

    async def admin_guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        if not handler.opt.get(ADMIN_OPT):
            return
        if admin is None:
            raise Forbidden(
                "model management is disabled; set server.admin_api_key (or "
                "TRT_ASYNC_ADMIN_API_KEY) to load and unload models with that key"
            )
        if not _bearer_matches(connection, admin):
            raise NotAuthorizedException(
                "missing or wrong admin key; send the header 'Authorization: Bearer "
                "<server.admin_api_key>'"
            )

    return admin_guard
