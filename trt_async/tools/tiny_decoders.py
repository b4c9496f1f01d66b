"""Tiny randomly initialised decoder models, for checking and measuring the server:
embedders and LLM rerankers.

Each builder writes a Hugging Face folder of a seeded, randomly initialised transformers
model with a small byte-level BPE tokenizer trained here (on
:func:`trt_async.tools.tiny_models.corpus`), laid out as the hub's folders are:

* Qwen3 and Qwen2 embedders as Qwen3-Embedding ships (``Qwen2Tokenizer`` whose
  tokenizer.json appends ``<|endoftext|>``, left padding, sentence-transformers' last-token
  pooling, normalisation and prompts in the legacy config format the hub's folders hold);
* a Mistral embedder (e5-mistral's family) whose tokenizer adds BOS and appends EOS;
* LLM rerankers: Qwen3 (Qwen3-Reranker), Gemma (bge-reranker-v2-gemma), Qwen2 (mxbai-rerank-v2).

torch, transformers and tokenizers are imported only inside the builders (the export extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from trt_async.tools.tiny_models import corpus

Family = Literal["qwen3", "qwen2", "mistral", "llama", "gemma"]

HIDDEN = 64
MAX_POSITIONS = 1024
#: Asked of the trainer; the corpus yields fewer pieces.
VOCAB = 900
QWEN3_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)
PROMPTS = {"query": QWEN3_QUERY_PROMPT, "document": "", "terse": "query: "}
#: Qwen2's pre-tokenizer pattern (transformers' Qwen2Tokenizer rebuilds the pipeline with it).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Lines that make the rerankers' words single tokens (as "yes" is in Qwen's vocabulary).
_RERANK_WORDS = ["yes", "no", "Yes", "No", "query", "document", "Query", "Document"] * 40


def _specials(family: Family) -> list[str]:
    if family in ("qwen3", "qwen2"):
        return ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if family == "gemma":
        return ["<pad>", "<eos>", "<bos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    return ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def write_tokenizer(
    out_dir: Path,
    family: Family,
    *,
    appends_eos: bool,
    file_pre_tokenizer: Literal["own", "gpt2"] = "own",
) -> int:
    """A byte-level BPE tokenizer.json + tokenizer_config.json; returns the vocabulary size.

    Qwen families get Qwen's own pipeline (NFC, its split pattern, byte-level) under
    ``Qwen2Tokenizer``; the others load as ``PreTrainedTokenizerFast`` (as is).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    specials = _specials(family)
    tok = Tokenizer(models.BPE())
    qwen = family in ("qwen3", "qwen2")
    if qwen:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*corpus(), *_RERANK_WORDS], trainer=trainer)
    config: dict[str, Any] = {"model_max_length": MAX_POSITIONS, "padding_side": "left"}
    if qwen:
        eot = tok.token_to_id("<|endoftext|>")
        tok.post_processor = (
            processors.TemplateProcessing(
                single="$A:0 <|endoftext|>:0",
                pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
                special_tokens=[("<|endoftext|>", eot)],
            )
            if appends_eos
            else processors.ByteLevel(trim_offsets=False)
        )
        # As Qwen3-Embedding's: EOS is <|im_end|>, while the appended token is the pad.
        config |= {
            "tokenizer_class": "Qwen2Tokenizer",
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "bos_token": None,
        }
    elif family == "gemma":
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos>:0 $A:0", pair="<bos>:0 $A:0 <bos>:1 $B:1", special_tokens=[("<bos>", bos)]
        )
        config |= {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
        }
    else:
        bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
        end = " </s>:0" if appends_eos else ""
        tok.post_processor = processors.TemplateProcessing(
            single=f"<s>:0 $A:0{end}",
            pair=f"<s>:0 $A:0{end} $B:1{end.replace(':0', ':1')}",
            special_tokens=[("<s>", bos), ("</s>", eos)],
        )
        config |= {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "</s>",
        }
    if file_pre_tokenizer == "gpt2":
        # Another tool's file: GPT-2's split pattern where transformers' Qwen2Tokenizer
        # rebuilds Qwen's (digits one by one), so the two tokenise differently.
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return int(tok.get_vocab_size())


