"""Export decoder embedders and LLM rerankers (Qwen3, Qwen2, Mistral, Llama, Gemma) to ONNX.

:func:`~trt_async.tools.export.export_model` hands a folder here when its ``config.json``
names a decoder family (:data:`DECODER_MODEL_TYPES`).

* ``--task embed`` (Qwen3-Embedding, gte-Qwen2, e5-mistral): transformers' ``AutoModel``.
  The graph gives ``last_hidden_state``, or with ``--pool-in-graph`` each item's last real
  token's vector (``sentence_embedding``), found from the attention mask under left and
  right padding alike.
* ``--task rerank --template NAME`` (Qwen3-Reranker, bge-reranker-v2-gemma, mxbai-rerank-v2):
  ``AutoModelForCausalLM``, but only the LM-head rows of the tokens its score reads: the
  graph gathers the last real token's hidden state and gives ``logits`` ``(batch, 2)``
  (false, true) or ``(batch, 1)``, never the vocabulary.

Attention is causal unless the model's ``config.json`` says otherwise (transformers'
``is_causal: false``, or ``use_bidirectional_attention: true`` as text-embeddings-inference
reads it), or ``--mask`` is given. The server pads on the right, so a causal model's real
tokens never see a pad and keep the positions of an unpadded run.

The served ``tokenizer.json`` must tokenise as transformers' tokenizer of the model does
(sentence-transformers uses that one): where the file's post-processor differs (an EOS that
``tokenizer_config.json``'s ``add_eos_token`` adds), the file written is transformers'.
The manifest records the pooling, the padding side, whether an EOS is appended, the
sentence-transformers prompts and, for rerankers, the pair template and the score's tokens.

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec
import numpy as np
import numpy.typing as npt

from trt_async.backends.modelfiles import (
    MANIFEST_NAME,
    ONNX_NAME,
    AttentionMask,
    ExportManifest,
    PairTemplate,
    Pooling,
    ScoreHead,
    Task,
    position_limit,
    sha256_file,
)
from trt_async.core.heads import make_reducer
from trt_async.core.prompting import encode_llm_pairs
from trt_async.core.templates import BOS, RERANKERS, LlmReranker
from trt_async.core.tokenizer import TextTokenizer
from trt_async.tools import export
from trt_async.tools.export import ExportError, _Batch

#: ``model_type`` values exported here. Each family was checked against transformers on
#: tiny random models (tests/test_decoder_models.py).
DECODER_MODEL_TYPES = frozenset({"qwen2", "qwen3", "mistral", "llama", "gemma"})
ST_CONFIG = "config_sentence_transformers.json"
#: Longest sample input the export checks the graph on.
_SAMPLE_LENGTH = 512


def is_decoder(src: Path) -> bool:
    """Whether ``src``'s config.json names a decoder family exported here."""
    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # export_model's own checks explain what is wrong
    return isinstance(config, dict) and config.get("model_type") in DECODER_MODEL_TYPES


def last_token(hidden: Any, mask: Any) -> Any:
    """Each row's vector at its last real token: the largest position whose mask is set
    (right and left padding alike), as :func:`trt_async.core.heads.last_real_token`."""
    import torch

    positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)
    # ArgMax on float: ONNX Runtime's CPU ArgMax takes no int64 input.
    index = (mask.to(torch.float32) * positions).argmax(dim=1)
    gather = index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return torch.gather(hidden, 1, gather).squeeze(1)


