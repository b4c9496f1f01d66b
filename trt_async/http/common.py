"""What every dialect's controller shares: the registry, limits, model choice, headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from litestar import Request
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from msgspec import Meta

from trt_async.core.config import ModelKind, ServerConfig
from trt_async.core.errors import ModelNotFound, TooManyInputs, Unavailable, WrongModelKind
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel, Timings
from trt_async.http.errors import DIALECT_STATE_KEY, ERROR_MODELS, Dialect
from trt_async.http.observability import MODEL_STATE_KEY

REGISTRY_KEY = "registry"
AnyRequest = Request[Any, Any, State]
T = TypeVar("T")
#: TEI's ``truncation_direction`` values (either case).
DirectionName = Literal["left", "right", "Left", "Right"]
#: A JSON request body decoded into ``T`` (Litestar's explicit body marker).
JsonBody: TypeAlias = Annotated[T, Body(media_type=RequestEncodingType.JSON)]
#: The ``truncate`` field every inference request takes.
Truncate: TypeAlias = Annotated[
    bool | None,
    Meta(
        description="Truncate over-long inputs instead of refusing them (default: the "
        "model's `truncate` setting)."
    ),
]


def get_registry(request: AnyRequest) -> ModelRegistry:
    registry: ModelRegistry | None = request.app.state.get(REGISTRY_KEY)
    if registry is None:
        raise Unavailable("the server is starting; no model is loaded yet")
    return registry


def get_model(request: AnyRequest, name: str) -> ServedModel:
    """Look a model up, and note its name for the access log and metrics."""
    model = get_registry(request).get(name)
    request.scope.setdefault("state", {})[MODEL_STATE_KEY] = model.name
    return model


def server_config(request: AnyRequest) -> ServerConfig:
    return get_registry(request).config.server


def check_batch(request: AnyRequest, count: int, param: str = "input") -> None:
    limit = server_config(request).max_client_batch_size
    if count > limit:
        raise TooManyInputs(count, limit, param=param)


def set_dialect(request: AnyRequest, dialect: Dialect) -> None:
    """Record a dialect decided by the body, so errors raised later use its shape."""
    request.scope.setdefault("state", {})[DIALECT_STATE_KEY] = dialect


def pick_model(
    request: AnyRequest,
    name: str | None,
    kinds: Sequence[ModelKind],
    route: str,
) -> ServedModel:
    """The named model, or (for routes where ``model`` is optional) the first of a kind."""
    registry = get_registry(request)
    if name:
        return get_model(request, name)
    for kind in kinds:
        names = registry.names_by_kind()[kind]
        if names:
            return get_model(request, names[0])
    wanted = " or ".join(k.value for k in kinds)
    raise ModelNotFound(f"<default {wanted} model for {route}>", (m.name for m in registry))


def require_kind(model: ServedModel, kinds: Sequence[ModelKind], hint: str) -> None:
    if model.kind not in kinds:
        raise WrongModelKind(model.name, model.kind.value, hint)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def timing_headers(timings: Timings, tokens: int) -> dict[str, str]:
    """TEI's per-request headers, in milliseconds."""
    return {
        "x-compute-time": _ms(timings.total_s),
        "x-compute-tokens": str(tokens),
        "x-tokenization-time": _ms(timings.tokenize_s),
        "x-queue-time": _ms(timings.queue_s),
        "x-inference-time": _ms(timings.inference_s),
        "x-total-time": _ms(timings.total_s),
    }


def elapsed_ms(timings: Timings) -> float:
    return round(timings.total_s * 1000, 3)


def error_responses(dialect: Dialect, *statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route answers, in its dialect's shape."""
    model = ERROR_MODELS[dialect]
    descriptions = {
        400: "Empty input or a wrong model kind",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large or too many inputs",
        422: "Schema violation or input too long",
        429: "Queue full; retry after the Retry-After header",
        424: "Backend failure (with an error id; TEI's status for it)",
        500: "Backend failure (with an error id)",
        503: "Model not ready",
    }
    codes = statuses or tuple(c for c in descriptions if c != 424)
    if dialect is Dialect.TEI:
        # TEI answers a backend failure with 424, and so do its routes here.
        codes = tuple(424 if c == 500 else c for c in codes)
    return {
        code: ResponseSpec(
            model, description=descriptions.get(code, "Error"), generate_examples=False
        )
        for code in codes
    }
