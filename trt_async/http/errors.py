"""Every error's status and body, per API dialect: one table, handlers per controller.

Core errors (:class:`~trt_async.core.errors.ServingError`) carry meaning only; the table
:data:`CORE_ERRORS` gives each its status, TEI ``error_type`` and OpenAI-style ``code``.
Litestar's own exceptions (schema violations, body too large, missing key) and anything
unexpected are classified beside it. The status is the same in every dialect; only the body
differs: OpenAI's ``{"error": {...}}`` (with ``detail`` on rerank routes), TEI's
``{"error", "error_type"}``, Cohere's ``{"message"}``, or ``{"detail"}`` (the seed's FastAPI
shape). Each dialect's controller installs :func:`dialect_handlers`
for its own dialect; a route whose dialect its body decides (``/rerank``: Cohere's, or TEI's
with ``texts``) records the dialect in the request's state once it knows it
(:data:`DIALECT_STATE_KEY`), and routes may name parts of a request their own way
(:data:`FIELD_NAMES_OPT`). A request that matches no route has no controller:
:func:`routing_error_handlers` answers it in the dialect of the route at that path (405)
or of the versioned OpenAI-style namespace it is under (404), else ``{"detail"}``.
"""

from __future__ import annotations

import enum
import logging
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import ExceptionHandler, ExceptionHandlersMap

from trt_async.core.errors import (
    BackendFailure,
    Conflict,
    DimensionsOutOfRange,
    EmptyInput,
    Forbidden,
    ForeignTokenIds,
    ImageFetchFailed,
    ImageTooLarge,
    ImageUrlRefused,
    InputTooLong,
    InvalidImage,
    InvalidInput,
    InvalidPath,
    InvalidTemplate,
    MissingHead,
    MixedInputs,
    ModelNotFound,
    OverCapacity,
    Overloaded,
    Part,
    ServingError,
    TooManyInputs,
    Unavailable,
    WrongModelKind,
)

log = logging.getLogger(__name__)


class Dialect(str, enum.Enum):
    OPENAI = "openai"
    #: Cohere / Jina / Voyage rerank: OpenAI's envelope plus FastAPI's ``detail``.
    RERANK = "rerank"
    TEI = "tei"
    DETAIL = "detail"
    COHERE = "cohere"


#: What each dialect calls the parts of a request, in ``param`` and in messages. A part
#: not listed keeps the core's own name; the seed's routes and the management API
#: (``{"detail"}``) take several shapes, so they keep the core's names throughout.
FIELD_NAMES: Mapping[Dialect, Mapping[Part, str]] = {
    Dialect.OPENAI: {
        Part.INPUTS: "input",
        Part.LABELS: "candidate_labels",
        Part.TEMPLATE: "hypothesis_template",
        # Extra body fields (the OpenAI SDK's ``extra_body``), named as TEI names them.
        Part.PROMPT_NAME: "prompt_name",
        Part.PROMPT: "prompt",
        Part.INSTRUCTION: "instruction",
    },
    Dialect.RERANK: {Part.INSTRUCTION: "instruction"},
    Dialect.TEI: {
        Part.INPUTS: "inputs",
        Part.DOCUMENTS: "texts",
        Part.PROMPT_NAME: "prompt_name",
        Part.PROMPT: "prompt",
        Part.INSTRUCTION: "instruction",
    },
    Dialect.COHERE: {
        Part.INPUTS: "texts",
        Part.DIMENSIONS: "output_dimension",
        Part.TRUNCATION: "truncate=END",
        # Cohere's requests choose a prompt only through their input_type.
        Part.PROMPT_NAME: "input_type",
        Part.PROMPT: "input_type",
    },
    Dialect.DETAIL: {
        Part.PROMPT_NAME: "prompt_name",
        Part.PROMPT: "prompt",
        Part.INSTRUCTION: "instruction",
    },
}


def field_namer(
    dialect: Dialect, route_names: Mapping[Part, str] | None = None
) -> Callable[[Part], str]:
    """How ``dialect`` names each part (a route's own names first): its own field name,
    else the core's."""
    names = {**FIELD_NAMES[dialect], **(route_names or {})}
    return lambda part: names.get(part, part.value)


#: Key in the request state where a route whose dialect its body decides records it.
DIALECT_STATE_KEY = "trt_async_dialect"
#: Route option: the names a route gives parts of a request where its dialect's differ.
FIELD_NAMES_OPT = "field_names"
#: Versioned namespaces of the OpenAI-style APIs (OpenAI, Cohere/Jina, zero-shot).
OPENAI_NAMESPACES = ("/v1/", "/v2/")


# -- wire shapes (also documented in the OpenAPI schema) -------------------------------------


class OpenAIErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(msgspec.Struct):
    """OpenAI's error envelope (``/v1/*``, ``/v2/*`` and Cohere-style ``/rerank``)."""

    error: OpenAIErrorBody


class RerankError(msgspec.Struct):
    """Rerank routes' errors: OpenAI's envelope, and the message again as ``detail``,
    which Jina's clients (llama-index ``JinaRerank``, LangChain) read."""

    error: OpenAIErrorBody
    detail: str