def _config(family: Family, vocab_size: int, tok_dir: Path, **extra: Any) -> Any:
    import transformers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    ids: dict[str, Any] = {}
    cls: Any
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": MAX_POSITIONS,
        # Wide weights: with the default 0.02 every output is near zero and a swapped token
        # or a dropped position would still pass a 1e-4 comparison.
        "initializer_range": 0.2,
    }
    if family in ("qwen3", "qwen2"):
        eot = tok.token_to_id("<|endoftext|>")
        ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
        cls = transformers.Qwen3Config if family == "qwen3" else transformers.Qwen2Config
        if family == "qwen3":
            common["tie_word_embeddings"] = True  # as Qwen3-0.6B's
    elif family == "gemma":
        ids = {
            "bos_token_id": tok.token_to_id("<bos>"),
            "eos_token_id": tok.token_to_id("<eos>"),
            "pad_token_id": tok.token_to_id("<pad>"),
        }
        common |= {"num_key_value_heads": 1, "hidden_act": "gelu_pytorch_tanh"}
        cls = transformers.GemmaConfig
    else:
        ids = {"bos_token_id": tok.token_to_id("<s>"), "eos_token_id": tok.token_to_id("</s>")}
        cls = transformers.MistralConfig if family == "mistral" else transformers.LlamaConfig
        if family == "mistral":
            common["sliding_window"] = None
    return cls(**{**common, **ids, **extra})


def write_decoder_embedder(
    out_dir: Path,
    family: Family,
    *,
    seed: int = 0,
    bidirectional: bool = False,
    sentence_transformers: bool = True,
    file_pre_tokenizer: Literal["own", "gpt2"] = "own",
    **sizes: Any,
) -> Path:
    """A decoder embedder folder: weights saved from ``AutoModel``'s class, sentence-
    transformers' files for last-token pooling, normalisation and :data:`PROMPTS`;
    ``bidirectional`` sets ``is_causal: false`` in config.json (transformers' switch);
    ``sizes`` override the config's (``hidden_size``, ``num_attention_heads``...)."""
    import torch
    import transformers

    vocab = write_tokenizer(
        out_dir, family, appends_eos=True, file_pre_tokenizer=file_pre_tokenizer
    )
    extra: dict[str, Any] = {"is_causal": False} if bidirectional else {}
    extra |= sizes
    arch = {
        "qwen3": "Qwen3ForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "mistral": "MistralModel",
        "llama": "LlamaModel",
        "gemma": "GemmaModel",
    }[family]
    config = _config(family, vocab, out_dir, architectures=[arch], **extra)
    torch.manual_seed(seed)
    auto: Any = transformers.AutoModel
    model = auto.from_config(config).eval()
    model.save_pretrained(out_dir)
    if sentence_transformers:
        write_sentence_transformers_files(out_dir, config.hidden_size)
    return out_dir


def write_sentence_transformers_files(out_dir: Path, dim: int) -> None:
    """modules.json, 1_Pooling (last token), 2_Normalize and the prompts, as Qwen3-Embedding's
    repository has them (sentence-transformers' pre-6 format, which it still reads)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True,
        "include_prompt": True,
    }
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_POSITIONS, "do_lower_case": False})
    )
    st = {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (out_dir / "config_sentence_transformers.json").write_text(json.dumps(st, indent=2))


def write_llm_reranker(out_dir: Path, family: Family, *, seed: int = 0) -> Path:
    """A causal LM folder (``…ForCausalLM``) whose tokenizer appends nothing, as
    Qwen3-Reranker's and mxbai-rerank-v2's; Gemma's adds BOS as bge-reranker-v2-gemma's."""
    import torch
    import transformers

    vocab = write_tokenizer(out_dir, family, appends_eos=False)
    arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}
    config = _config(family, vocab, out_dir, architectures=[arch[family]])
    torch.manual_seed(seed)
    auto: Any = transformers.AutoModelForCausalLM
    model = auto.from_config(config).eval()
    model.save_pretrained(out_dir)
    return out_dir
