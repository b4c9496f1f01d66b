"""perf/int8.py's closeness figures on vectors whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from perf.int8 import closeness


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_identical_vectors_agree_entirely_and_noise_costs_recall() -> None:
    rng = np.random.default_rng(0)
    fp32 = _normalised(rng.normal(size=(200, 16)))
    same = closeness(fp32, fp32.copy(), queries=20)
    assert same["cosine_min"] == pytest.approx(1.0)
    assert same["recall_at_10"] == 1.0 and same["top1_agreement"] == 1.0
    assert (same["queries"], same["documents"], same["texts"]) == (20, 180, 200)

    noisy = closeness(fp32, _normalised(fp32 + rng.normal(scale=0.3, size=fp32.shape)), 20)
    assert noisy["cosine_min"] < noisy["cosine_mean"] < 1.0
    assert 0.0 < noisy["recall_at_10"] < 1.0
