"""Logging never waits for the log output: a blocked stderr holds up neither the caller
(the event loop) nor memory, and what had to be dropped is said once output flows again."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from trt_async.http import observability
from trt_async.http.observability import configure_logging, stop_log_writer


class BlockedStream(io.StringIO):
    """A stderr whose reader has stalled: every write waits until ``flowing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.flowing = threading.Event()

    def write(self, text: str) -> int:
        if not self.flowing.wait(timeout=30):
            raise TimeoutError("the test never let the stream flow")
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[BlockedStream]:
    blocked = BlockedStream()
    yield blocked
    blocked.flowing.set()
    stop_log_writer()
    logging.getLogger("trt_async").handlers = []


def test_a_blocked_log_output_does_not_block_the_caller(stream: BlockedStream) -> None:
    configure_logging("text", stream=stream)
    access = logging.getLogger("trt_async.access")
    start = time.perf_counter()
    for i in range(50):
        access.info("request", extra={"request_id": f"r{i}", "status": 200})
    assert time.perf_counter() - start < 1.0, "logging waited for the blocked output"
    assert stream.getvalue() == ""

    stream.flowing.set()
    stop_log_writer()  # writes what is queued
    lines = stream.getvalue().splitlines()
    assert len(lines) == 50
    assert "request_id=r0 " in lines[0] and "request_id=r49 " in lines[-1]
    assert all(" INFO trt_async.access: request " in line for line in lines)


def test_records_past_the_queue_are_dropped_and_counted(
    stream: BlockedStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observability, "LOG_QUEUE_RECORDS", 3)
    configure_logging("json", stream=stream)
    log = logging.getLogger("trt_async.test")
    for i in range(10):
        log.warning("line %d", i)
    stream.flowing.set()
    stop_log_writer()  # what was dropped is said, also when nothing was logged after it
    lines = stream.getvalue().splitlines()
    written = [line for line in lines if '"logger": "trt_async.test"' in line]
    notes = [line for line in lines if "log records dropped" in line]
    # The writer may hold one record, blocked in its write, besides the 3 queued ones.
    assert len(written) in (3, 4), lines
    assert written[0].count('"message": "line 0"') == 1
    assert len(notes) == 1, lines
    dropped = int(notes[0].split('"message": "')[1].split(" ")[0])
    assert dropped + len(written) == 10
    # And from then on, logging writes directly again.
    log.warning("direct")
    assert stream.getvalue().splitlines()[-1].count('"message": "direct"') == 1


@pytest.mark.parametrize("kind", ["text", "json"])
def test_an_access_line_reads_the_same_from_its_fields_as_from_a_record(kind: str) -> None:
    """The writer builds access lines from the request's fields (no log record on the event
    loop): the line must be the one the formatter writes for the equivalent record, odd
    characters escaped alike."""
    formatter = (
        observability.KeyValueFormatter() if kind == "text" else observability.JsonFormatter()
    )
    entry = observability.AccessEntry(
        1_765_000_000.123456,
        "rid-1",
        "POST",
        "/v1/embeddings\r\nforged=1",
        "/v1/embeddings",
        "mini",
        200,
        1.234,
        "127.0.0.1",
    )
    record = observability.access_record(entry)
    assert formatter.format_access(entry) == formatter.format(record)
    assert "\r" not in formatter.format_access(entry)


def test_access_lines_skip_the_log_record_only_when_nothing_else_would_see_it(
    stream: BlockedStream,
) -> None:
    configure_logging("text", stream=stream)
    stream.flowing.set()
    access = logging.getLogger("trt_async.access")
    writer = observability._writer
    assert writer is not None and writer.only_route_of(access)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    access.addHandler(handler)
    try:
        assert not writer.only_route_of(access)
        observability.log_request("r1", "GET", "/x", "/x", "", 200, 0.001, "c")
    finally:
        access.removeHandler(handler)
    observability.log_request("r2", "GET", "/x", "/x", "", 200, 0.001, "c")
    stop_log_writer()
    assert [getattr(r, "request_id", None) for r in seen] == ["r1"]
    lines = stream.getvalue().splitlines()
    assert any("request_id=r1 " in line for line in lines)
    assert any("request_id=r2 " in line for line in lines)