class TEIError(msgspec.Struct):
    """text-embeddings-inference's error shape (``/embed``, ``/predict``, ``/tokenize``, ...)."""

    error: str
    error_type: str


class CohereError(msgspec.Struct):
    """Cohere's error shape (``/v1/embed``, ``/v2/embed``)."""

    message: str


class DetailError(msgspec.Struct):
    """The seed's (FastAPI) error shape (``/models``, ``/infer/{model}``, management)."""

    detail: str


# -- classification -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorMapping:
    status: int
    #: TEI's error_type.
    kind: str
    #: The OpenAI-style ``code``.
    code: str


#: The one table from core errors to HTTP. A class not listed takes its nearest base's row.
CORE_ERRORS: Mapping[type[ServingError], ErrorMapping] = {
    ServingError: ErrorMapping(500, "Backend", "serving_error"),
    InvalidInput: ErrorMapping(422, "Validation", "invalid_input"),
    MixedInputs: ErrorMapping(422, "Validation", "invalid_input"),
    DimensionsOutOfRange: ErrorMapping(422, "Validation", "invalid_input"),
    InvalidTemplate: ErrorMapping(422, "Validation", "invalid_input"),
    EmptyInput: ErrorMapping(400, "Empty", "empty_input"),
    InputTooLong: ErrorMapping(422, "Validation", "input_too_long"),
    ForeignTokenIds: ErrorMapping(422, "Validation", "foreign_token_ids"),
    TooManyInputs: ErrorMapping(413, "Validation", "too_many_inputs"),
    OverCapacity: ErrorMapping(413, "Validation", "over_capacity"),
    WrongModelKind: ErrorMapping(400, "Validation", "wrong_model_kind"),
    MissingHead: ErrorMapping(400, "Validation", "missing_head"),
    InvalidPath: ErrorMapping(400, "Validation", "invalid_path"),
    Forbidden: ErrorMapping(403, "Validation", "forbidden"),
    Conflict: ErrorMapping(409, "Validation", "conflict"),
    ModelNotFound: ErrorMapping(404, "Validation", "model_not_found"),
    Overloaded: ErrorMapping(429, "Overloaded", "overloaded"),
    Unavailable: ErrorMapping(503, "Unhealthy", "unavailable"),
    BackendFailure: ErrorMapping(500, "Backend", "backend_error"),
    InvalidImage: ErrorMapping(422, "Validation", "invalid_image"),
    ImageTooLarge: ErrorMapping(413, "Validation", "image_too_large"),
    ImageUrlRefused: ErrorMapping(403, "Validation", "image_url_refused"),
    ImageFetchFailed: ErrorMapping(422, "Validation", "image_fetch_failed"),
}


def core_error_mapping(exc: ServingError) -> ErrorMapping:
    return next(CORE_ERRORS[c] for c in type(exc).__mro__ if c in CORE_ERRORS)


class UndecodableBody(Exception):
    """A JSON body that Litestar's decoder fails on with a non-HTTP error (see
    :func:`trt_async.http.strict.decode_body`); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    status: int
    message: str
    #: TEI's error_type.
    kind: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def _openai_type(status: int) -> str:
    if status in _OPENAI_TYPES:
        return _OPENAI_TYPES[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def _validation_message(exc: ValidationException) -> tuple[str, str | None]:
    """Litestar lists each failed field in ``extra``; name them so the client can fix them."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts: list[str] = []
    param: str | None = None
    for item in extra:
        if not isinstance(item, dict):
            continue
        key = item.get("key")
        message = str(item.get("message", "invalid value"))
        if key == "data":
            # Whole-body errors ("Object missing required field `input`") name the field.
            _, _, rest = message.partition("`")
            key = rest.partition("`")[0] or None
        if key and param is None:
            param = str(key)
        parts.append(f"{key}: {message}" if key else message)
    if not parts:
        return str(exc.detail), None
    return "invalid request: " + "; ".join(parts), param


