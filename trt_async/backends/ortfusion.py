"""ONNX Runtime's fused attention for BERT-style encoders, checked before it is used.

ONNX Runtime's transformer optimizer rewrites an encoder's attention, layer norms and GELU
into com.microsoft operators (``Attention``, ``SkipLayerNormalization``, ``BiasGelu``,
``EmbedLayerNormalization``) that its CPU kernels run in fewer passes. Those operators exist
only in ONNX Runtime (TensorRT's parser does not take them), so the fused graph is made in
memory when the ONNX Runtime backend starts and never written to the model folder. It is
used only when every layer's attention fused and it gives the plain graph's outputs on a
padded probe batch; otherwise the plain graph runs and the log says why. The verdict is kept
per graph file for the life of the process: a config that serves one folder as two models,
or a test run that starts many servers, fuses it once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

#: config.json ``model_type`` values whose encoder the optimizer's "bert" pass knows.
FUSABLE_TYPES = frozenset({"bert", "roberta", "xlm-roberta"})
#: Largest difference on real tokens between the fused and the plain graph's outputs.
TOLERANCE = 1e-3
#: protobuf cannot serialise a graph past 2 GiB; larger models keep the plain graph.
MAX_GRAPH_BYTES = 1 << 30

_verdicts: dict[tuple[str, int, int], bytes | None] = {}
_verdicts_lock = threading.Lock()


def fused_graph(onnx_path: Path, hf_config: dict[str, Any]) -> bytes | None:
    """The fused graph of ``onnx_path`` if it fuses and computes what the file does, else
    None; one verdict per file (path, size and modification time) per process."""
    stat = onnx_path.stat()
    key = (str(onnx_path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verdicts_lock:
        if key not in _verdicts:
            fused = fuse_attention(onnx_path, hf_config)
            if fused is not None and not same_outputs(onnx_path, fused, hf_config):
                fused = None
            _verdicts[key] = fused
        return _verdicts[key]


def forget_verdicts() -> None:
    """Drop the kept verdicts (tests that swap the fusion for another)."""
    with _verdicts_lock:
        _verdicts.clear()


def fuse_attention(onnx_path: Path, hf_config: dict[str, Any]) -> bytes | None:
    """The graph at ``onnx_path`` with its attention fused, or None (with the reason logged)
    where the model is not a BERT-style encoder or not every layer fused."""
    kind = str(hf_config.get("model_type", ""))
    if kind not in FUSABLE_TYPES:
        return None
    heads, hidden = hf_config.get("num_attention_heads"), hf_config.get("hidden_size")
    layers = hf_config.get("num_hidden_layers")
    if not all(isinstance(v, int) for v in (heads, hidden, layers)):
        return None
    size = sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))
    if size > MAX_GRAPH_BYTES:
        log.info("%s: %.1f GB, kept unfused (too large to fuse in memory)", onnx_path, size / 1e9)
        return None
    before = set(logging.root.manager.loggerDict)
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:  # the optimizer needs the onnx package
        log.info("%s: kept unfused (ONNX Runtime's optimizer needs %s)", onnx_path, exc.name)
        return None
    # The optimizer's modules log each fusion at INFO under top-level names of their own.
    for name in set(logging.root.manager.loggerDict) - before:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        # opt_level=0: graph fusions only; the session applies its own optimisations on load.
        model = optimize_model(
            str(onnx_path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0
        )
    except Exception as exc:  # the optimizer raises whatever its passes hit
        log.warning("%s: kept unfused (ONNX Runtime's optimizer failed: %s)", onnx_path, exc)
        return None
    fused = model.get_fused_operator_statistics().get("Attention", 0)
    if fused != layers:
        log.info("%s: kept unfused (%d of %d attention layers fused)", onnx_path, fused, layers)
        return None
    data: bytes = model.model.SerializeToString()
    return data


Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
_INT_TYPES: dict[str, np.dtype] = {
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
}


def same_outputs(onnx_path: Path, fused: bytes, hf_config: dict[str, Any]) -> bool:
    """Whether ``fused`` loads and gives the outputs of the graph at ``onnx_path`` on a
    padded probe batch (within :data:`TOLERANCE` on real tokens)."""
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(onnx_path), settings, providers=providers)
    try:
        candidate = ort.InferenceSession(fused, settings, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        log.warning("%s: kept unfused (the fused graph does not load: %s)", onnx_path, exc)
        return False
    inputs = plain.get_inputs()
    dtype = _INT_TYPES.get(inputs[0].type, np.dtype(np.int64))
    vocab = hf_config.get("vocab_size")
    feeds = probe_feeds([i.name for i in inputs], dtype, vocab if isinstance(vocab, int) else 100)
    worst = difference(lambda f: plain.run(None, f), lambda f: candidate.run(None, f), feeds)
    if worst > TOLERANCE:
        log.warning("%s: kept unfused (it differs by %.2e on a probe)", onnx_path, worst)
        return False
    log.info("%s: attention fused (max difference on a probe %.1e)", onnx_path, worst)
    return True


def probe_feeds(
    names: list[str], dtype: np.dtype, vocab: int, length: int = 24
) -> dict[str, np.ndarray]:
    """Two rows of random in-vocabulary ids, the second padded to half the length."""
    rng = np.random.default_rng(0)
    ids = rng.integers(min(5, vocab - 1), vocab, size=(2, length)).astype(dtype)
    mask = np.ones((2, length), dtype=dtype)
    mask[1, length // 2 :] = 0
    ids[1, length // 2 :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return {n: feeds[n] for n in names}


def difference(plain: Run, fused: Run, feeds: dict[str, np.ndarray]) -> float:
    """Largest difference between the two graphs' outputs on the probe's real tokens."""
    mask = feeds["attention_mask"].astype(bool)
    worst = 0.0
    for a, b in zip(plain(feeds), fused(feeds), strict=True):
        if a.shape != b.shape:
            return float("inf")
        if a.ndim >= 2 and a.shape[:2] == mask.shape:  # per token: padding is not compared
            a, b = a[mask], b[mask]
        worst = max(worst, float(np.abs(a.astype(np.float64) - b).max(initial=0.0)))
    return worst
