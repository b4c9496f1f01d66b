"""perf/gpu_check.py: one clear line where nothing can run; the whole check on the fakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perf import gpu_check
from tests.fake_trt import FakeCudaRuntime, FakeTensorRT

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    """On this machine (no driver, no TensorRT) the script must not end in a traceback."""
    pytest.importorskip("onnxruntime")
    from cuda.bindings import runtime as cudart

    if int(cudart.cudaGetDeviceCount()[0]) == 0:
        pytest.skip("a CUDA device is present")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "gpu_check.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gpu_check: no CUDA device")


def test_missing_tensorrt_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    assert gpu_check.main(["--random-model"], cuda_runtime=FakeCudaRuntime()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu_check: TensorRT not installed")


def test_random_model_on_the_fakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rt = FakeCudaRuntime()
    trt = FakeTensorRT(rt)
    report = tmp_path / "report.json"
    argv = [
        "--random-model",
        "--batch-sizes", "1,4",
        "--lengths", "16,64",
        "--iters", "2",
        "--warmup", "1",
        "--interleaved", "40",
        "-o", str(report),
    ]  # fmt: skip
    assert gpu_check.main(argv, trt_module=trt, cuda_runtime=rt) == 0
    data = json.loads(report.read_text())
    assert data["output"] == "sentence_embedding"
    assert len(data["buckets"]) == 4
    assert all(r["max_abs_diff"] < 1e-5 and r["min_cosine"] > 0.9999 for r in data["buckets"])
    assert data["interleaved"] == {"runs": 40, "mismatches": []}
    assert trt.violations == []
    assert "40 runs" in capsys.readouterr().out


def test_interleaved_pass_catches_a_stale_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph replayed after its context changed must make the check fail (exit 1)."""
    pytest.importorskip("onnxruntime")
    rt = FakeCudaRuntime()
    trt = FakeTensorRT(rt)
    timed = gpu_check._timed

    def timed_then_disturb(fn, iters, warmup):  # type: ignore[no-untyped-def]
        result = timed(fn, iters, warmup)
        for ctx in trt.contexts:  # as if something re-bound the contexts after capture
            ctx.generation += 1
        return result

    monkeypatch.setattr(gpu_check, "_timed", timed_then_disturb)
    argv = ["--random-model", "--batch-sizes", "1,2", "--lengths", "16", "--iters", "1",
            "--warmup", "0", "--interleaved", "30", "-o", str(tmp_path / "r.json")]  # fmt: skip
    assert gpu_check.main(argv, trt_module=trt, cuda_runtime=rt) == 1
    assert trt.violations
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interleaved"]["mismatches"]
