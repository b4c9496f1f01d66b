"""One mapping from every error to a status and the body shape of the client's dialect.

Core errors (:class:`~trt_async.core.errors.ServingError`), Litestar's own exceptions
(schema violations, body too large, unknown route, missing key) and anything unexpected
go through :func:`exception_handlers`. The status is the same in every dialect; only the
body differs: OpenAI's ``{"error": {...}}`` under ``/v1`` and ``/v2``, TEI's
``{"error", "error_type"}`` on TEI routes, ``{"detail"}`` (the seed's FastAPI shape)
elsewhere.
"""

from __future__ import annotations

import enum
import logging
import math
import uuid
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
from litestar.types import ExceptionHandlersMap

from trt_async.core.errors import BackendFailure, ModelNotFound, Overloaded, ServingError

log = logging.getLogger(__name__)


class Dialect(str, enum.Enum):
    OPENAI = "openai"
    #: Cohere / Jina / Voyage rerank: OpenAI's envelope plus FastAPI's ``detail``.
    RERANK = "rerank"
    TEI = "tei"
    DETAIL = "detail"
    COHERE = "cohere"


#: Key in the connection state where a handler records a dialect decided by the body.
DIALECT_STATE_KEY = "trt_async_dialect"
TEI_PATHS = frozenset(
    {"/embed", "/embed_sparse", "/embed_all", "/predict", "/tokenize", "/info", "/", "/invocations"}
)
#: Cohere's embed API answers errors as ``{"message"}``.
COHERE_PATHS = frozenset({"/v1/embed", "/v2/embed"})
RERANK_PATHS = frozenset({"/v1/rerank", "/v2/rerank"})


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


def classify(exc: Exception) -> ErrorInfo:
    """The status, message and TEI kind of any exception a request may raise."""
    if isinstance(exc, ServingError):
        headers: dict[str, str] = {}
        code = _code_of(exc)
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return ErrorInfo(exc.status, exc.message, exc.kind, exc.param, code, headers)
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
    if isinstance(exc, RecursionError | UnicodeDecodeError) and _raised_decoding_body(exc):
        # Litestar's JSON decoding lets these two through: bodies nested deeper than the
        # decoder recurses, and bytes that are not UTF-8.
        reason = (
            "it is nested too deeply"
            if isinstance(exc, RecursionError)
            else f"it is not UTF-8 ({exc.reason} at byte {exc.start})"
        )
        return ErrorInfo(
            400, f"request body is not valid JSON: {reason}", "Validation", code="invalid_json"
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


def _raised_decoding_body(exc: BaseException) -> bool:
    """Whether ``exc`` came out of Litestar's JSON body decoding (not from the app's code)."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "decode_json" and "litestar" in code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _code_of(exc: ServingError) -> str:
    if isinstance(exc, ModelNotFound):
        return "model_not_found"
    if isinstance(exc, BackendFailure):
        return "backend_error"
    # CamelCase class name to snake_case: InputTooLong -> input_too_long.
    name = type(exc).__name__
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# -- dialect --------------------------------------------------------------------------------


def dialect_of(request: Request[Any, Any, Any]) -> Dialect:
    """The dialect the client spoke: recorded by a handler, else decided by the path."""
    state = request.scope.get("state") or {}
    recorded = state.get(DIALECT_STATE_KEY)
    if isinstance(recorded, Dialect):
        return recorded
    path = request.scope.get("path", "/")
    if path in COHERE_PATHS:
        return Dialect.COHERE
    if path in RERANK_PATHS:
        return Dialect.RERANK
    if path.startswith(("/v1/", "/v2/")):
        return Dialect.OPENAI
    if path in TEI_PATHS:
        return Dialect.TEI
    if path == "/rerank":
        return Dialect.TEI if _is_tei_rerank(request) else Dialect.RERANK
    return Dialect.DETAIL


def _is_tei_rerank(request: Request[Any, Any, Any]) -> bool:
    """A ``/rerank`` body that failed validation: TEI's dialect sends ``texts``.

    The decoded JSON is cached on the connection by the time validation fails.
    """
    cached = getattr(getattr(request, "_connection_state", None), "json", None)
    return isinstance(cached, dict) and "texts" in cached and "documents" not in cached


def error_body(info: ErrorInfo, dialect: Dialect) -> msgspec.Struct:
    if dialect in (Dialect.OPENAI, Dialect.RERANK):
        body = OpenAIErrorBody(info.message, _openai_type(info.status), info.param, info.code)
        return OpenAIError(body) if dialect is Dialect.OPENAI else RerankError(body, info.message)
    if dialect is Dialect.TEI:
        return TEIError(info.message, info.kind)
    if dialect is Dialect.COHERE:
        return CohereError(info.message)
    return DetailError(info.message)


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    info = classify(exc)
    dialect = dialect_of(request)
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


def exception_handlers() -> ExceptionHandlersMap:
    # Exception covers HTTPException, ServingError and the unexpected alike; 404/405 for
    # unknown routes are raised before any handler and need their own keys.
    return {
        Exception: error_response,
        NotFoundException: error_response,
        MethodNotAllowedException: error_response,
    }


#: Error responses documented for every inference route in the OpenAPI schema.
ERROR_MODELS: dict[Dialect, type[msgspec.Struct]] = {
    Dialect.OPENAI: OpenAIError,
    Dialect.RERANK: RerankError,
    Dialect.TEI: TEIError,
    Dialect.DETAIL: DetailError,
    Dialect.COHERE: CohereError,
}