def classify(
    exc: Exception,
    dialect: Dialect = Dialect.DETAIL,
    route_names: Mapping[Part, str] | None = None,
) -> ErrorInfo:
    """The status, message and TEI kind of any exception a request may raise; core errors
    name the parts of the request as ``dialect`` (and the route, ``route_names``) does."""
    if isinstance(exc, ServingError):
        headers: dict[str, str] = {}
        row = core_error_mapping(exc)
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        name = field_namer(dialect, route_names)
        param = exc.field or (name(exc.part) if exc.part is not None else None)
        message = exc.describe(name)
        return ErrorInfo(row.status, message, row.kind, param, row.code, headers)
    if isinstance(exc, ValidationException):
        cause = exc.__cause__
        if isinstance(cause, msgspec.DecodeError) and not isinstance(
            cause, msgspec.ValidationError
        ):
            return ErrorInfo(
                400, f"request body is not valid JSON: {cause}", "Validation", code="invalid_json"
            )
        message, param = _validation_message(exc)
        return ErrorInfo(422, message, "Validation", param, "invalid_request")
    if isinstance(exc, SerializationException) or (
        isinstance(exc, HTTPException)
        and (isinstance(exc.__cause__, SerializationException) or "malformed" in str(exc.detail))
    ):
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return ErrorInfo(
            400, f"request body is not valid JSON: {detail}", "Validation", code="invalid_json"
        )
    if isinstance(exc, UndecodableBody):
        return ErrorInfo(
            400, f"request body is not valid JSON: {exc.reason}", "Validation", code="invalid_json"
        )
    if isinstance(exc, NotAuthorizedException):
        return ErrorInfo(
            401,
            str(exc.detail),
            "Unauthorized",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if isinstance(exc, NotFoundException):
        return ErrorInfo(404, str(exc.detail), "NotFound", code="not_found")
    if isinstance(exc, MethodNotAllowedException):
        return ErrorInfo(405, str(exc.detail), "Validation", code="method_not_allowed")
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
            return ErrorInfo(
                413,
                "request body is larger than the server accepts (server.max_body_bytes)",
                "Validation",
                code="payload_too_large",
            )
        kind = "Validation" if status < 500 else "Backend"
        headers = {k: v for k, v in (exc.headers or {}).items()}
        return ErrorInfo(status, str(exc.detail), kind, headers=headers)
    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error (error id %s)", error_id, exc_info=exc)
    return ErrorInfo(
        500,
        f"internal error (error id {error_id}); the server logged the cause",
        "Backend",
        code="internal_error",
    )


# -- dialect --------------------------------------------------------------------------------


def error_body(info: ErrorInfo, dialect: Dialect) -> msgspec.Struct:
    if dialect in (Dialect.OPENAI, Dialect.RERANK):
        body = OpenAIErrorBody(info.message, _openai_type(info.status), info.param, info.code)
        return OpenAIError(body) if dialect is Dialect.OPENAI else RerankError(body, info.message)
    if dialect is Dialect.TEI:
        return TEIError(info.message, info.kind)
    if dialect is Dialect.COHERE:
        return CohereError(info.message)
    return DetailError(info.message)


def error_response(
    request: Request[Any, Any, Any], exc: Exception, dialect: Dialect
) -> Response[Any]:
    dialect = request.scope.get("state", {}).get(DIALECT_STATE_KEY, dialect)
    handler = request.scope.get("route_handler")
    route_names = handler.opt.get(FIELD_NAMES_OPT) if handler is not None else None
    info = classify(exc, dialect, route_names)
    if dialect is Dialect.TEI and info.kind == "Backend" and info.status == 500:
        # TEI answers backend failures with 424 (Failed Dependency); its clients expect that.
        info = replace(info, status=424)
    if isinstance(exc, NotFoundException | MethodNotAllowedException) and info.message in (
        "Not Found",
        "Method Not Allowed",
    ):
        what = "no route" if info.status == 404 else "method not allowed:"
        info = replace(info, message=f"{what} {request.method} {request.scope['path']}")
    return Response(
        error_body(info, dialect),
        status_code=info.status,
        headers=info.headers,
        media_type=MediaType.JSON,
    )


class DialectErrorHandler:
    """Answers any exception in one dialect's body shape (a Litestar exception handler)."""

    __slots__ = ("dialect",)

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def __call__(self, request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        return error_response(request, exc, self.dialect)


def _handlers(handler: ExceptionHandler[Exception]) -> ExceptionHandlersMap:
    # Exception covers HTTPException, ServingError and the unexpected alike; the app-level
    # keys for 404 and 405 are more specific, so they are overridden here too.
    return {Exception: handler, NotFoundException: handler, MethodNotAllowedException: handler}


def dialect_handlers(dialect: Dialect) -> ExceptionHandlersMap:
    """A controller's ``exception_handlers``: every error in ``dialect``'s shape."""
    return _handlers(DialectErrorHandler(dialect))


def routing_error_handlers(dialects: Mapping[str, Dialect]) -> ExceptionHandlersMap:
    """The app's handlers, for requests no route handler took (unknown path, wrong method):
    the dialect of the route at that path (from ``dialects``, path -> dialect), else of
    the OpenAI-style namespace the path is under, else ``{"detail"}``."""

    def handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        path: str = request.scope["path"]
        dialect = dialects.get(path)
        if dialect is None:
            dialect = Dialect.OPENAI if path.startswith(OPENAI_NAMESPACES) else Dialect.DETAIL
        return error_response(request, exc, dialect)

    return _handlers(handler)


def route_dialects(routes: Any) -> dict[str, Dialect]:
    """Path -> dialect of the routes' handlers, read from their exception handlers."""
    out: dict[str, Dialect] = {}
    for route in routes:
        for handler in getattr(route, "route_handlers", ()):
            found = handler.resolve_exception_handlers().get(Exception)
            if isinstance(found, DialectErrorHandler):
                out.setdefault(route.path, found.dialect)
    return out


#: Error responses documented for every inference route in the OpenAPI schema.
ERROR_MODELS: dict[Dialect, type[msgspec.Struct]] = {
    Dialect.OPENAI: OpenAIError,
    Dialect.RERANK: RerankError,
    Dialect.TEI: TEIError,
    Dialect.DETAIL: DetailError,
    Dialect.COHERE: CohereError,
}
