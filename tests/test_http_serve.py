"""``trt-async serve`` as a real granian process: ready, serving over TCP, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
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
