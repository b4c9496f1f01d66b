"""Token-level heads: bge-m3's sparse (lexical) weights and ColBERT vectors, and raw token
vectors (TEI's ``/embed_all``), reduced per item from one forward pass.

A graph exported with bge-m3's heads (``trt-async export --task embed`` on a folder with
FlagEmbedding's ``colbert_linear.pt`` and ``sparse_linear.pt``) gives, besides the dense
CLS vector, one sparse weight per token (``relu(sparse_linear(h))``) and one ColBERT vector
per token (``colbert_linear(h)``). The reducers below turn them into what FlagEmbedding's
``BGEM3FlagModel.encode`` returns (FlagEmbedding, ``inference/embedder/encoder_only/m3.py``,
``_process_token_weights`` and ``_process_colbert_vecs``; the model's forward in
``finetune/embedder/encoder_only/m3/modeling.py``):

* lexical weights: ``{token id: weight}`` over the item's real tokens, keeping the largest
  weight of a repeated token, dropping weights that are not positive and the tokenizer's
  cls, eos, pad and unk tokens;
* ColBERT vectors: one per real token after the first (the CLS position is not used), each
  L2-normalised (``F.normalize`` with FlagEmbedding's default ``normalize_embeddings``).

They run in the batch worker thread, right after the backend, on only the items that ask.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trt_async.backends.base import COLBERT_OUTPUT, SPARSE_OUTPUT, TOKEN_OUTPUTS

#: The dense (CLS) output of a graph exported with bge-m3's heads.
DENSE_OUTPUT = "sentence_embedding"

#: What a request may ask for besides its pooled row.
Head = Literal["sparse", "colbert", "tokens"]
HEADS: tuple[Head, ...] = ("sparse", "colbert", "tokens")


@dataclass(frozen=True, slots=True)
class SparseVector:
    """One item's lexical weights: token ids (ascending) and their weights."""

    ids: np.ndarray
    weights: np.ndarray

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.ids.tolist(), self.weights.tolist(), strict=True))


#: ``reduce(output, input_ids, mask) -> one value per item`` over a batch's real rows.
HeadReducer = Callable[[np.ndarray, np.ndarray, np.ndarray], list[object]]


def head_outputs(outputs: Collection[str]) -> dict[Head, str]:
    """Which graph output serves each head the graph can answer."""
    found: dict[Head, str] = {}
    if SPARSE_OUTPUT in outputs:
        found["sparse"] = SPARSE_OUTPUT
    if COLBERT_OUTPUT in outputs:
        found["colbert"] = COLBERT_OUTPUT
    token = next((name for name in TOKEN_OUTPUTS if name in outputs), None)
    if token is not None:
        found["tokens"] = token
    return found


def sparse_reducer(skip_ids: Collection[int]) -> HeadReducer:
    """Per item ``max`` over repeated token ids of the positive weights, ``skip_ids`` dropped."""
    skip = np.array(sorted(set(skip_ids)), dtype=np.int64)

    def reduce(weights: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> list[object]:
        w = weights.reshape(weights.shape[0], weights.shape[1]).astype(np.float32, copy=False)
        keep = mask.astype(bool) & (w > 0) & ~np.isin(ids, skip)
        out: list[object] = []
        for row in range(w.shape[0]):
            row_ids = ids[row][keep[row]].astype(np.int64)
            row_w = w[row][keep[row]]
            unique, inverse = np.unique(row_ids, return_inverse=True)
            best = np.zeros(len(unique), dtype=np.float32)
            np.maximum.at(best, inverse, row_w)
            out.append(SparseVector(unique, best))
        return out

    return reduce


def colbert_vectors(vecs: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> list[object]:
    """Per item its real tokens' vectors after the first (CLS), each L2-normalised."""
    lengths = mask.astype(bool).sum(axis=1)
    out: list[object] = []
    for row, n in enumerate(lengths.tolist()):
        v = np.array(vecs[row, 1:n], dtype=np.float32)
        norms = np.linalg.norm(v, axis=-1, keepdims=True)
        out.append(v / np.maximum(norms, 1e-12))
    return out


def token_vectors(hidden: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> list[object]:
    """Per item the hidden state of each real token, special tokens included (as TEI)."""
    lengths = mask.astype(bool).sum(axis=1)
    return [np.array(hidden[row, :n], dtype=np.float32) for row, n in enumerate(lengths.tolist())]


def make_head_reducers(
    outputs: Collection[str], skip_ids: Collection[int]
) -> dict[Head, tuple[str, HeadReducer]]:
    """For each head the graph answers: the output it reads and its reducer."""
    reducers: dict[Head, HeadReducer] = {
        "sparse": sparse_reducer(skip_ids),
        "colbert": colbert_vectors,
        "tokens": token_vectors,
    }
    return {head: (name, reducers[head]) for head, name in head_outputs(outputs).items()}
