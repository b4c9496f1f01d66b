"""Per-request plumbing: request ids, access logs, Prometheus metrics, client disconnects.

A client that goes away while its request waits must not cost a batch slot, and neither
granian nor Litestar cancels a handler on disconnect. So once the body has been read and the
request is still running :data:`WATCH_DISCONNECT_AFTER_S` later, the next ``receive()``
(which then only yields ``http.disconnect``) cancels the handler's task when it completes;
the scheduler removes that request's queued items as the cancellation passes through it.

Log records are formatted and written by a thread of their own, in batches: the event loop
only appends a record to a queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, TextIO

import msgspec
from litestar import Request, Response, get
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, HTTPException
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
#: How long after its body arrived a request still running starts watching for its client's
#: disconnect. Watching costs granian a future on its I/O thread and a wakeup there for every
#: request (its I/O thread's context switches fell from 2.2 to 1.5 a request without it on
#: the near-instant model at 64 connections; hand-run rounds put the server's CPU a request at
#: 0.82-0.96x, which the overhead harness did not resolve from its noise); a request answered
#: sooner would have had its work done by the time a disconnect was seen anyway, and one that
#: waits in a queue under load is still dropped from it, this much later.
WATCH_DISCONNECT_AFTER_S = 0.05


class BodyEndedEarly(ClientException):
    """The body stopped before its announced end: the client hung up, or its chunked
    encoding is malformed (granian reports both as a disconnect). Logged as 499."""


class RequestIds:
    """Request ids: 32 hex digits, a random half per process and a counter.

    ``uuid4`` reads the OS's random source on every call (a system call on the event loop
    for every request); ids need to be unique, not unpredictable. The random half is drawn
    when the app is built, in the worker process, so workers forked from one parent differ.
    """

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()


class RequestContextMiddleware:
    """A plain ASGI middleware around every route: request id, body deadline, disconnect
    watch, then one metrics observation and one access-log line per request.

    Written against the ASGI interface rather than Litestar's middleware base class: it runs
    for every request, so it keeps to one timer, no task and no event per request.
    """

    __slots__ = ("_deadlines", "_ids", "_watches", "app", "body_timeout_s", "metrics")

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        body_timeout_s: float = 30.0,
        watch_after_s: float = WATCH_DISCONNECT_AFTER_S,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self._deadlines = DelayedCalls(body_timeout_s, _Exchange.body_late)
        self._watches = DelayedCalls(watch_after_s, _Exchange.watch_disconnect)
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = ""
        for key, value in scope["headers"]:
            if key == _REQUEST_ID_KEY:
                incoming = value.decode("latin-1")
                break
        # Echo a caller's id when it looks sane (printable ASCII: a header value echoed as
        # latin-1 would turn other text into mojibake), so logs can be joined across services.
        sane = 0 < len(incoming) <= 128 and incoming.isascii() and incoming.isprintable()
        request_id = incoming if sane else self._ids()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        exchange = _Exchange(
            receive,
            send,
            request_id,
            asyncio.current_task(),
            self._watches if scope.get("method") == "POST" else None,
        )
        if exchange.task is not None:
            exchange.arm_body_deadline(self._deadlines)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except asyncio.CancelledError:
            if not exchange.hung_up or exchange.task is None:
                raise
            exchange.task.uncancel()
        finally:
            exchange.close()
            status = CLIENT_CLOSED if exchange.hung_up else exchange.status
            seconds = time.perf_counter() - start
            route = str(scope.get("path_template") or scope["path"])
            model = str(state.get(MODEL_STATE_KEY, ""))
            self.metrics.observe_request(route, model, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                log_request(
                    request_id,
                    str(scope.get("method", "")),
                    scope["path"],
                    route,
                    model,
                    status,
                    seconds,
                    (scope.get("client") or ("", 0))[0],
                )


class DelayedCalls:
    """One call on each of many exchanges, ``delay_s`` after it was added (unless it was
    removed first), with one timer.

    Every exchange waits as long, so calls fall due in the order they were added and the
    timer is armed for the oldest only: a timer per request cost the loop a timer's start
    and cancel for every request. The body deadlines and the disconnect watches use it.
    """

    __slots__ = ("_call", "_timer", "_waiting", "delay_s")

    def __init__(self, delay_s: float, call: Callable[[_Exchange], None]) -> None:
        self.delay_s = delay_s
        self._call = call
        self._waiting: dict[_Exchange, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: _Exchange) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.delay_s
        self._waiting[exchange] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire)

    def remove(self, exchange: _Exchange) -> None:
        self._waiting.pop(exchange, None)

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiting:
            exchange, due = next(iter(self._waiting.items()))
            if due > now:
                self._timer = loop.call_at(due, self._fire)
                return
            del self._waiting[exchange]
            self._call(exchange)


class _Exchange:
    """One request's receive and send, as the middleware wraps them.

    Until the body has arrived, ``receive`` runs under the body deadline (one timer for the
    whole body: when it fires, the task is cancelled and the waiting ``receive`` answers
    408). Once it has arrived, a POST's next ``receive()`` can only yield
    ``http.disconnect``: if the request still runs ``watches.delay_s`` later, that
    ``receive()`` is left pending with a callback that cancels the handler's task (granian
    hands back a future, so this costs no task; other servers' coroutines are wrapped in
    one). Neither granian nor Litestar cancels a handler on disconnect, and a client gone
    while its request waits must not cost a batch slot: the scheduler drops the request's
    queued items as the cancellation passes through it.
    """

    __slots__ = (
        "_deadlines",
        "_disconnect",
        "_late",
        "_receive",
        "_receiving",
        "_send",
        "_timed_out",
        "_watches",
        "body_read",
        "hung_up",
        "request_id",
        "status",
        "task",
        "timeout_s",
    )

    def __init__(
        self,
        receive: Receive,
        send: Send,
        request_id: str,
        task: asyncio.Task[Any] | None,
        watches: DelayedCalls | None,
    ) -> None:
        self._receive = receive
        self._send = send
        self.request_id = request_id
        self.task = task
        #: Where the exchange waits, once its body has arrived, to watch for a disconnect
        #: (None: not watched).
        self._watches = watches
        self.status = 500
        self.hung_up = False
        self.body_read = False
        self.timeout_s = 0.0
        self._timed_out = False
        self._late = False
        self._receiving = False
        self._deadlines: DelayedCalls | None = None
        self._disconnect: asyncio.Future[Any] | None = None

    def arm_body_deadline(self, deadlines: DelayedCalls) -> None:
        self.timeout_s = deadlines.delay_s
        self._deadlines = deadlines
        deadlines.add(self)

    def body_late(self) -> None:
        """The deadline passed: a ``receive`` waiting for the body answers 408 (one asked for
        later does too); a handler that never reads the body is left alone."""
        self._deadlines = None
        self._late = True
        if self._receiving and self.task is not None:
            self._timed_out = True
            self.task.cancel()

    def _too_late(self) -> HTTPException:
        return HTTPException(
            f"the request body did not arrive within {self.timeout_s:g} s (server.body_timeout_s)",
            status_code=HTTP_408_REQUEST_TIMEOUT,
            headers={"connection": "close"},
        )

    async def receive(self) -> ReceiveMessage:
        if self.body_read:
            return await self._receive()
        if self._late:
            raise self._too_late()
        self._receiving = True
        try:
            message = await self._receive()
        except asyncio.CancelledError:
            if not self._timed_out or self.task is None:
                raise
            self._timed_out = False
            self.task.uncancel()
            raise self._too_late() from None
        finally:
            self._receiving = False
        if message["type"] == "http.disconnect":
            self.hung_up = True
            self._stop_deadline()
            raise BodyEndedEarly(
                "the request body ended before its announced length: the connection "
                "closed or the chunked encoding is malformed"
            )
        if not message.get("more_body", False):
            self.body_read = True
            self._stop_deadline()
            if self._watches is not None:
                self._watches.add(self)
        return message

    def watch_disconnect(self) -> None:
        """Cancel the handler's task when the client disconnects (the body has arrived, so
        the next ``receive()`` yields only that)."""
        waiter = self._receive()
        future = waiter if asyncio.isfuture(waiter) else asyncio.ensure_future(waiter)
        future.add_done_callback(self._disconnected)
        self._disconnect = future

    def _disconnected(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        if future.result()["type"] == "http.disconnect" and self.task is not None:
            self.hung_up = True
            self.task.cancel()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [
                *message.get("headers", ()),
                (_REQUEST_ID_KEY, self.request_id.encode()),
            ]
        await self._send(message)

    def _stop_deadline(self) -> None:
        if self._deadlines is not None:
            self._deadlines.remove(self)
            self._deadlines = None

    def close(self) -> None:
        self._stop_deadline()
        if self._watches is not None:
            self._watches.remove(self)
            self._watches = None
        if self._disconnect is not None:
            self._disconnect.remove_done_callback(self._disconnected)
            self._disconnect.cancel()
            self._disconnect = None


class AccessEntry(NamedTuple):
    """One request's access-log fields, as the log writer takes them."""

    created: float
    request_id: str
    method: str
    path: str
    route: str
    model: str
    status: int
    duration_ms: float
    client: str

    def extras(self) -> dict[str, Any]:
        """The fields a log record carries (in the order the formatters write them)."""
        return {name: getattr(self, name) for name in ACCESS_FIELDS}


