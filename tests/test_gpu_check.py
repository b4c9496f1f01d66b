"""perf/gpu_check.py: one clear line where nothing can run; the whole check on the fakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
        "--precision", "fp32",
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
    assert data["failures"] == [] and data["cosine_floor"] == 0.9999
    assert trt.violations == []
    assert "40 runs" in capsys.readouterr().out


def test_interleaved_pass_catches_a_stale_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph replayed after its context changed must make the check fail (exit 1)."""
    pytest.importorskip("onnxruntime")
    rt = FakeCudaRuntime()
    trt = FakeTensorRT(rt)
    timed = gpu_check._timed_pair

    def timed_then_disturb(*args):  # type: ignore[no-untyped-def]
        result = timed(*args)
        for ctx in trt.contexts:  # as if something re-bound the contexts after capture
            ctx.generation += 1
        return result

    monkeypatch.setattr(gpu_check, "_timed_pair", timed_then_disturb)
    argv = ["--random-model", "--batch-sizes", "1,2", "--lengths", "16", "--iters", "1",
            "--warmup", "0", "--interleaved", "30", "-o", str(tmp_path / "r.json")]  # fmt: skip
    assert gpu_check.main(argv, trt_module=trt, cuda_runtime=rt) == 1
    assert trt.violations
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["interleaved"]["mismatches"]


@pytest.fixture(params=["10.13.0.35", "11.4.0.106"], ids=["trt10", "trt11"])
def fake_pair(request: pytest.FixtureRequest) -> tuple[FakeTensorRT, FakeCudaRuntime]:
    rt = FakeCudaRuntime()
    return FakeTensorRT(rt, version=request.param), rt


def _overflowing_model(tmp_path: Path) -> Path:
    """Embeddings around 3000: 64 of them sum past fp16's 65504 (ONNX Runtime in fp32 is
    fine, and so is the mean)."""
    return gpu_check.write_random_model(tmp_path / "big", vocab=50, hidden=8, scale=3000.0)


def _argv(tmp_path: Path, model: Path) -> list[str]:
    return [str(model), "--precision", "fp16", "--batch-sizes", "1,2", "--lengths", "16,64",
            "--iters", "1", "--warmup", "0", "--interleaved", "4",
            "-o", str(tmp_path / "r.json")]  # fmt: skip


def test_fp16_overflow_fails_with_the_bucket_named(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_pair: tuple[FakeTensorRT, FakeCudaRuntime],
) -> None:
    """With the fp32 islands turned off, the sums of an fp16 build overflow to inf at
    length 64 (not at 16): the check exits 1 and names the length-64 buckets. The old
    check printed the numbers and exited 0."""
    pytest.importorskip("onnxruntime")
    from trt_async.backends.tensorrt import build

    monkeypatch.setenv("TRT_ASYNC_GRAPHS", str(tmp_path / "graphs"))
    monkeypatch.setattr(build, "constrain_network", lambda *a: 0, raising=False)
    monkeypatch.setattr(build, "fp16_block_list", lambda model: [], raising=False)
    trt, rt = fake_pair
    assert gpu_check.main(_argv(tmp_path, _overflowing_model(tmp_path)), trt, rt) == 1
    out = capsys.readouterr().out
    assert "FAIL bucket 1x64: " in out and "FAIL bucket 2x64: " in out and "non-finite" in out
    assert "FAIL bucket 1x16" not in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert [f.split(":")[0] for f in report["failures"]] == ["1x64", "2x64"]


def test_fp16_build_with_fp32_sums_passes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_pair: tuple[FakeTensorRT, FakeCudaRuntime],
) -> None:
    """The same model built as it is: reductions stay fp32 (pinned on 10.x, blocked from
    the conversion on 11.x), nothing overflows, every bucket is over the fp16 floor."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TRT_ASYNC_GRAPHS", str(tmp_path / "graphs"))
    trt, rt = fake_pair
    assert gpu_check.main(_argv(tmp_path, _overflowing_model(tmp_path)), trt, rt) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failures"] == [] and report["cosine_floor"] == 0.999
    assert all(r["non_finite"] == 0 and r["min_cosine"] >= 0.999 for r in report["buckets"])
    assert trt.builds[-1]["compute"]["reduce"] == "float32"


def test_wrong_numbers_fail_under_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engine that computes something else (here: every row's pooling off by a random
    vector) is under the floor in every bucket: exit 1, each bucket named."""
    pytest.importorskip("onnxruntime")
    from tests import fake_trt

    compute = fake_trt.FakeEngine.compute
    noise = np.random.default_rng(5)

    def wrong(self, name, ids, mask):  # type: ignore[no-untyped-def]
        values = compute(self, name, ids, mask)
        return values + noise.standard_normal(values.shape).astype(np.float32)

    monkeypatch.setattr(fake_trt.FakeEngine, "compute", wrong)
    rt = FakeCudaRuntime()
    argv = ["--random-model", "--precision", "fp32", "--batch-sizes", "1,2", "--lengths", "16",
            "--iters", "1", "--warmup", "0", "--interleaved", "0",
            "-o", str(tmp_path / "r.json")]  # fmt: skip
    assert gpu_check.main(argv, trt_module=FakeTensorRT(rt), cuda_runtime=rt) == 1
    out = capsys.readouterr().out
    assert "FAIL bucket 1x16: lowest cosine" in out and "FAIL bucket 2x16: lowest cosine" in out


def test_graph_and_plain_timing_alternate() -> None:
    """Graph first on even runs, plain first on odd ones (warm-up runs both, graph first);
    the old check timed every graph run before every plain run."""
    calls: list[str] = []
    graph, plain = gpu_check._timed_pair(
        lambda: calls.append("g"), lambda: calls.append("p"), iters=4, warmup=1
    )
    assert calls == ["g", "p", "g", "p", "p", "g", "g", "p", "p", "g"]
    assert len(graph) == len(plain) == 4


def test_floors_by_precision() -> None:
    assert gpu_check.COSINE_FLOORS == {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.995}
    assert gpu_check._verdict(float("nan"), 0, 0.9) is not None
    assert gpu_check._verdict(0.99995, 0, 0.9999) is None
    assert "non-finite" in str(gpu_check._verdict(1.0, 3, 0.9))
