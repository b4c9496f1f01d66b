"""``trt-async serve`` as a real granian process: ready, serving over TCP, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.http_fixtures import free_port, start, wait_ready
from tests.models import ExportedModel

pytestmark = pytest.mark.integration


def write_config(path: Path, rerank: os.PathLike[str], nli: os.PathLike[str]) -> Path:
    path.write_text(
        "reranking_models:\n"
        f"  tiny-rerank:\n    model_path: {os.fspath(rerank)!r}\n"
        "nli_models:\n"
        f"  tiny-nli:\n    model_path: {os.fspath(nli)!r}\n"
        "server:\n  drain_seconds: 5\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def server(
    tmp_path: Path, bert_rerank_dir: ExportedModel, bert_nli_dir: ExportedModel
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    config = write_config(tmp_path / "config.yaml", bert_rerank_dir, bert_nli_dir)
    port = free_port()
    proc = start(config, port, "--api-key", "s3cret")
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_answers_and_stops_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    proc, url = server
    wait_ready(proc, url)
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        denied = http.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        r = http.post("/rerank", json={"query": "q", "texts": ["a", "b", "c"]}, headers=auth)
        assert r.status_code == 200 and sorted(x["index"] for x in r.json()) == [0, 1, 2]
        assert float(r.headers["x-inference-time"]) >= 0
        p = http.post("/predict", json={"inputs": ["a premise", "a hypothesis"]}, headers=auth)
        assert p.status_code == 200 and len(p.json()) == 3
        listing = http.get("/models", headers=auth).json()
        assert listing == {
            "models": {
                "embedding_models": [],
                "reranking_models": ["tiny-rerank"],
                "nli_models": ["tiny-nli"],
            }
        }
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_serve_fails_fast_when_a_model_cannot_load(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    config = write_config(tmp_path / "config.yaml", missing, missing)
    proc = start(config, free_port())
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "no-such-model" in out


def sigterm_caught(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_sigterm_during_start_up_exits_0(tmp_path: Path, bert_rerank_dir: ExportedModel) -> None:
    # A stop asked for while the command is still checking its config, before granian takes
    # the signals over, ends the process with 0, not killed by the signal (exit -15).
    config = write_config(tmp_path / "config.yaml", bert_rerank_dir, bert_rerank_dir)
    proc = start(config, free_port())
    try:
        deadline = time.monotonic() + 30
        while not sigterm_caught(proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, "no SIGTERM handler in 30 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Sent before granian started: the handler that caught it was the command's own.
    assert "Starting granian" not in out, out
    assert proc.returncode == 0, out


def test_a_dead_worker_ends_the_server_with_a_failure_code(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    # What deploy/ relies on to restart the server: if its one worker dies (OOM killer,
    # crash), the main process exits non-zero, so systemd (Restart=on-failure), Kubernetes
    # and a container runtime with a restart policy start it again.
    proc, url = server
    wait_ready(proc, url)
    workers = [
        int(pid)
        for task in Path(f"/proc/{proc.pid}/task").glob("*/children")
        for pid in task.read_text().split()
    ]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode not in (0, None) and proc.returncode > 0, out


def test_the_cli_log_level_reaches_the_workers_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    """``trt-async --log-level WARNING serve`` used to leave the worker's ``trt_async``
    loggers at INFO (the app set them itself), so every request still wrote an access line.
    The CLI hands the level to the worker through the environment."""
    import logging

    import granian

    from trt_async.app import create_app
    from trt_async.cli import main
    from trt_async.core.config import LOG_LEVEL_ENV, Config

    served: list[str | None] = []

    class NoServer:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def serve(self) -> None:  # the worker would build the app here
            served.append(os.environ.get(LOG_LEVEL_ENV))

    monkeypatch.setattr(granian, "Granian", NoServer)
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)  # leave pytest's root alone
    # run_serve writes os.environ itself: setenv first, so that the original state (set or
    # not) is what monkeypatch restores (delenv of an unset name would record nothing).
    monkeypatch.setenv(LOG_LEVEL_ENV, "INFO")
    port = free_port()
    assert main(["--log-level", "WARNING", "serve", "--port", str(port)]) == 0
    assert served == ["WARNING"]
    create_app(Config())
    access = logging.getLogger("trt_async.access")
    assert not access.isEnabledFor(logging.INFO)
    monkeypatch.delenv(LOG_LEVEL_ENV)
    create_app(Config())  # the default keeps the access log on
    assert access.isEnabledFor(logging.INFO)
    monkeypatch.setenv(LOG_LEVEL_ENV, "loud")
    with pytest.raises(ValueError, match="not a log level; use DEBUG, INFO, WARNING or ERROR"):
        create_app(Config())