def export_decoder_model(
    src: Path,
    task: Task,
    dst: Path,
    *,
    opset: int | None,
    progress: bool,
    exporter: export.Exporter,
    pool_in_graph: bool,
    heads: str,
    attention: export.Attention,
    quantize: export.Quantize,
    template: str | None,
    mask: AttentionMask | None,
) -> ExportManifest:
    """Export the decoder in ``src`` for ``task`` (see the module's docstring)."""
    step = export._Progress(progress)
    hf_config = export._check_source(src, "embed")  # the classifier check does not apply
    reranker = _check_options(src, task, hf_config, pool_in_graph, heads, quantize, template)
    if exporter not in get_args(export.Exporter):
        raise ExportError(f"unknown exporter {exporter!r}; use torchscript or dynamo")
    causal = _attention(src, hf_config, mask)
    pooling: Literal[Pooling, "none"] = _pooling(src) if task == "embed" else "none"
    prompts, default_prompt = _prompts(src)
    export._require_export_libraries(exporter)

    step(f"load {src.name} ({task}, {causal} attention)")
    hf_tok = _hf_tokenizer(src)
    model = _load(src, task, causal, attention, progress)
    max_length = position_limit(hf_config)
    input_names = ("input_ids", "attention_mask")
    dst.mkdir(parents=True, exist_ok=True)
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dst) as tmp:
        tokenizer_json, rewritten = _served_tokenizer(src, hf_tok)
        tok_path = Path(tmp) / "tokenizer.json"
        tok_path.write_text(tokenizer_json, encoding="utf-8")
        if rewritten:
            step("tokenizer.json written from transformers' tokenizer (the file's differs)")
        tok = TextTokenizer(
            tok_path, min(max_length or _SAMPLE_LENGTH, _SAMPLE_LENGTH), with_type_ids=False
        )
        score: ScoreHead | None = None
        pair_template: PairTemplate | None = None
        if reranker is not None:
            pair_template = _fill_bos(reranker.template, hf_tok)
            score = _score_head(reranker, tok)
            batches = _pair_batches(tok, pair_template)
        else:
            batches = _text_batches(tok)
        step(f"loaded: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

        # References first: the TorchScript exporter can leave the module unusable.
        graph_pooling: Pooling | None = None
        if score is not None:
            output_name = "logits"
            references = [_lm_logits(model, b, score.token_ids) for b in batches]
        else:
            output_name = "sentence_embedding" if pool_in_graph else "last_hidden_state"
            hidden = [_hidden(model, b) for b in batches]
            if pool_in_graph and pooling != "none":
                graph_pooling = pooling
                reduce = make_reducer(pooling)
                hidden = [reduce(h, b.mask) for h, b in zip(hidden, batches, strict=True)]
            references = hidden
        step(f"torch reference outputs for {sum(len(b.mask) for b in batches)} sample inputs")

        raw = Path(tmp) / ONNX_NAME
        step(f"export {ONNX_NAME} with the {exporter} exporter")
        module = (
            _ScoreGraph.build(model, score.token_ids)
            if score is not None
            else _EmbedGraph.build(model, graph_pooling)
        )
        export._torch_export(module, batches[0], input_names, [output_name], raw, exporter, opset)
        del model, module
        graph = export._finalise_onnx(raw, dst / ONNX_NAME)
    step(f"exported: opset {graph.opset}, {graph.size_mb:.1f} MB")

    step("verify with onnxruntime")
    worst = export._verify(
        dst / ONNX_NAME,
        batches,
        [(r,) for r in references],
        input_names,
        [output_name],
        pooling if graph_pooling is None else "none",
    )
    if worst > export.TOLERANCE:
        raise ExportError(
            f"{dst / ONNX_NAME}: ONNX Runtime differs from torch by {worst:.2e} (more than "
            f"{export.TOLERANCE:g}) on real tokens; try --exporter "
            f"{'dynamo' if exporter == 'torchscript' else 'torchscript'}"
        )
    step(f"verified: max abs diff {worst:.2e}")
    if quantize == "int8":
        step("quantise the weights to int8 (ONNX Runtime dynamic quantisation)")
        refs = [(r,) for r in references]
        served = pooling if graph_pooling is None else "none"
        cosine = export._quantize_int8(dst / ONNX_NAME, batches, refs, input_names, served)
        step(f"int8 verified: least cosine to torch {cosine:.4f}")

    step(f"write tokenizer and {MANIFEST_NAME}")
    export._copy_side_files(src, dst)
    (dst / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    if (src / ST_CONFIG).is_file() and (dst / ST_CONFIG).resolve() != (src / ST_CONFIG).resolve():
        (dst / ST_CONFIG).write_bytes((src / ST_CONFIG).read_bytes())
    suffix = tok.suffix_ids
    manifest = ExportManifest(
        task=task,
        inputs=list(input_names),
        output=output_name,
        outputs=[output_name],
        pooling="none" if pool_in_graph or task != "embed" else pooling,
        graph_pooling=graph_pooling,
        hidden_size=export._int_or_none(hf_config.get("hidden_size")),
        num_labels=None if task == "embed" else 1,
        id2label=None if task == "embed" else {0: "LABEL_0"},
        max_length=max_length,
        onnx_sha256=sha256_file(dst / ONNX_NAME),
        opset=graph.opset,
        exporter=f"torch-{export._torch_version()}/{exporter}",
        source=src.resolve().name,
        quantization=export.INT8_DYNAMIC if quantize == "int8" else None,
        attention=causal,
        padding_side=_padding_side(hf_tok),
        appends_eos=bool(suffix),
        eos_token_id=suffix[-1] if suffix else None,
        prompts=prompts,
        default_prompt_name=default_prompt,
        pair_template=pair_template,
        score=score,
    )
    tmp_manifest = dst / f".{MANIFEST_NAME}.tmp"
    tmp_manifest.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    tmp_manifest.replace(dst / MANIFEST_NAME)
    step(f"done: {dst}")
    return manifest


# --- checks and what the folder says ----------------------------------------------------------


def _check_options(
    src: Path,
    task: Task,
    hf_config: dict[str, Any],
    pool_in_graph: bool,
    heads: str,
    quantize: str,
    template: str | None,
) -> LlmReranker | None:
    if task == "nli":
        raise ExportError(f"{src}: a decoder model exports as --task embed or rerank, not nli")
    if heads == "m3":
        raise ExportError("--heads m3 applies to bge-m3 (an XLM-RoBERTa folder), not decoders")
    if quantize not in get_args(export.Quantize):
        raise ExportError(f"unknown quantize {quantize!r}; use none or int8")
    if task == "embed":
        if template is not None:
            raise ExportError("--template applies to LLM rerankers (--task rerank) only")
        return None
    if pool_in_graph:
        raise ExportError("--pool-in-graph applies to embedding models (--task embed) only")
    if quantize == "int8":
        raise ExportError("--int8 applies to embedding models: its check is a vector cosine")
    archs = [str(a) for a in hf_config.get("architectures") or []]
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise ExportError(
            f"{src / 'config.json'}: architectures is {archs}; an LLM reranker is a causal "
            "language model (…ForCausalLM) whose next-token logits make the score"
        )
    names = ", ".join(RERANKERS)
    if template is None:
        raise ExportError(
            f"{src}: a causal LM reranks by the template it was trained on; pass --template "
            f"with one of: {names}"
        )
    if template not in RERANKERS:
        raise ExportError(f"unknown template {template!r}; use one of: {names}")
    return RERANKERS[template]


def _attention(src: Path, hf_config: dict[str, Any], mask: AttentionMask | None) -> AttentionMask:
    """Causal unless the config or ``--mask`` says otherwise; a folder whose model is custom
    code that its config does not describe must say which."""
    if mask is not None:
        if mask not in get_args(AttentionMask):
            raise ExportError(f"unknown mask {mask!r}; use causal or bidirectional")
        return mask
    if hf_config.get("is_causal") is False or hf_config.get("use_bidirectional_attention"):
        return "bidirectional"
    auto_map = hf_config.get("auto_map")
    if isinstance(auto_map, dict) and "is_causal" not in hf_config and "AutoModel" in auto_map:
        # gte-Qwen2 ships its own modeling code (trained with bidirectional attention) and a
        # config that does not say so; transformers' own class is what is exported here.
        raise ExportError(
            f"{src / 'config.json'}: the model's own code ({auto_map['AutoModel']}) may attend "
            "bidirectionally (gte-Qwen2's does) and the config does not say; pass --mask "
            "bidirectional or --mask causal as the model card says, or set is_causal in "
            "config.json"
        )
    return "causal"


def _pooling(src: Path) -> Literal[Pooling, "none"]:
    """sentence-transformers' pooling where the folder has its config, else the last token
    (what every decoder embedder named in this module's docstring pools)."""
    has_pooling = (src / "modules.json").is_file() or (src / "1_Pooling" / "config.json").is_file()
    return export._pooling(src, "embed") if has_pooling else "last"


def _prompts(src: Path) -> tuple[dict[str, str] | None, str | None]:
    path = src / ST_CONFIG
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    raw = data.get("prompts") or {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ExportError(f"{path}: prompts must map names to texts")
    default = data.get("default_prompt_name")
    if default is not None and default not in raw:
        raise ExportError(
            f"{path}: default_prompt_name {default!r} is not one of its prompts ({sorted(raw)})"
        )
    return (dict(raw) or None), default


def _hf_tokenizer(src: Path) -> Any:
    import transformers

    with export._quiet():
        try:
            return transformers.AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"{src}: transformers cannot load the tokenizer: {exc}") from None


def _padding_side(hf_tok: Any) -> Literal["left", "right"] | None:
    side = getattr(hf_tok, "padding_side", None)
    return side if side in ("left", "right") else None


#: Texts on which the served tokenizer must agree with transformers'.
_AGREEMENT_TEXTS = (
    *export._SHORT_TEXTS,
    export._PARAGRAPH,
    "  leading spaces, trailing\n",
    "<|im_start|>user\nyes or no?<|im_end|>",
)


def _served_tokenizer(src: Path, hf_tok: Any) -> tuple[str, bool]:
    """The tokenizer.json to serve, and whether it is transformers' rather than the file.

    transformers rebuilds some tokenizers from their vocabularies and its own settings
    (Qwen2's normaliser and split pattern, for one), so the file and the tokenizer
    sentence-transformers uses can differ, and only for some texts (NFC changes only
    decomposed characters). Where their pipelines differ, the one transformers runs is
    served; either way it must then tokenise sample texts as transformers does.
    """
    from tokenizers import Tokenizer

    text = (src / "tokenizer.json").read_text(encoding="utf-8")
    backend = getattr(hf_tok, "backend_tokenizer", None)
    served, rewritten = text, False
    if backend is not None and _pipeline(backend.to_str()) != _pipeline(text):
        rebuilt = Tokenizer.from_str(backend.to_str())
        rebuilt.no_padding()
        rebuilt.no_truncation()
        served, rewritten = str(rebuilt.to_str()), True
    if not _agrees(Tokenizer.from_str(served), hf_tok):
        raise ExportError(
            f"{src / 'tokenizer.json'}: tokenises differently from transformers' tokenizer of "
            "the model; save the tokenizer again with AutoTokenizer.from_pretrained(folder)"
            ".save_pretrained(folder)"
        )
    return served, rewritten


#: The parts of a tokenizer.json that decide the ids (padding and truncation are the server's).
_PIPELINE_KEYS = ("added_tokens", "normalizer", "pre_tokenizer", "model", "post_processor")


def _pipeline(tokenizer_json: str) -> list[Any]:
    data = json.loads(tokenizer_json)
    return [data.get(key) for key in _PIPELINE_KEYS]


def _agrees(rust: Any, hf_tok: Any) -> bool:
    rust.no_padding()
    rust.no_truncation()
    for text in _AGREEMENT_TEXTS:
        ours = rust.encode(text, add_special_tokens=True).ids
        theirs = hf_tok(text, add_special_tokens=True)["input_ids"]
        if list(ours) != list(theirs):
            return False
    return True


def _fill_bos(template: PairTemplate, hf_tok: Any) -> PairTemplate:
    texts = (*template.before, template.query, *template.between, *template.after)
    if not any(BOS in t for t in texts):
        return template
    bos = getattr(hf_tok, "bos_token", None)
    if not bos:
        raise ExportError(f"template {template.name} starts with BOS; this tokenizer has none")

    def fill(items: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t.replace(BOS, bos) for t in items)

    return msgspec.structs.replace(
        template,
        before=fill(template.before),
        between=fill(template.between),
        after=fill(template.after),
        query=template.query.replace(BOS, bos),
    )


def _score_head(reranker: LlmReranker, tok: TextTokenizer) -> ScoreHead:
    """The score tokens' ids, each the one id its text tokenises to (as the reference code
    reads them: ``tokenizer("yes", add_special_tokens=False)["input_ids"][0]``)."""
    ids: list[int] = []
    for token in reranker.tokens:
        found = tok.untruncated.encode(token, add_special_tokens=False).ids
        if len(found) != 1:
            raise ExportError(
                f"the score token {token!r} of template {reranker.template.name} is {len(found)} "
                "tokens in this tokenizer, not one: is --template right for this model?"
            )
        ids.append(found[0])
    return ScoreHead(formula=reranker.formula, tokens=list(reranker.tokens), token_ids=ids)


# --- sample inputs ----------------------------------------------------------------------------


def _pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> _Batch:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return _Batch(feeds={"input_ids": ids, "attention_mask": mask}, mask=mask.astype(bool))


def _text_batches(tok: TextTokenizer) -> list[_Batch]:
    """A short mixed-length batch (also the trace's example: it has padding) and a long
    one reaching the sample length."""
    long_text = export._PARAGRAPH * (tok.max_length // 8 + 1)
    short = tok.encode(list(export._SHORT_TEXTS), truncate=True)
    long = tok.encode([long_text, export._SHORT_TEXTS[1]], truncate=True)
    return [_pad_right([e.ids for e in items], tok.pad_id) for items in (short, long)]


def _pair_batches(tok: TextTokenizer, template: PairTemplate) -> list[_Batch]:
    query = export._SHORT_TEXTS[1]
    long_text = export._PARAGRAPH * (tok.max_length // 8 + 1)
    short = encode_llm_pairs(
        tok, template, query, list(export._SHORT_TEXTS), instruction=None, truncate=True
    )
    long = encode_llm_pairs(
        tok, template, query, [long_text, export._SHORT_TEXTS[0]], instruction=None, truncate=True
    )
    return [_pad_right([e.ids for e in items], tok.pad_id) for items in (short, long)]


# --- torch side -------------------------------------------------------------------------------


def _load(
    src: Path, task: Task, causal: AttentionMask, attention: export.Attention, progress: bool
) -> Any:
    import torch
    import transformers

    auto: Any = transformers.AutoModel if task == "embed" else transformers.AutoModelForCausalLM
    with export._quiet(progress_bars=progress):
        try:
            model, info = auto.from_pretrained(
                str(src),
                dtype=torch.float32,
                attn_implementation=attention,
                output_loading_info=True,
                local_files_only=True,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"{src}: transformers cannot load the model: {exc}") from None
    missing = list(info.get("missing_keys", ()))
    if missing:
        raise ExportError(
            f"{src}: the checkpoint lacks weights the {task} model needs ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); is --task {task} right for this model?"
        )
    # transformers' masks read the config's is_causal (masking_utils.create_causal_mask).
    model.config.is_causal = causal == "causal"
    model.config.use_cache = False
    return model.eval()


def _feeds(batch: _Batch) -> tuple[Any, Any]:
    import torch

    return (
        torch.from_numpy(batch.feeds["input_ids"]),
        torch.from_numpy(batch.feeds["attention_mask"]),
    )


def _hidden(model: Any, batch: _Batch) -> npt.NDArray[np.float32]:
    import torch

    ids, mask = _feeds(batch)
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, return_dict=False)[0]
    return np.asarray(out.float().numpy(), dtype=np.float32)


def _lm_logits(model: Any, batch: _Batch, token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
    """The full causal LM's logits of ``token_ids`` at each item's last real token."""
    import torch

    ids, mask = _feeds(batch)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    last = torch.from_numpy(batch.mask.shape[1] - 1 - np.argmax(batch.mask[:, ::-1], axis=1))
    rows = logits[torch.arange(len(last)), last][:, list(token_ids)]
    return np.asarray(rows.float().numpy(), dtype=np.float32)


class _EmbedGraph:
    @staticmethod
    def build(model: Any, pooling: Pooling | None) -> Any:
        import torch

        class Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                hidden = self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    use_cache=False,
                    return_dict=False,
                )[0]
                if pooling == "last":
                    return last_token(hidden, attention_mask)
                if pooling == "mean":
                    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                if pooling == "cls":
                    return hidden[:, 0]
                return hidden

        return Graph().eval()


class _ScoreGraph:
    @staticmethod
    def build(model: Any, token_ids: Sequence[int]) -> Any:
        """The decoder, the last real token's hidden state, and the LM head's rows of
        ``token_ids`` (with the model's final logit soft-capping, if it has one)."""
        import torch

        head = model.get_output_embeddings()
        rows = head.weight.detach()[list(token_ids)].clone()
        bias = head.bias.detach()[list(token_ids)].clone() if head.bias is not None else None
        cap = getattr(model.config, "final_logit_softcapping", None)

        class Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.decoder = model.get_decoder()
                self.rows = torch.nn.Parameter(rows, requires_grad=False)
                self.bias = (
                    torch.nn.Parameter(bias, requires_grad=False) if bias is not None else None
                )

            def forward(self, input_ids: Any, attention_mask: Any) -> Any:
                hidden = self.decoder(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    use_cache=False,
                    return_dict=False,
                )[0]
                logits = last_token(hidden, attention_mask) @ self.rows.T
                if self.bias is not None:
                    logits = logits + self.bias
                if cap is not None:
                    logits = torch.tanh(logits / cap) * cap
                return logits

        return Graph().eval()


# --- command line -----------------------------------------------------------------------------


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    """``trt-async export``'s options for decoder models."""
    parser.add_argument(
        "--template",
        choices=sorted(RERANKERS),
        default=None,
        help="rerank with a causal LM (Qwen3-Reranker, bge-reranker-v2-gemma, "
        "mxbai-rerank-v2): the pair template it was trained on",
    )
    parser.add_argument(
        "--mask",
        choices=get_args(AttentionMask),
        default=None,
        help="decoders: attention as the model was trained (default: causal unless config.json "
        "sets is_causal false or use_bidirectional_attention true)",
    )


def decoder_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"template": args.template, "mask": args.mask}
