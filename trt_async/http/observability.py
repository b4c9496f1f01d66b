"""Per-request plumbing: request ids, access logs, Prometheus metrics, client disconnects.

A client that goes away while its request waits must not cost a batch slot, and neither
granian nor Litestar cancels a handler on disconnect. So once the body has been read, a
watcher waits on ``receive()`` (which then only yields ``http.disconnect``) and cancels the
handler's task; the scheduler removes that request's queued items as the cancellation
passes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import queue
import sys
import time
import uuid
from typing import Any, TextIO

from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.status_codes import HTTP_408_REQUEST_TIMEOUT
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from trt_async.core.metrics import Metrics
from trt_async.http.auth import PUBLIC_OPT

access_log = logging.getLogger("trt_async.access")

REQUEST_ID_HEADER = "x-request-id"
METRICS_STATE_KEY = "metrics"
MODEL_STATE_KEY = "model"
#: nginx's status for "client closed the request", used in logs and metrics only.
CLIENT_CLOSED = 499


class BodyEndedEarly(ClientException):
    """The body stopped before its announced end: the client hung up, or its chunked
    encoding is malformed (granian reports both as a disconnect). Logged as 499."""


class RequestContextMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: Metrics, body_timeout_s: float = 30.0) -> None:
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        # Echo a caller's id when it looks sane (printable ASCII: a header value echoed as
        # latin-1 would turn other text into mojibake), so logs can be joined across services.
        sane = 0 < len(incoming) <= 128 and incoming.isascii() and incoming.isprintable()
        request_id = incoming if sane else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        body_read = asyncio.Event()
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.body_timeout_s
        hung_up = False
        task = asyncio.current_task()

        async def receive_wrapper() -> ReceiveMessage:
            nonlocal hung_up
            if body_read.is_set():
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    f"the request body did not arrive within {self.body_timeout_s:g} s "
                    "(server.body_timeout_s)",
                    status_code=HTTP_408_REQUEST_TIMEOUT,
                    headers={"connection": "close"},
                ) from None
            if message["type"] == "http.disconnect":
                hung_up = True
                raise BodyEndedEarly(
                    "the request body ended before its announced length: the connection "
                    "closed or the chunked encoding is malformed"
                )
            if not message.get("more_body", False):
                body_read.set()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        async def watch_disconnect() -> None:
            nonlocal hung_up
            await body_read.wait()
            message = await receive()
            if message["type"] == "http.disconnect" and task is not None:
                hung_up = True
                task.cancel()

        # Only requests with a body queue work; probes and listings answer at once.
        watched = task is not None and scope.get("method") == "POST"
        watcher = asyncio.ensure_future(watch_disconnect()) if watched else None
        try:
            await next_app(scope, receive_wrapper, send_wrapper)
        except asyncio.CancelledError:
            if not hung_up or task is None:
                raise
            task.uncancel()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if hung_up:
                # Whatever was answered (if anything) reached nobody: not a server error.
                status = CLIENT_CLOSED
            seconds = time.perf_counter() - start
            route = str(scope.get("path_template") or scope["path"])
            model = str(state.get(MODEL_STATE_KEY, ""))
            self.metrics.observe_request(route, model, status, seconds)
            access_log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope.get("method", ""),
                    "path": scope["path"],
                    "route": route,
                    "model": model,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )


@get(
    "/metrics",
    opt={PUBLIC_OPT: True},
    sync_to_thread=False,
    tags=["probes"],
    summary="Prometheus metrics (OpenMetrics when the Accept header asks for it)",
    description=(
        "Requests, queue, batch and time-split histograms per model. The format follows "
        "the `Accept` header: `application/openmetrics-text` gets OpenMetrics 1.0, anything "
        "else the Prometheus text format 0.0.4. Never needs the API key."
    ),
    media_type="text/plain",
    response_description="The metrics in the negotiated text format",
)
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[str]:
    metrics: Metrics = request.app.state[METRICS_STATE_KEY]
    body, content_type = metrics.negotiate(request.headers.get("accept"))
    if content_type.startswith("text/"):
        # Litestar appends "; charset=utf-8" to every text/ type itself.
        content_type = content_type.replace("; charset=utf-8", "")
    return Response(body.decode(), media_type=content_type)


_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def escape(value: object) -> str:
    """``value`` as text with every non-printable character escaped (``\\r``, ``\\x1b``, ...),
    so a client cannot forge log lines or send terminal escapes through a logged field."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class KeyValueFormatter(logging.Formatter):
    """``ts level logger message key=value ...``: greppable, one line per event."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={escape(v)}" for k, v in record.__dict__.items() if k not in _RESERVED
        )
        message = escape(record.getMessage())
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        # ASCII only: JSON escapes every control character then, C1 controls included.
        return json.dumps(data, default=str, ensure_ascii=True)


#: Log records waiting for the writer thread; past this many, new ones are dropped and
#: counted, so that a log reader that stalls neither blocks the event loop nor fills memory.
LOG_QUEUE_RECORDS = 10_000


class _Enqueue(logging.handlers.QueueHandler):
    """Hands each record to the writer thread as it is: formatting happens there."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The stdlib formats here, for queues that pickle; this one stays in the process.
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(logging.handlers.QueueListener):
    """Formats and writes records on its own thread, and says how many were dropped."""

    def __init__(self, records: queue.Queue[Any], handler: logging.Handler, source: _Enqueue):
        super().__init__(records, handler)
        self._records = records
        self._source = source
        self._reported = 0

    def handle(self, record: logging.LogRecord) -> None:
        self._report_drops()
        super().handle(record)

    def stop(self) -> None:
        super().stop()
        self._report_drops()

    def _report_drops(self) -> None:
        dropped = self._source.dropped
        if dropped == self._reported:
            return
        note = logging.makeLogRecord(
            {
                "name": "trt_async",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "%d log records dropped: the log output did not keep up",
                "args": (dropped - self._reported,),
            }
        )
        self._reported = dropped
        super().handle(note)

    def enqueue_sentinel(self) -> None:
        # QueueListener's stop sentinel is None; waiting for room, so a full queue cannot
        # lose the stop (the stdlib's put_nowait would raise).
        self._records.put(None)


_writer: _Writer | None = None


def configure_logging(
    log_format: str, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Route ``trt_async`` logs through one handler in the configured format, written by a
    thread of its own: a write to a slow or blocked stderr (a full pipe, a stalled log
    shipper) then never holds up the event loop."""
    global _writer
    stop_log_writer()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    records: queue.Queue[Any] = queue.Queue(LOG_QUEUE_RECORDS)
    enqueue = _Enqueue(records)
    _writer = _Writer(records, handler, enqueue)
    _writer.start()
    logger = logging.getLogger("trt_async")
    logger.handlers = [enqueue]
    logger.setLevel(level)
    logger.propagate = False


def stop_log_writer() -> None:
    """Write what is queued, stop the writer thread, and write directly from then on (the
    server's last lines, after its event loop has stopped serving)."""
    global _writer
    if _writer is None:
        return
    writer, _writer = _writer, None
    writer.stop()
    logging.getLogger("trt_async").handlers = list(writer.handlers)
