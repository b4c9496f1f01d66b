"""perf/design_floor.py and perf/thread_cpu.py: the floor does the server's work, and the
per-thread reading counts this process's threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.http_fixtures import hf_embeddings

pytestmark = pytest.mark.slow


def test_the_floor_app_answers_with_the_reference_vectors(
    minilm_model_dir: Path, minilm_hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litestar.testing import TestClient

    from perf.design_floor import CONFIG_ENV, create_floor_app
    from trt_async.tools.embedded import embedded_config_yaml

    config = tmp_path / "config.yaml"
    config.write_text(embedded_config_yaml(minilm_model_dir), encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    texts = ["The cat sat on the mat.", "A longer sentence about retrieval and rerankers."]
    with TestClient(create_floor_app()) as client:
        one = client.post("/v1/embeddings", json={"input": texts[0], "model": "m"})
        both = client.post("/v1/embeddings", json={"input": texts, "model": "m"})
        bad = client.post("/v1/embeddings", json={"text": "no input field"})
    assert one.status_code == both.status_code == 200
    assert bad.status_code == 400  # msgspec validation, as the server's
    got = np.array([row["embedding"] for row in both.json()["data"]])
    reference = hf_embeddings(minilm_hf_dir, texts)
    assert got.shape == (2, 384)
    assert (np.sum(got * reference, axis=1) > 0.9999).all()
    assert np.allclose(one.json()["data"][0]["embedding"], got[0], atol=1e-5)
    assert both.json()["usage"]["prompt_tokens"] > one.json()["usage"]["prompt_tokens"] > 2


def test_thread_seconds_counts_the_cpu_of_each_thread_apart() -> None:
    from perf.thread_cpu import thread_seconds

    ident: list[int] = []
    stop = threading.Event()

    def spin() -> None:
        ident.append(threading.get_native_id())
        while not stop.is_set():
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    try:
        while not ident:
            time.sleep(0.01)
        before = thread_seconds(os.getpid())
        time.sleep(0.5)  # this thread sleeps while the other one spins
        after = thread_seconds(os.getpid())
    finally:
        stop.set()
        busy.join()
    spun = after[ident[0]] - before[ident[0]]
    slept = after[os.getpid()] - before[os.getpid()]  # the main thread's id is the pid's
    assert spun >= 0.1 and slept < spun / 2


def test_thread_cpu_refuses_a_target_without_a_pid(capsys: pytest.CaptureFixture[str]) -> None:
    from perf.thread_cpu import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--target", "after=http://127.0.0.1:1"])
    assert exit_info.value.code == 2
    assert "expected NAME=URL,PID" in capsys.readouterr().err