#: The access-log fields a record carries, in order.
ACCESS_FIELDS = AccessEntry._fields[1:]


def log_request(
    request_id: str,
    method: str,
    path: str,
    route: str,
    model: str,
    status: int,
    seconds: float,
    client: str,
) -> None:
    """The access-log line of one request, handed to the log writer.

    When the line can only reach the writer (the access logger has no handler or filter of
    its own), the fields go to it as they are and the writer thread builds the line: a log
    record costs the event loop more to make than the rest of a request's logging. Otherwise
    a record is made directly (``Logger.info`` would also walk the stack for the caller's
    file and line) and handled as any other.
    """
    entry = AccessEntry(
        time.time(),
        request_id,
        method,
        path,
        route,
        model,
        status,
        round(seconds * 1000, 3),
        client,
    )
    writer = _writer
    if writer is not None and writer.only_route_of(access_log):
        writer.put(entry)
        return
    record = access_log.makeRecord(
        access_log.name, logging.INFO, "", 0, "request", (), None, extra=entry.extras()
    )
    record.created = entry.created
    record.msecs = (entry.created - int(entry.created)) * 1000
    access_log.handle(record)


def access_record(entry: AccessEntry) -> logging.LogRecord:
    """The log record of an access entry (made in the writer thread)."""
    record = access_log.makeRecord(
        access_log.name, logging.INFO, "", 0, "request", (), None, extra=entry.extras()
    )
    record.created = entry.created
    record.msecs = (entry.created - int(entry.created)) * 1000
    return record


