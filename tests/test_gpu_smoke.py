"""perf/gpu_smoke.py against the fake CUDA runtime: the same checks a GPU machine runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from perf import gpu_smoke
from tests.fake_trt import FakeCudaRuntime

#: gpu_model.py's --fake: the CUDA runtime stand-in it makes, by import path.
FAKE = f"{FakeCudaRuntime.__module__}:{FakeCudaRuntime.__qualname__}"


def test_gpu_smoke_passes_on_the_fake_runtime() -> None:
    out = io.StringIO()
    assert gpu_smoke.main([], runtime=FakeCudaRuntime(), out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert text.count("[PASS]") == 7 and "[FAIL]" not in text
    assert "summary: 7 of 7 checks passed" in text


def test_gpu_smoke_fails_when_a_capture_cannot_fall_back() -> None:
    """A runtime whose captures never fail (allocation allowed while capturing) must make
    the forced-failure check fail: the check can fail."""

    class Lenient(FakeCudaRuntime):
        def _unsafe_during_capture(self):  # type: ignore[no-untyped-def]
            return None

    out = io.StringIO()
    assert gpu_smoke.main([], runtime=Lenient(), out=out) == 1
    assert "[FAIL] forced capture failure" in out.getvalue()


def test_gpu_smoke_without_a_device_says_so() -> None:
    out = io.StringIO()
    assert gpu_smoke.main([], runtime=FakeCudaRuntime(devices=0), out=out) == 2
    assert out.getvalue().startswith("gpu_smoke: no CUDA device")


@pytest.mark.slow
def test_gpu_model_runs_the_real_model_through_the_cuda_path_on_the_fakes(tmp_path: Path) -> None:
    """perf/gpu_model.py with --fake: the all-MiniLM-L6-v2-shaped model (tiny here) runs
    its PyTorch forward pass inside the backend's enqueues on the fake CUDA runtime,
    graphs included; every bucket matches ONNX Runtime; a server on that backend answers
    /v1/embeddings as the CPU server does; the load levels run."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    from perf import gpu_model

    out = io.StringIO()
    report = tmp_path / "report.json"
    argv = ["--all", "--fake", FAKE, "--tiny", "--batch-sizes", "1,2,64", "--lengths", "16,32",
            "--max-batch-tokens", "2048", "--seconds", "0.5", "-o", str(report)]  # fmt: skip
    assert gpu_model.main(argv, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "summary: 7 of 7 checks passed" in text  # gpu_smoke.py first (--all)
    assert "gpu_check.py: skipped, TensorRT is not installed here" in text
    data = json.loads(report.read_text())
    assert data["failed"] == [] and len(data["checks"]) == 6
    assert all(r["min_cosine"] >= 0.999 and r["finite"] for r in data["parity"])
    assert len(data["parity"]) == 6 and data["graph_fallbacks"] == {}  # 3 batches x 2 lengths
    assert data["server_vs_cpu_min_cosine"] >= 0.999
    assert set(data["server_items_per_s"]) == {"1", "64"}
    assert set(data["bare_items_per_s"]) == {"1", "64"}


@pytest.mark.slow
def test_gpu_model_fails_on_wrong_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward pass that writes the wrong numbers fails the per-bucket check (exit 1)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from perf import gpu_model

    real = gpu_model.TorchCompute.__call__

    def shifted(self, addresses, batch, length):  # type: ignore[no-untyped-def]
        real(self, addresses, batch, length)
        self.tensor(addresses["sentence_embedding"], (batch, 32), "float32").neg_()

    monkeypatch.setattr(gpu_model.TorchCompute, "__call__", shifted)
    out = io.StringIO()
    argv = ["--fake", FAKE, "--tiny", "--batch-sizes", "1,2", "--lengths", "16", "--seconds", "0.1",
            "--max-batch-tokens", "64", "--no-server"]  # fmt: skip
    assert gpu_model.main(argv, out=out) == 1
    assert "[FAIL] vectors per bucket against ONNX Runtime" in out.getvalue()


def test_gpu_model_without_torch_or_a_device_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from perf import gpu_model

    monkeypatch.setattr(gpu_model, "_unavailable", lambda fake: "no CUDA device for PyTorch")
    out = io.StringIO()
    assert gpu_model.main([], out=out) == 2
    assert out.getvalue() == "gpu_model: no CUDA device for PyTorch\n"
