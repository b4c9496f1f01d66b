"""What every dialect's controller shares: the injected registry and models, limits, headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from msgspec import Meta

from trt_async.core.config import ModelKind, ServerConfig
from trt_async.core.errors import ModelNotFound, TooManyInputs, Unavailable, WrongModelKind
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel, Timings
from trt_async.http.errors import ERROR_MODELS, Dialect
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


def provide_registry(state: State) -> ModelRegistry:
    """The ``registry`` dependency: the one place that reads it from the app's state."""
    registry: RegistryDep | None = state.get(REGISTRY_KEY)
    if registry is None:
        raise Unavailable("the server is starting; no model is loaded yet")
    return registry


class Models:
    """The served models as one request sees them (the ``models`` dependency).

    Look-ups note the model's name for the access log and metrics.
    """

    __slots__ = ("_request", "registry")

    def __init__(self, registry: ModelRegistry, request: AnyRequest) -> None:
        self.registry = registry
        self._request = request

    @property
    def server(self) -> ServerConfig:
        return self.registry.config.server

    def get(self, name: str) -> ServedModel:
        model = self.registry.get(name)
        self._request.scope.setdefault("state", {})[MODEL_STATE_KEY] = model.name
        return model

    def pick(self, name: str | None, kinds: Sequence[ModelKind], route: str) -> ServedModel:
        """The named model, or (for routes where ``model`` is optional) the first of a kind."""
        if name:
            return self.get(name)
        for kind in kinds:
            names = self.registry.names_by_kind()[kind]
            if names:
                return self.get(names[0])
        wanted = " or ".join(k.value for k in kinds)
        raise ModelNotFound(
            f"<default {wanted} model for {route}>", (m.name for m in self.registry)
        )

    def check_batch(self, count: int, field: str = "input") -> None:
        limit = self.server.max_client_batch_size
        if count > limit:
            raise TooManyInputs(count, limit, field=field)


def provide_models(request: AnyRequest, registry: RegistryDep) -> Models:
    return Models(registry, request)


#: Handler parameters filled by the app's dependencies of those names.
RegistryDep: TypeAlias = NamedDependency[ModelRegistry]
ModelsDep: TypeAlias = NamedDependency[Models]

#: The app's dependencies: every handler may ask for ``registry`` or ``models``.
DEPENDENCIES = {
    "registry": Provide(provide_registry, sync_to_thread=False),
    "models": Provide(provide_models, sync_to_thread=False),
}


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
