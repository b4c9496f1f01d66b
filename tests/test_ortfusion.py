"""ONNX Runtime's fused attention: used where it computes what the exported graph computes,
and only there."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from trt_async.backends import create_backend, ortfusion
from trt_async.backends.base import Backend, BackendOptions, Lanes
from trt_async.backends.modelfiles import ModelFiles
from trt_async.backends.ortfusion import forget_verdicts, fuse_attention
from trt_async.backends.shapes import Bucket, BucketGrid

onnx = pytest.importorskip("onnx", reason="ONNX Runtime's optimizer needs the onnx package")

GRID = BucketGrid([1, 4], [8, 32], 128)
#: Two threads: two one-thread parallel lanes and the solo lane, on any machine.
OPTIONS = BackendOptions(intra_op_threads=2)
BUCKET = Bucket(4, 32)


def _run(backend: Backend, vocab: int, lane: int) -> tuple[np.ndarray, np.ndarray]:
    """One padded batch of random ids on ``lane``: the output and the attention mask."""
    rng = np.random.default_rng(7)
    views = backend.inputs(BUCKET, lane)
    mask = np.ones((BUCKET.batch, BUCKET.length), dtype=bool)
    mask[1, 20:] = mask[3, 9:] = False
    for name, view in views.items():
        if name == "input_ids":
            view[:] = rng.integers(5, min(vocab, 2000), size=view.shape) * mask
        elif name == "attention_mask":
            view[:] = mask
        else:
            view[:] = 0
    return backend.execute(BUCKET, (), lane)[backend.io.output].copy(), mask


@pytest.mark.parametrize("model", ["minilm_model_dir", "bert_rerank_dir", "xlmr_nli_dir"])
def test_bert_style_encoders_run_fused_alone_and_compute_the_same(
    model: str, request: pytest.FixtureRequest
) -> None:
    files = ModelFiles.resolve(request.getfixturevalue(model))
    vocab = int(files.hf_config["vocab_size"])
    fused = create_backend("onnxruntime", files, OPTIONS)
    plain = create_backend(
        "onnxruntime", files, dataclasses.replace(OPTIONS, fused_attention=False)
    )
    assert fused.lanes() == Lanes(2, solo=True)
    assert fused.info().details["solo_lane_graph"] == "fused attention"
    assert plain.info().details["solo_lane_graph"] == "as exported"
    fused.prepare(GRID)
    plain.prepare(GRID)
    got, mask = _run(fused, vocab, fused.lanes().alone)
    want, _ = _run(plain, vocab, plain.lanes().alone)
    # Batches side by side keep the exported graph: bit for bit what it gives.
    side_fused, _ = _run(fused, vocab, 0)
    side_plain, _ = _run(plain, vocab, 0)
    fused.close()
    plain.close()
    assert np.array_equal(side_fused, side_plain)
    assert not np.array_equal(got, want)  # the solo lanes ran different graphs
    if got.ndim == 3:  # hidden states: padding positions are never read
        got, want = got[mask], want[mask]
    assert np.abs(got - want).max() < 1e-4


def test_a_fused_graph_that_computes_otherwise_is_not_used(
    minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from onnx import numpy_helper

    files = ModelFiles.resolve(minilm_model_dir)
    good = fuse_attention(files.onnx, files.hf_config)
    assert good is not None
    graph = onnx.load_from_string(good)
    # One weight matrix off by 1 %: the kind of error a wrong fusion makes.
    weight = next(w for w in graph.graph.initializer if len(w.dims) == 2 and w.dims[0] > 100)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    bad = graph.SerializeToString()

    monkeypatch.setattr(ortfusion, "fuse_attention", lambda *_: good)
    forget_verdicts()
    backend = create_backend("onnxruntime", files, OPTIONS)
    assert backend.info().details["solo_lane_graph"] == "fused attention"  # the good one passes
    backend.close()

    monkeypatch.setattr(ortfusion, "fuse_attention", lambda *_: bad)
    forget_verdicts()
    try:
        with caplog.at_level(logging.WARNING, logger=ortfusion.__name__):
            backend = create_backend("onnxruntime", files, OPTIONS)
        assert backend.info().details["solo_lane_graph"] == "as exported"
        assert "kept unfused" in caplog.text
        backend.close()
    finally:
        forget_verdicts()  # the real verdict for later tests


def test_models_the_optimizer_does_not_know_keep_their_graph(minilm_model_dir: Path) -> None:
    files = ModelFiles.resolve(minilm_model_dir)
    assert fuse_attention(files.onnx, {**files.hf_config, "model_type": "t5"}) is None
    assert fuse_attention(files.onnx, {**files.hf_config, "num_hidden_layers": 7}) is None


def test_the_config_key_reaches_the_backend(minilm_model_dir: Path) -> None:
    from trt_async.core.config import parse_config
    from trt_async.core.runtime import backend_options

    text = f"embedding_models:\n  m:\n    model_path: {minilm_model_dir}\n"
    on = parse_config(text).embedding_models["m"]
    off = parse_config(text + "    fused_attention: false\n").embedding_models["m"]
    assert backend_options(on).fused_attention is True
    assert backend_options(off).fused_attention is False
