"""bge-m3's heads in the exported graph: dense, sparse and ColBERT from one forward pass.

FlagEmbedding saves a BGE-M3 checkpoint as an XLM-RoBERTa folder plus two
``torch.nn.Linear`` state dicts beside it: ``colbert_linear.pt`` (hidden -> ColBERT dim)
and ``sparse_linear.pt`` (hidden -> 1). Its model (FlagEmbedding,
``finetune/embedder/encoder_only/m3/modeling.py``: ``_dense_embedding`` with CLS pooling,
``_sparse_embedding``, ``_colbert_embedding``) computes from the last hidden state ``h``:

* dense: ``h[:, 0]`` (normalised by the caller);
* sparse token weights: ``relu(sparse_linear(h))``;
* ColBERT vectors: ``colbert_linear(h[:, 1:])`` (masked, then normalised by the caller).

The graph written here returns ``sentence_embedding`` (the CLS vector), ``sparse_weights``
``(batch, length)``, ``colbert_vecs`` ``(batch, length, dim)`` and ``last_hidden_state``.
ColBERT is computed for every position, CLS included, so each per-token output has the
input's length; the server drops position 0 (``trt_async.core.multivector``), which gives
exactly ``colbert_linear(h[:, 1:])``. Normalisation, the max over repeated tokens and the
special tokens' removal happen per request in the server.

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from trt_async.backends.base import COLBERT_OUTPUT, SPARSE_OUTPUT
from trt_async.core.multivector import DENSE_OUTPUT

COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"
HIDDEN_OUTPUT = "last_hidden_state"
#: Output names of a bge-m3 graph, in the graph's order.
M3_OUTPUTS = (DENSE_OUTPUT, SPARSE_OUTPUT, COLBERT_OUTPUT, HIDDEN_OUTPUT)
#: Outputs with a length axis (the rest are one row per item).
PER_TOKEN = frozenset({SPARSE_OUTPUT, COLBERT_OUTPUT, HIDDEN_OUTPUT})
#: The tokenizer's tokens FlagEmbedding leaves out of the lexical weights.
SKIPPED_SPECIAL_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")

HeadsOption = Literal["auto", "m3", "none"]


class M3LayoutError(Exception):
    """A folder asked to export bge-m3 heads that lacks them or carries broken ones."""


def wants_m3(src: Path, option: HeadsOption) -> bool:
    """Whether to export the heads: ``auto`` when both files are there, ``m3`` always."""
    present = [name for name in (COLBERT_FILE, SPARSE_FILE) if (src / name).is_file()]
    if option == "none":
        return False
    if option == "m3" and len(present) < 2:
        missing = sorted({COLBERT_FILE, SPARSE_FILE} - set(present))
        raise M3LayoutError(
            f"{src}: --heads m3 needs FlagEmbedding's {' and '.join(missing)} beside the "
            "checkpoint (copy them from the bge-m3 model repository)"
        )
    if option == "auto" and len(present) == 1:
        raise M3LayoutError(
            f"{src}: only {present[0]} is there; bge-m3's heads need both {COLBERT_FILE} and "
            f"{SPARSE_FILE} (or pass --heads none to export the dense model alone)"
        )
    return len(present) == 2


def _linear(path: Path, in_features: int) -> Any:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        weight = state["weight"]
        layer = torch.nn.Linear(in_features, int(weight.shape[0]))
        layer.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise M3LayoutError(
            f"{path}: not a Linear({in_features}, n) state dict as FlagEmbedding saves: {exc}"
        ) from None
    return layer.float().eval()


def wrap_m3(model: Any, src: Path, hidden_size: int, input_names: tuple[str, ...]) -> Any:
    """The encoder and both heads as one module returning :data:`M3_OUTPUTS`."""
    import torch

    colbert = _linear(src / COLBERT_FILE, hidden_size)
    sparse = _linear(src / SPARSE_FILE, hidden_size)
    if sparse.out_features != 1:
        raise M3LayoutError(f"{src / SPARSE_FILE}: {sparse.out_features} outputs, expected 1")

    class M3Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.colbert_linear = colbert
            self.sparse_linear = sparse

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs, return_dict=False)[0]
            weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1)
            return hidden[:, 0], weights, self.colbert_linear(hidden), hidden

    return M3Graph().eval()


def skipped_token_ids(src: Path) -> list[int]:
    """Ids of cls, eos, pad and unk as FlagEmbedding finds them (the tokenizer's special
    tokens map, through transformers' AutoTokenizer)."""
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise M3LayoutError(f"{src}: transformers cannot load the tokenizer: {exc}") from None
    ids: set[int] = set()
    for name in SKIPPED_SPECIAL_TOKENS:
        token = tok.special_tokens_map.get(name)
        if isinstance(token, str):
            found = tok.convert_tokens_to_ids(token)
            if isinstance(found, int):
                ids.add(found)
    return sorted(ids)
