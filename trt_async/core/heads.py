"""What turns a backend's output into an answer: pooling, normalisation, scores, labels.

Batch reductions (:func:`make_reducer`) run in the worker thread right after the backend,
so the event loop only sees small per-item rows. Per-request finishing (normalise,
Matryoshka truncation, activations, zero-shot) is vectorised numpy on those rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from trt_async.backends.modelfiles import Pooling, ScoreFormula

#: ``reduce(output, attention_mask) -> rows``: one float32 row per item of the batch.
Reducer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def make_reducer(pooling: Literal[Pooling, "none"]) -> Reducer:
    if pooling == "cls":
        return _pool_cls
    if pooling == "mean":
        return _pool_mean
    if pooling == "last":
        return _pool_last
    return _pool_none


def make_score_reducer(formula: ScoreFormula) -> Reducer:
    """The reduction of an LLM reranker's ``(batch, tokens)`` logits to one score logit per
    item, so that every reranker's row is a logit whose sigmoid is its probability.

    ``softmax`` (logits of the false then the true token, Qwen3-Reranker's "no" / "yes"):
    their difference, the log-odds; its sigmoid is exactly the softmax's "true"
    probability, ``e^yes / (e^no + e^yes)``, the model card's score. ``logit``
    (bge-reranker-v2-gemma's "Yes"): that logit as it is.
    """
    return _log_odds if formula == "softmax" else _pool_none


def last_real_token(mask: np.ndarray) -> np.ndarray:
    """Each row's last position whose mask is set: right padding (the server's) and left
    padding (Qwen3-Embedding's tokenizer) alike. A row without one gives the last index."""
    seen = np.asarray(mask)[:, ::-1] != 0
    index: np.ndarray = mask.shape[1] - 1 - np.argmax(seen, axis=1)
    return index


def _pool_last(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rows: np.ndarray = np.array(
        output[np.arange(output.shape[0]), last_real_token(mask)], dtype=np.float32
    )
    return rows


def _log_odds(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if output.ndim != 2 or output.shape[1] != 2:
        raise ValueError(
            f"a two-token score needs (batch, 2) logits, got shape {output.shape}; re-export "
            "the reranker with trt-async export"
        )
    logits = output.astype(np.float32, copy=False)
    rows: np.ndarray = logits[:, 1:2] - logits[:, 0:1]
    return rows


def _pool_cls(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rows: np.ndarray = np.array(output[:, 0, :], dtype=np.float32)
    return rows


def _pool_mean(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask.astype(np.float32)
    # A batched (1 x length) @ (length x hidden) product: BLAS, where einsum's loop was
    # 1.3-1.7x slower on the batches the server runs.
    sums = np.matmul(weights[:, None, :], output.astype(np.float32, copy=False))[:, 0, :]
    counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    rows: np.ndarray = (sums / counts).astype(np.float32, copy=False)
    return rows


def _pool_none(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if output.ndim != 2:
        raise ValueError(
            f"pooling 'none' needs a (batch, features) output, got shape {output.shape}; "
            "set pooling: mean or cls for a last_hidden_state output"
        )
    rows: np.ndarray = np.array(output, dtype=np.float32)
    return rows


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    # The squared norms as one row-wise dot product: np.linalg.norm costs several times
    # more on the small matrices of one request.
    squares = np.einsum("...i,...i->...", rows, rows)[..., None]
    unit: np.ndarray = rows / np.maximum(np.sqrt(squares), 1e-12)
    return unit


def finish_embeddings(rows: np.ndarray, *, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation to ``dimensions`` first, then (re-)normalisation."""
    if dimensions is not None:
        rows = rows[:, :dimensions]
    return l2_normalize(rows) if normalize else rows


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so large magnitudes neither overflow nor lose precision.
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    probs: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return probs


def cosine_scores(query: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Cosine of one query vector against each document vector (vLLM's score for embedders)."""
    q = l2_normalize(query.reshape(1, -1))
    d = l2_normalize(documents)
    scores: np.ndarray = (d @ q.T).ravel()
    return scores


def label_index(labels: Mapping[int, str], prefix: str) -> int | None:
    """Position of the first label starting with ``prefix`` (case-insensitive), as transformers."""
    for index in sorted(labels):
        if labels[index].lower().startswith(prefix):
            return index
    return None


def zero_shot_scores(
    logits: np.ndarray, labels: Mapping[int, str], *, multi_label: bool
) -> np.ndarray:
    """Scores per (text, candidate) from NLI logits shaped ``(texts, candidates, classes)``.

    As transformers' zero-shot pipeline: single-label is a softmax of the entailment logit
    across candidates; multi-label (or one candidate) is, per candidate, a softmax over
    [contradiction, entailment]. Positions come from the label map; where the map has no
    contradiction label the pipeline's fallback (0, or the last class if entailment is 0)
    is used.
    """
    entail = label_index(labels, "entail")
    if entail is None:
        raise ValueError(f"no entailment label in {dict(labels)}; zero-shot needs an NLI model")
    n_classes = logits.shape[-1]
    if multi_label or logits.shape[1] == 1:
        contra = label_index(labels, "contradict")
        if contra is None:
            contra = n_classes - 1 if entail == 0 else 0
        pair = logits[..., [contra, entail]]
        return softmax(pair, axis=-1)[..., 1]
    return softmax(logits[..., entail], axis=-1)


def top_labels(probs: np.ndarray, labels: Mapping[int, str]) -> list[list[tuple[str, float]]]:
    """Per row, (label, score) pairs sorted by score, highest first."""
    out = []
    for row in probs:
        order = np.argsort(-row, kind="stable")
        out.append([(labels.get(int(i), f"LABEL_{int(i)}"), float(row[i])) for i in order])
    return out


def predictions(logits: np.ndarray, labels: Mapping[int, str]) -> list[str]:
    return [labels.get(int(i), f"LABEL_{int(i)}") for i in np.argmax(logits, axis=-1)]
