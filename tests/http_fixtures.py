"""Fixtures for the HTTP tests: one app serving every kind of model, and references.

Loaded with ``pytest_plugins = ["tests.http_fixtures"]`` so the session fixtures are
shared by every HTTP test module (one app start per run).

Served models:

* ``all-MiniLM-L6-v2`` (embedder) and ``all-MiniLM-L6-v2-rerank`` (cosine reranker), the
  embedded default;
* ``bert-rerank``: the tiny BERT cross-encoder (one label);
* ``bert-nli`` (contradiction, entailment, neutral) and ``xlmr-nli`` (entailment, neutral,
  contradiction): tiny NLI classifiers;
* ``bert-nli-tight``: ``bert-nli`` again with a queue of two items, for 429s and failures
  that must not touch the other models.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.models import ExportedModel
from trt_async.app import create_app
from trt_async.core.config import Config, ModelConfig
from trt_async.core.registry import ModelRegistry
from trt_async.tools.embedded import embedded_config

REPO = Path(__file__).resolve().parents[1]
EMBEDDER = "all-MiniLM-L6-v2"
COSINE_RERANKER = "all-MiniLM-L6-v2-rerank"
BASE_URL = "http://testserver.local"
MAX_CLIENT_BATCH = 64
MAX_BODY_BYTES = 256 * 1024
API_KEY = "test-secret-key"
ADMIN_KEY = "test-admin-key"


def http_config(
    minilm_model_dir: Path,
    bert_rerank_dir: ExportedModel,
    bert_nli_dir: ExportedModel,
    xlmr_nli_dir: ExportedModel,
    model_roots: Sequence[Path] = (),
) -> Config:
    config = embedded_config(minilm_model_dir)
    config.reranking_models["bert-rerank"] = ModelConfig(model_path=os.fspath(bert_rerank_dir))
    config.nli_models["bert-nli"] = ModelConfig(model_path=os.fspath(bert_nli_dir))
    config.nli_models["xlmr-nli"] = ModelConfig(model_path=os.fspath(xlmr_nli_dir))
    config.nli_models["bert-nli-tight"] = ModelConfig(
        model_path=os.fspath(bert_nli_dir), max_queue_items=2
    )
    config.server.max_client_batch_size = MAX_CLIENT_BATCH
    config.server.max_body_bytes = MAX_BODY_BYTES
    config.server.model_roots = [str(r) for r in model_roots]
    config.server.admin_api_key = ADMIN_KEY
    config.server.drain_seconds = 5
    return config


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The only folder ``POST /models/load`` may read from."""
    return tmp_path_factory.mktemp("model_root")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def http_app(
    minilm_model_dir: Path,
    bert_rerank_dir: ExportedModel,
    bert_nli_dir: ExportedModel,
    xlmr_nli_dir: ExportedModel,
    model_root: Path,
) -> AsyncIterator[tuple[Litestar, AsyncTestClient[Litestar]]]:
    os.environ.pop("TRT_ASYNC_API_KEY", None)
    config = http_config(
        minilm_model_dir, bert_rerank_dir, bert_nli_dir, xlmr_nli_dir, [model_root]
    )
    app = create_app(config)
    async with AsyncTestClient(app, base_url=BASE_URL, timeout=60) as client:
        # The app has no inference key, so only the management routes read this.
        client.headers["authorization"] = f"Bearer {ADMIN_KEY}"
        yield app, client


@pytest.fixture
def client(http_app: tuple[Litestar, AsyncTestClient[Litestar]]) -> AsyncTestClient[Litestar]:
    return http_app[1]


@pytest.fixture
def registry(http_app: tuple[Litestar, AsyncTestClient[Litestar]]) -> ModelRegistry:
    reg: ModelRegistry = http_app[0].state["registry"]
    return reg


# -- references -----------------------------------------------------------------------------


def hf_embeddings(hf_dir: Path, texts: Sequence[str]) -> np.ndarray:
    """Mean-pooled, normalised sentence embeddings from transformers' forward pass."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModel.from_pretrained(str(hf_dir)).eval()
    batch = tok(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    vectors = pooled.numpy().astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def hf_logits(hf_dir: Path, pairs: Sequence[tuple[str, str]] | Sequence[str]) -> np.ndarray:
    """Logits of a sequence classifier for texts or (first, second) pairs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    if pairs and isinstance(pairs[0], tuple):
        first = [p[0] for p in pairs]
        second = [p[1] for p in pairs]
        batch = tok(first, second, padding=True, truncation=True, return_tensors="pt")
    else:
        batch = tok(list(pairs), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.numpy().astype(np.float64)


def assert_error(r: Any, status: int, dialect: str, error_type: str | None = None) -> Any:
    """Check an error answer's status and its dialect's exact body shape; return the error.

    ``dialect``: ``openai`` (``{"error": {message, type, param, code}}``, returns the inner
    object), ``rerank`` (the same plus ``detail``), ``tei`` (``{"error", "error_type"}``) or
    ``detail`` (``{"detail"}``).
    """
    assert r.status_code == status, r.text
    body = r.json()
    if dialect == "rerank":
        # OpenAI's envelope, plus the message again as FastAPI's `detail` for Jina clients.
        assert set(body) == {"error", "detail"}, body
        assert body["detail"] == body["error"]["message"], body
        body = {"error": body["error"]}
        dialect = "openai"
    if dialect == "openai":
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return body["error"]
    if dialect == "tei":
        assert set(body) == {"error", "error_type"}, body
        assert error_type is None or body["error_type"] == error_type, body
        return body
    assert dialect == "detail", dialect
    assert set(body) == {"detail"}, body
    return body


def timing_headers_ok(headers: Any) -> bool:
    names = (
        "x-compute-time",
        "x-compute-tokens",
        "x-queue-time",
        "x-inference-time",
        "x-tokenization-time",
        "x-total-time",
    )
    if not all(n in headers for n in names):
        return False
    values = {n: float(headers[n]) for n in names}
    return (
        values["x-compute-tokens"] > 0
        and values["x-total-time"] >= values["x-inference-time"] >= 0
        and values["x-queue-time"] >= 0
    )


# -- a real server process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(
    config: Path,
    port: int,
    *extra: str,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``trt-async serve`` on 127.0.0.1; its output goes to ``log`` (else a pipe).

    A test that makes many requests should pass ``log``: the access log would fill a pipe
    nobody reads and stall the server. ``env`` replaces the environment, which is otherwise
    this process's without its ``TRT_ASYNC_`` settings.
    """
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRT_ASYNC_")}
    cmd = [sys.executable, "-m", "trt_async", "serve", "--config", str(config)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *extra]
    if log is None:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    with log.open("w", encoding="utf-8") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout``. SIGKILL first would orphan granian's worker,
    which keeps the port and its memory after the test session ends."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving(config: Path, log: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``trt-async serve`` on a free loopback port, ready; its URL. Stopped on exit."""
    port = free_port()
    proc = start(config, port, log=log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        yield url
    finally:
        stop(proc)


def wait_ready(proc: subprocess.Popen[str], url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"server exited with {proc.returncode} before ready:\n{out}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("server not ready in time")
