"""What every dialect's routes share: the injected registry and inference entry, field types."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body
from msgspec import Meta

from trt_async.core.errors import Unavailable
from trt_async.core.inference import Inference
from trt_async.core.registry import ModelRegistry
from trt_async.core.requests import Timings
from trt_async.http.errors import ERROR_MODELS, Dialect

REGISTRY_KEY = "registry"
INFERENCE_KEY = "inference"
AnyRequest = Request[Any, Any, State]
T = TypeVar("T")
#: A JSON request body decoded into ``T`` by Litestar (the management routes'; inference
#: routes decode their own, see :mod:`trt_async.http.routes`).
JsonBody: TypeAlias = Annotated[T, Body(media_type=RequestEncodingType.JSON)]
#: TEI's ``truncation_direction`` values (either case).
DirectionName = Literal["left", "right", "Left", "Right"]
#: The ``truncate`` field every inference request takes.
Truncate: TypeAlias = Annotated[
    bool | None,
    Meta(
        description="Truncate over-long inputs instead of refusing them (default: the "
        "model's `truncate` setting)."
    ),
]

#: An embedding request's prompt, by name or as text (TEI's ``prompt_name``, and ``prompt``).
PromptName: TypeAlias = Annotated[
    str | None,
    Meta(
        description="One of the model's prompts, put before each text (sentence-transformers' "
        "`prompt_name`; `GET /info?model=...` lists them). Default: the model's default "
        "prompt, if it has one. Refused for a model without prompts."
    ),
]
PromptText: TypeAlias = Annotated[
    str | None,
    Meta(
        description="A prompt's own text, put before each text instead of a named prompt "
        "(for models with prompts). Truncation keeps it and cuts the text."
    ),
]
#: An LLM reranker's instruction for one request.
Instruction: TypeAlias = Annotated[
    str | None,
    Meta(
        description="LLM rerankers (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2): "
        "the instruction the pairs are read with (default: the model's). Refused for other "
        "models."
    ),
]


def direction(value: DirectionName) -> Literal["left", "right"]:
    return "left" if value.lower() == "left" else "right"


def provide_registry(state: State) -> ModelRegistry:
    """The ``registry`` dependency: the one place that reads it from the app's state."""
    registry: ModelRegistry | None = state.get(REGISTRY_KEY)
    if registry is None:
        raise Unavailable("the server is starting; no model is loaded yet")
    return registry


def provide_inference(state: State) -> Inference:
    """The core's entry for the served models (see :mod:`trt_async.http.routes`)."""
    inference: Inference | None = state.get(INFERENCE_KEY)
    if inference is None:
        raise Unavailable("the server is starting; no model is loaded yet")
    return inference


#: Handler parameters filled by the app's dependencies of those names.
RegistryDep: TypeAlias = NamedDependency[ModelRegistry]

#: The app's dependencies: every handler may ask for ``registry``.
DEPENDENCIES = {"registry": Provide(provide_registry, sync_to_thread=False)}


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
