"""perf/gpu_smoke.py against the fake CUDA runtime: the same checks a GPU machine runs."""

from __future__ import annotations

import io

from perf import gpu_smoke
from tests.fake_trt import FakeCudaRuntime


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