@get(
    "/metrics",
    opt={PUBLIC_OPT: True},
    sync_to_thread=False,
    tags=["probes"],
    summary="Prometheus metrics (OpenMetrics, or per-model JSON statistics, on request)",
    description=(
        "Requests, queue, batch and time-split histograms per model. The format follows "
        "the `Accept` header: `application/openmetrics-text` gets OpenMetrics 1.0, "
        "`application/json` each model's inference statistics in Triton's shape "
        '(`{"model_stats": [...]}`), anything else the Prometheus text format 0.0.4. Never '
        "needs the API key."
    ),
    media_type="text/plain",
    response_description="The metrics in the negotiated format",
)
def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
    metrics: Metrics = request.app.state[METRICS_STATE_KEY]
    accept = request.headers.get("accept")
    if accept is not None and wants_json(accept):
        return Response(msgspec.json.encode(metrics.statistics()), media_type="application/json")
    body, content_type = metrics.negotiate(accept)
    if content_type.startswith("text/"):
        # Litestar appends "; charset=utf-8" to every text/ type itself.
        content_type = content_type.replace("; charset=utf-8", "")
    return Response(body.decode(), media_type=content_type)


def wants_json(accept: str) -> bool:
    """Whether an ``Accept`` header lists ``application/json`` (with a q above 0)."""
    for item in accept.split(","):
        media, *params = item.split(";")
        if media.strip().lower() != "application/json":
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def escape(value: object) -> str:
    """``value`` as text with every non-printable character escaped (``\\r``, ``\\x1b``, ...),
    so a client cannot forge log lines or send terminal escapes through a logged field."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Stamp:
    """The two attributes of a record that ``formatTime`` reads."""

    __slots__ = ("created", "msecs")

    def __init__(self, created: float) -> None:
        self.created = created
        self.msecs = (created - int(created)) * 1000


class _CachedTime(logging.Formatter):
    """``formatTime`` with the date and time of day formatted once a second: the access log
    writes a line per request, and ``strftime`` was most of a line's cost."""

    _cached: tuple[int, str] = (-1, "")

    def formatTime(self, record: Any, datefmt: str | None = None) -> str:
        if datefmt is not None or self.datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached_second, stamp = self._cached
        if second != cached_second:
            stamp = time.strftime(self.default_time_format, self.converter(second))
            self._cached = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"


