"""A tiny bge-m3 in FlagEmbedding's layout, and FlagEmbedding's own model as the reference.

The folder is what the real BAAI/bge-m3 repository holds, shrunk: an XLM-RoBERTa checkpoint
(``config.json``, weights, ``tokenizer.json``), sentence-transformers' CLS pooling config,
and FlagEmbedding's two heads saved as ``torch.nn.Linear`` state dicts,
``colbert_linear.pt`` (hidden -> hidden) and ``sparse_linear.pt`` (hidden -> 1), as
FlagEmbedding's ``EncoderOnlyEmbedderM3Model.save`` writes them. Weights are random but
seeded; the heads are scaled so that sparse weights are positive for some tokens and zero
(after the relu) for others, and ColBERT vectors differ visibly per token.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

from tests.models import HIDDEN_SIZE, tiny_xlmr_config, write_xlmr_tokenizer

COLBERT_DIM = HIDDEN_SIZE


def write_xlmr_m3(out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer XLMRobertaModel with random bge-m3 heads, in FlagEmbedding's layout."""
    import torch
    from tokenizers import Tokenizer
    from transformers import XLMRobertaModel

    write_xlmr_tokenizer(out_dir)
    vocab_size = Tokenizer.from_file(str(out_dir / "tokenizer.json")).get_vocab_size()
    config = tiny_xlmr_config(vocab_size, architectures=["XLMRobertaModel"])
    torch.manual_seed(seed)
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    model.save_pretrained(out_dir)
    gen = torch.Generator().manual_seed(seed + 1)
    colbert = torch.nn.Linear(HIDDEN_SIZE, COLBERT_DIM)
    sparse = torch.nn.Linear(HIDDEN_SIZE, 1)
    with torch.no_grad():
        colbert.weight.copy_(torch.randn(colbert.weight.shape, generator=gen) * 0.3)
        colbert.bias.copy_(torch.randn(colbert.bias.shape, generator=gen) * 0.1)
        sparse.weight.copy_(torch.randn(sparse.weight.shape, generator=gen) * 0.3)
        sparse.bias.zero_()
    torch.save(colbert.state_dict(), out_dir / "colbert_linear.pt")
    torch.save(sparse.state_dict(), out_dir / "sparse_linear.pt")
    kinds = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    modules = [
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(kinds)
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN_SIZE, "pooling_mode_cls_token": True})
    )
    return out_dir


def flag_m3_model(hf_dir: Path) -> Any:
    """FlagEmbedding's ``BGEM3FlagModel`` on the folder (CPU, fp32), or skip without it.

    FlagEmbedding 1.4 imports, at package import, decoder-only rerankers that need
    ``transformers.modeling_attn_mask_utils``, which transformers 5 removed. The BGE-M3
    embedder never touches them, so an empty stand-in module lets the package import; it is
    installed only when the real module is missing, and any use of it would fail loudly.
    """
    import importlib.util

    import pytest

    if importlib.util.find_spec("FlagEmbedding") is None:
        pytest.skip("the bge-m3 reference is FlagEmbedding's (pip install FlagEmbedding)")
    name = "transformers.modeling_attn_mask_utils"
    try:
        __import__(name)
    except ModuleNotFoundError:
        stub = types.ModuleType(name)
        for attr in (
            "AttentionMaskConverter",
            "_prepare_4d_attention_mask",
            "_prepare_4d_causal_attention_mask",
            "_prepare_4d_attention_mask_for_sdpa",
            "_prepare_4d_causal_attention_mask_for_sdpa",
        ):
            setattr(stub, attr, _unavailable(attr))
        sys.modules[name] = stub
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(hf_dir), use_fp16=False, devices="cpu")


def _unavailable(attr: str) -> Any:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{attr} is a stand-in: transformers 5 has no modeling_attn_mask_utils")

    # Modules importing it may register it with torch.fx.wrap, which looks it up later by
    # __name__ in their globals: it must carry the name they import it under.
    fail.__name__ = fail.__qualname__ = attr
    return fail