class KeyValueFormatter(_CachedTime):
    """``ts level logger message key=value ...``: greppable, one line per event."""

    def format_access(self, entry: AccessEntry) -> str:
        """What :meth:`format` writes for the entry's record, without making the record."""
        stamp = self.formatTime(_Stamp(entry.created))
        extras = " ".join(f"{k}={escape(v)}" for k, v in zip(ACCESS_FIELDS, entry[1:], strict=True))
        return f"{stamp} INFO {access_log.name}: request {extras}"

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


class JsonFormatter(_CachedTime):
    def format_access(self, entry: AccessEntry) -> str:
        """What :meth:`format` writes for the entry's record, without making the record."""
        data: dict[str, Any] = {
            "ts": self.formatTime(_Stamp(entry.created)),
            "level": "INFO",
            "logger": access_log.name,
            "message": "request",
        }
        data.update(zip(ACCESS_FIELDS, entry[1:], strict=True))
        return json.dumps(data, default=str, ensure_ascii=True)

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


#: Log records waiting for the writer thread (or held by it); past this many, new ones are
#: dropped and counted, so that a log reader that stalls neither blocks the event loop nor
#: fills memory.
LOG_QUEUE_RECORDS = 10_000
#: How often the writer looks for records: the loop never wakes it, so a record costs the
#: loop one append, and lines reach the output at most this late.
LOG_WRITE_INTERVAL_S = 0.05
#: Records formatted and written with one ``write``.
LOG_WRITE_BATCH = 256


class _Enqueue(logging.Handler):
    """Hands each record to the writer thread as it is: formatting happens there."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self.writer = writer
        writer.enqueue = self

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the append is atomic, and the writer counts what it drops.
        self.writer.put(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.writer.put(record)


class _Writer:
    """Formats and writes records on a thread of its own, a batch at a time, and says how
    many were dropped."""

    def __init__(self, handler: logging.StreamHandler[TextIO], limit: int) -> None:
        self.handler = handler
        #: The handler that puts records here (set by it).
        self.enqueue: logging.Handler | None = None
        self._records: collections.deque[logging.LogRecord | AccessEntry] = collections.deque()
        self._limit = limit
        #: Records taken from the queue and not yet written (they count against the limit).
        self._held = 0
        self.dropped = 0
        self._reported = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, record: logging.LogRecord | AccessEntry) -> None:
        if len(self._records) + self._held >= self._limit:
            self.dropped += 1
            return
        self._records.append(record)

    def only_route_of(self, logger: logging.Logger) -> bool:
        """Whether a record of ``logger`` at INFO would reach this writer and nothing else."""
        parent = logger.parent
        return (
            not logger.handlers
            and not logger.filters
            and logger.propagate
            and parent is not None
            and parent.handlers == [self.enqueue]
            and not parent.filters
            and logger.isEnabledFor(logging.INFO)
        )

    def _run(self) -> None:
        while not self._stop.wait(LOG_WRITE_INTERVAL_S):
            self._write_queued()
        self._write_queued()

    def _write_queued(self) -> None:
        records = self._records
        while records or self.dropped != self._reported:
            batch: list[logging.LogRecord | AccessEntry] = []
            with_note = self._drop_note()
            if with_note is not None:
                batch.append(with_note)
            while records and len(batch) < LOG_WRITE_BATCH:
                batch.append(records.popleft())
            self._held = len(batch)
            self._write(batch)
            self._held = 0

    def _drop_note(self) -> logging.LogRecord | None:
        dropped = self.dropped
        if dropped == self._reported:
            return None
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
        return note

    def _write(self, batch: list[logging.LogRecord | AccessEntry]) -> None:
        handler = self.handler
        lines = []
        fast = getattr(handler.formatter, "format_access", None)
        for item in batch:
            try:
                if isinstance(item, AccessEntry):
                    lines.append(
                        fast(item) if fast is not None else handler.format(access_record(item))
                    )
                else:
                    lines.append(handler.format(item))
            except Exception:
                handler.handleError(access_record(item) if isinstance(item, AccessEntry) else item)
        if not lines:
            return
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write("\n".join(lines) + handler.terminator)
                handler.flush()
            except Exception:
                last = batch[-1]
                handler.handleError(access_record(last) if isinstance(last, AccessEntry) else last)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


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
    _writer = _Writer(handler, LOG_QUEUE_RECORDS)
    _writer.start()
    logger = logging.getLogger("trt_async")
    logger.handlers = [_Enqueue(_writer)]
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
    logging.getLogger("trt_async").handlers = [writer.handler]
