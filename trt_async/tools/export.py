"""Export a Hugging Face encoder folder to an ONNX model folder the server reads.

``trt-async export <hf-folder> --task embed|rerank|nli -o <model-dir>`` writes
``model.onnx`` (dynamic batch and sequence axes), ``tokenizer.json``, ``config.json``,
sentence-transformers' pooling config when there is one, and ``trt_async.json`` (the
:class:`~trt_async.backends.modelfiles.ExportManifest`). The graph is checked against torch with
ONNX Runtime before the manifest is written, so a folder with a manifest is a verified one.

torch and transformers are imported only inside the functions: the CLI and the server
import this module without them.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    Pooling,
    Task,
    position_limit,
    sentence_transformers_pooling_modes,
    sha256_file,
)
from trt_async.core.heads import l2_normalize, make_reducer
from trt_async.tools import m3
from trt_async.tools.m3 import HeadsOption

Exporter = Literal["torchscript", "dynamo"]
#: transformers' attention implementation the graph is traced from.
Attention = Literal["eager", "sdpa"]

#: Largest difference allowed between ONNX Runtime and torch on real tokens.
TOLERANCE = 1e-3
#: ``int8``: ONNX Runtime's dynamic quantisation of the weights (never the default).
Quantize = Literal["none", "int8"]
#: Least cosine allowed between an int8 graph's pooled vectors and torch's (fp32).
INT8_MIN_COSINE = 0.98
#: What the manifest records for an int8 export.
INT8_DYNAMIC = "int8-dynamic"
#: Default opset of the TorchScript exporter; the dynamo exporter picks its own.
TORCHSCRIPT_OPSET = 17
#: Above this the weights go to ``model.onnx.data`` (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_INSTALL_HINT = "pip install torch==2.13.0 then pip install 'trt-async[cpu,export]'"

_SHORT_TEXTS = (
    "hello",
    "What is the capital of France?",
    "今天天氣很好，我們去公園散步吧。",
)
_PARAGRAPH = (
    "TensorRT compiles a network into an engine tuned for one GPU; ONNX Runtime runs the same "
    "graph on the CPU. 文字嵌入模型把句子轉成向量，重排序模型為查詢和文件的配對打分。 "
)


class ExportError(Exception):
    """An export that cannot proceed or did not verify; the message names the file and the fix."""


@dataclass(frozen=True)
class _Batch:
    feeds: dict[str, npt.NDArray[np.int64]]
    mask: npt.NDArray[np.bool_]


class _Progress:
    """Steps on stderr with the time since the export began: export takes seconds to minutes."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[export {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def export_model(
    hf_dir: str | Path,
    task: Task,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    progress: bool = True,
    exporter: Exporter = "torchscript",
    pool_in_graph: bool = False,
    heads: HeadsOption = "auto",
    attention: Attention = "eager",
    quantize: Quantize = "none",
    template: str | None = None,
    mask: AttentionMask | None = None,
) -> ExportManifest:
    """Export ``hf_dir`` for ``task`` into ``out_dir`` and return the manifest written there.

    ``exporter="torchscript"`` (the default) exports in about 2 s for a small model and its
    graph ran a little faster under ONNX Runtime; ``"dynamo"`` is torch's newer exporter.
    ``pool_in_graph`` (embedders only) folds the pooling into the graph, whose output is then
    ``sentence_embedding`` (batch, hidden): on a GPU only that crosses back to the host,
    not the (batch, length, hidden) hidden states. Normalisation stays in the server, where
    requests choose it and Matryoshka truncation needs the unnormalised vector.
    ``heads`` (embedders only): ``auto`` exports bge-m3's sparse and ColBERT heads with the
    dense vector when FlagEmbedding's head files are in the folder (:mod:`.m3`), ``m3``
    requires them, ``none`` ignores them. ``attention="sdpa"`` exports transformers' default
    attention instead of the eager one, for comparing the two graphs.
    ``quantize="int8"`` (embedders only, ONNX Runtime only) stores the weights as 8-bit
    integers and quantises activations per batch (ONNX Runtime's dynamic quantisation),
    after the fp32 graph has been verified; the int8 graph must keep a cosine of at least
    :data:`INT8_MIN_COSINE` to torch's vectors on the sample inputs.
    Decoder models (Qwen3, Qwen2, Mistral, Llama, Gemma) are exported by
    :mod:`.export_decoder`, which reads ``template`` (LLM rerankers) and ``mask``.
    """
    from trt_async.tools import export_clip, export_decoder

    if export_clip.is_image_text(Path(hf_dir)):
        raise ExportError(
            f"{hf_dir} is a CLIP/SigLIP model (two towers): export it with "
            "trt_async.tools.export_clip.export_image_text_model"
        )
    if export_decoder.is_decoder(Path(hf_dir)):
        return export_decoder.export_decoder_model(
            Path(hf_dir),
            task,
            Path(out_dir),
            opset=opset,
            progress=progress,
            exporter=exporter,
            pool_in_graph=pool_in_graph,
            heads=heads,
            attention=attention,
            quantize=quantize,
            template=template,
            mask=mask,
        )
    if template is not None or mask is not None:
        raise ExportError(
            "--template and --mask apply to decoder models (Qwen3, Qwen2, Mistral, Llama, "
            f"Gemma); {hf_dir} is not one"
        )
    if task not in get_args(Task):
        raise ExportError(f"unknown task {task!r}; use one of {', '.join(get_args(Task))}")
    if exporter not in get_args(Exporter):
        raise ExportError(f"unknown exporter {exporter!r}; use torchscript or dynamo")
    src = Path(hf_dir)
    dst = Path(out_dir)
    step = _Progress(progress)
    hf_config = _check_source(src, task)
    pooling = _pooling(src, task)
    if pool_in_graph and task != "embed":
        raise ExportError("--pool-in-graph applies to embedding models (--task embed) only")
    try:
        with_m3 = task == "embed" and m3.wants_m3(src, heads)
    except m3.M3LayoutError as exc:
        raise ExportError(str(exc)) from None
    if heads == "m3" and task != "embed":
        raise ExportError("--heads m3 applies to embedding models (--task embed) only")
    if quantize not in get_args(Quantize):
        raise ExportError(f"unknown quantize {quantize!r}; use none or int8")
    if quantize == "int8" and (task != "embed" or with_m3):
        raise ExportError(
            "--int8 applies to embedding models without bge-m3's heads: its check is the "
            "cosine of the pooled vectors"
        )
    _require_export_libraries(exporter)

    step(f"load {src.name} ({task})")
    model, input_names = _load_model(src, task, hf_config, progress, attention)
    max_length = position_limit(hf_config)
    graph_pooling: Pooling | None = None
    if pool_in_graph and pooling != "none":
        graph_pooling = pooling
    if task != "embed":
        output_name = "logits"
    else:
        output_name = "sentence_embedding" if pool_in_graph else "last_hidden_state"
    batches = _sample_batches(src / "tokenizer.json", task, input_names, max_length, hf_config)
    step(f"loaded: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    output_names = [output_name]
    skip_ids: list[int] | None = None
    module: Any = None
    if with_m3:
        hidden = _int_or_none(hf_config.get("hidden_size")) or 0
        try:
            module = m3.wrap_m3(model, src, hidden, input_names)
            skip_ids = m3.skipped_token_ids(src)
        except m3.M3LayoutError as exc:
            raise ExportError(str(exc)) from None
        output_names = list(m3.M3_OUTPUTS)
        output_name = output_names[0]
        pooling = "cls"  # FlagEmbedding's dense vector is the CLS token's
        step(f"bge-m3 heads: {m3.COLBERT_FILE} and {m3.SPARSE_FILE} go into the graph")
    # The TorchScript exporter leaves the module unusable afterwards (transformers 5.x):
    # the references are computed first.
    if module is not None:
        references = [_run_module(module, batch, input_names) for batch in batches]
    else:
        plain = [_run_torch(model, batch, input_names) for batch in batches]
        if graph_pooling is not None:
            pool = make_reducer(graph_pooling)
            plain = [pool(r, b.mask) for r, b in zip(plain, batches, strict=True)]
        references = [(r,) for r in plain]
    step(f"torch reference outputs for {sum(len(b.mask) for b in batches)} sample inputs")

    dst.mkdir(parents=True, exist_ok=True)
    # An earlier export's manifest must not vouch for the graph about to replace it.
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dst) as tmp:
        raw = Path(tmp) / ONNX_NAME
        step(f"export {ONNX_NAME} with the {exporter} exporter")
        if module is None:
            module = _wrap(model, input_names, graph_pooling)
        _torch_export(module, batches[0], input_names, output_names, raw, exporter, opset)
        del model, module
        graph = _finalise_onnx(raw, dst / ONNX_NAME)
    step(f"exported: opset {graph.opset}, {graph.size_mb:.1f} MB")

    step("verify with onnxruntime")
    worst = _verify(dst / ONNX_NAME, batches, references, input_names, output_names, pooling)
    if worst > TOLERANCE:
        raise ExportError(
            f"{dst / ONNX_NAME}: ONNX Runtime differs from torch by {worst:.2e} (more than "
            f"{TOLERANCE:g}) on real tokens; try --exporter "
            f"{'dynamo' if exporter == 'torchscript' else 'torchscript'}"
        )
    step(f"verified: max abs diff {worst:.2e}")
    if quantize == "int8":
        step("quantise the weights to int8 (ONNX Runtime dynamic quantisation)")
        cosine = _quantize_int8(dst / ONNX_NAME, batches, references, input_names, pooling)
        step(f"int8 verified: least cosine to torch {cosine:.4f}")

    step(f"write tokenizer and {MANIFEST_NAME}")
    _copy_side_files(src, dst)
    manifest = ExportManifest(
        task=task,
        inputs=list(input_names),
        output=output_name,
        outputs=output_names,
        sparse_skip_ids=skip_ids,
        pooling="none" if pool_in_graph or with_m3 else pooling,
        hidden_size=_int_or_none(hf_config.get("hidden_size", hf_config.get("d_model"))),
        num_labels=None if task == "embed" else len(_id2label(hf_config)),
        id2label=None if task == "embed" else _id2label(hf_config),
        max_length=max_length,
        onnx_sha256=sha256_file(dst / ONNX_NAME),
        opset=graph.opset,
        exporter=f"torch-{_torch_version()}/{exporter}",
        source=src.resolve().name,
        quantization=INT8_DYNAMIC if quantize == "int8" else None,
    )
    # Written last: a folder with a manifest holds a complete, verified export.
    tmp_manifest = dst / f".{MANIFEST_NAME}.tmp"
    tmp_manifest.write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n")
    tmp_manifest.replace(dst / MANIFEST_NAME)
    step(f"done: {dst}")
    return manifest


# --- checks ---------------------------------------------------------------------------------


def _check_source(src: Path, task: Task) -> dict[str, Any]:
    if not src.is_dir():
        raise ExportError(
            f"{src}: no such folder; pass a local Hugging Face model folder (config.json, "
            "tokenizer.json and weights, as written by save_pretrained)"
        )
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ExportError(
            f"{config_path}: missing; a Hugging Face model folder needs config.json "
            "(copy the whole model repository, or save it with model.save_pretrained(folder))"
        )
    try:
        hf_config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_path}: not valid JSON ({exc})") from None
    tokenizer = src / "tokenizer.json"
    if not tokenizer.is_file():
        raise ExportError(
            f"{tokenizer}: missing; the server needs the fast tokenizer file. Create it with "
            "transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
        )
    if not any((src / name).is_file() for name in _WEIGHT_FILES):
        raise ExportError(
            f"{src}: no weights ({' or '.join(_WEIGHT_FILES[::2])}); copy the model's weight "
            "files into the folder"
        )
    if task != "embed":
        archs = hf_config.get("architectures") or []
        if archs and not any(str(a).endswith("ForSequenceClassification") for a in archs):
            raise ExportError(
                f"{config_path}: architectures is {archs}, not a sequence classifier; "
                f"--task {task} needs a cross-encoder (use --task embed for an embedding model)"
            )
        labels = _id2label(hf_config)
        if task == "nli" and len(labels) < 2:
            raise ExportError(
                f"{config_path}: {len(labels)} label(s); --task nli needs a classifier with "
                "id2label naming each class (e.g. entailment, neutral, contradiction)"
            )
    return hf_config


def _require_export_libraries(exporter: Exporter) -> None:
    needed = ["torch", "transformers", "onnx", "onnxruntime"]
    if exporter == "dynamo":
        needed.append("onnxscript")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"export needs {', '.join(missing)} (not installed); install with: {_INSTALL_HINT}"
        )


def _id2label(hf_config: dict[str, Any]) -> dict[int, str]:
    raw = hf_config.get("id2label")
    if isinstance(raw, dict) and raw:
        return {int(k): str(v) for k, v in sorted(raw.items(), key=lambda kv: int(kv[0]))}
    n = _int_or_none(hf_config.get("num_labels")) or 2  # transformers' default
    return {i: f"LABEL_{i}" for i in range(n)}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _pooling(src: Path, task: Task) -> Literal[Pooling, "none"]:
    if task != "embed":
        return "none"
    modules_path = src / "modules.json"
    pooling_dir = "1_Pooling"
    if modules_path.is_file():
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        for module in modules:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                pooling_dir = str(module.get("path") or pooling_dir)
            elif kind not in ("Transformer", "Normalize"):
                # A Dense or other layer after pooling is not part of the exported graph.
                raise ExportError(
                    f"{modules_path}: module {module.get('type')} after the transformer is not "
                    "supported (only pooling and normalisation are applied by the server)"
                )
    cfg_path = src / pooling_dir / "config.json"
    if not cfg_path.is_file():
        return "cls"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    modes = sentence_transformers_pooling_modes(cfg)
    for served in ("cls", "mean", "last"):
        if served in modes:
            return served
    raise ExportError(
        f"{cfg_path}: pooling {modes} is not supported; the server pools cls, mean or the "
        "last token"
    )


# --- torch side -----------------------------------------------------------------------------


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _load_model(
    src: Path, task: Task, hf_config: dict[str, Any], progress: bool, attention: Attention
) -> tuple[Any, tuple[str, ...]]:
    import torch
    import transformers

    auto = (
        transformers.AutoModel
        if task == "embed"
        else transformers.AutoModelForSequenceClassification
    )
    with _quiet(progress_bars=progress):
        try:
            # Eager attention exports as plain MatMul/Softmax/MatMul, which ONNX Runtime runs
            # faster on the CPU than the decomposed SDPA graph (its NaN-guarded softmax).
            model, info = auto.from_pretrained(
                str(src),
                dtype=torch.float32,
                attn_implementation=attention,
                output_loading_info=True,
                local_files_only=True,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ExportError(f"{src}: transformers cannot load the model: {exc}") from None
    # A head missing from the checkpoint would be random: refuse rather than serve noise.
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    if missing:
        raise ExportError(
            f"{src}: the checkpoint lacks weights the {task} model needs ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); is --task {task} right for this model?"
        )
    model.eval()
    params = inspect.signature(model.forward).parameters
    names: tuple[str, ...] = ("input_ids", "attention_mask")
    # XLM-R accepts token_type_ids but has one type: leave it out so the graph takes 2 inputs.
    if "token_type_ids" in params and (_int_or_none(hf_config.get("type_vocab_size")) or 0) > 1:
        names += ("token_type_ids",)
    return model, names


def _wrap(model: Any, input_names: tuple[str, ...], pooling: Pooling | None = None) -> Any:
    """Named positional inputs and one output tensor, as both exporters want; with
    ``pooling``, the hidden states pooled over the attention mask."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.model(**kwargs, return_dict=False)[0]
            if pooling == "cls":
                return hidden[:, 0]
            if pooling == "last":
                from trt_async.tools.export_decoder import last_token

                return last_token(hidden, attention_mask)
            if pooling == "mean":
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden

    return Wrapped().eval()


def _run_torch(model: Any, batch: _Batch, input_names: tuple[str, ...]) -> npt.NDArray[np.float32]:
    import torch

    with torch.inference_mode():
        feeds = {name: torch.from_numpy(batch.feeds[name]) for name in input_names}
        out = model(**feeds, return_dict=False)[0]
    return np.asarray(out.float().numpy(), dtype=np.float32)


def _run_module(
    module: Any, batch: _Batch, input_names: tuple[str, ...]
) -> tuple[npt.NDArray[np.float32], ...]:
    import torch

    with torch.inference_mode():
        outs = module(*(torch.from_numpy(batch.feeds[name]) for name in input_names))
    return tuple(np.asarray(o.float().numpy(), dtype=np.float32) for o in outs)


def _torch_export(
    wrapped: Any,
    batch: _Batch,
    input_names: tuple[str, ...],
    output_names: list[str],
    path: Path,
    exporter: Exporter,
    opset: int | None,
) -> None:
    import torch

    args = tuple(torch.from_numpy(batch.feeds[name]) for name in input_names)
    with _quiet(), torch.no_grad():
        try:
            options: dict[str, Any]
            if exporter == "dynamo":
                batch_dim = torch.export.Dim("batch")
                seq_dim = torch.export.Dim("sequence")
                options = {
                    "verbose": False,
                    "opset_version": opset,
                    "dynamic_shapes": tuple({0: batch_dim, 1: seq_dim} for _ in input_names),
                }
            else:
                axes = {0: "batch", 1: "sequence"}
                options = {
                    "opset_version": opset or TORCHSCRIPT_OPSET,
                    "dynamic_axes": {name: axes for name in (*input_names, *output_names)},
                    "do_constant_folding": True,
                }
            torch.onnx.export(
                wrapped,
                args,
                str(path),
                input_names=list(input_names),
                output_names=output_names,
                dynamo=exporter == "dynamo",
                **options,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export ({exporter}) failed: {exc}") from exc


@contextmanager
def _quiet(progress_bars: bool = False) -> Iterator[None]:
    """The exporters and transformers warn at length about tracing; none of it is actionable."""
    import transformers

    level = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity(logging.ERROR)
    if bars and not progress_bars:
        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars and not progress_bars:
            transformers.logging.enable_progress_bar()  # type: ignore[no-untyped-call]


# --- ONNX side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GraphInfo:
    opset: int
    size_mb: float


def _finalise_onnx(raw: Path, final: Path) -> _GraphInfo:
    """Re-save as one ``model.onnx`` (plus one ``model.onnx.data`` only for large models)."""
    import onnx

    model = onnx.load(str(raw), load_external_data=True)
    # Files on disk, not ByteSize(): protobuf cannot size a message over 2 GiB.
    size = sum(p.stat().st_size for p in raw.parent.iterdir() if p.is_file())
    data = final.with_name(final.name + ".data")
    data.unlink(missing_ok=True)  # a stale weights file from an earlier export would mislead
    external = size > EXTERNAL_DATA_BYTES
    onnx.save_model(
        model,
        str(final),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return _GraphInfo(opset=int(opset), size_mb=size / 1e6)


def _verify(
    path: Path,
    batches: Sequence[_Batch],
    references: Sequence[Sequence[npt.NDArray[np.float32]]],
    input_names: tuple[str, ...],
    output_names: list[str],
    pooling: Literal[Pooling, "none"],
) -> float:
    """Largest difference to torch over every output, on real tokens only."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_inputs = [i.name for i in session.get_inputs()]
    got_outputs = [o.name for o in session.get_outputs()]
    if got_inputs != list(input_names) or got_outputs != output_names:
        raise ExportError(
            f"{path}: graph takes {got_inputs} and gives {got_outputs}, expected "
            f"{list(input_names)} and {output_names}"
        )
    worst = 0.0
    for batch, refs in zip(batches, references, strict=True):
        outs = session.run(output_names, {n: batch.feeds[n] for n in input_names})
        for name, out, ref in zip(output_names, outs, refs, strict=True):
            diff = _difference(path, name, np.asarray(out, np.float32), ref, batch, pooling)
            worst = max(worst, diff)
    return worst


def _quantize_int8(
    path: Path,
    batches: Sequence[_Batch],
    references: Sequence[Sequence[npt.NDArray[np.float32]]],
    input_names: tuple[str, ...],
    pooling: Literal[Pooling, "none"],
) -> float:
    """Replace the verified fp32 graph at ``path`` by its int8 version; return the least
    cosine between the int8 graph's pooled vectors and torch's on the sample batches."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix=".int8-", dir=path.parent) as tmp:
        out = Path(tmp) / ONNX_NAME
        # Unsigned weights, one scale per output channel. The API's default, signed weights
        # with one scale per tensor, gave all-MiniLM-L6-v2 a cosine of 0.75 to fp32 on an
        # AVX2 CPU without VNNI (its u8 x s8 instruction saturates); this gave 0.98.
        quantize_dynamic(
            path,
            out,
            weight_type=QuantType.QUInt8,
            per_channel=True,
            use_external_data_format=path.with_name(path.name + ".data").exists(),
        )
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        output = session.get_outputs()[0].name
        least = 1.0
        for batch, refs in zip(batches, references, strict=True):
            (got,) = session.run([output], {n: batch.feeds[n] for n in input_names})
            vectors, expected = np.asarray(got, np.float32), refs[0]
            if vectors.ndim == 3:
                vectors, expected = (_pool(x, batch, pooling) for x in (vectors, expected))
            cosine = (l2_normalize(vectors) * l2_normalize(expected)).sum(axis=1)
            least = min(least, float(cosine.min()))
        if least < INT8_MIN_COSINE:
            raise ExportError(
                f"{path}: the int8 graph's vectors reach a cosine of only {least:.4f} to "
                f"torch's (at least {INT8_MIN_COSINE} is required); export without --int8"
            )
        _finalise_onnx(out, path)
    return least


def _pool(
    hidden: npt.NDArray[np.float32], batch: _Batch, pooling: Literal[Pooling, "none"]
) -> npt.NDArray[np.float32]:
    """Per-token outputs pooled as the server pools them (CLS for a graph that pools)."""
    pooled: npt.NDArray[np.float32] = make_reducer(pooling if pooling != "none" else "cls")(
        hidden, batch.mask
    )
    return pooled


def _difference(
    path: Path,
    name: str,
    out: npt.NDArray[np.float32],
    ref: npt.NDArray[np.float32],
    batch: _Batch,
    pooling: Literal[Pooling, "none"] = "none",
) -> float:
    if out.shape != ref.shape:
        raise ExportError(f"{path}: {name} shape {out.shape} != torch's {ref.shape}")
    if name in m3.PER_TOKEN and out.ndim == 2:  # one value per token (sparse weights)
        return float(np.abs(out - ref)[batch.mask].max())
    if out.ndim == 3:
        # Padding positions legitimately differ between runtimes: compare real tokens.
        pooled = float(np.abs(_pool(out, batch, pooling) - _pool(ref, batch, pooling)).max())
        return max(float(np.abs(out - ref)[batch.mask].max()), pooled)
    return float(np.abs(out - ref).max())


def _sample_batches(
    tokenizer_path: Path,
    task: Task,
    input_names: tuple[str, ...],
    max_length: int | None,
    hf_config: dict[str, Any],
) -> list[_Batch]:
    """A short mixed-length batch (also the export's example input, so it has padding: a trace
    of an unpadded batch could drop the mask path) and a long one reaching ``max_length``."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_path))
    except Exception as exc:
        raise ExportError(f"{tokenizer_path}: tokenizers cannot read it ({exc})") from None
    tok.no_padding()
    limit = min(max_length or 512, 512)
    tok.enable_truncation(limit)
    long_text = _PARAGRAPH * (limit // 8 + 1)
    short: list[str | tuple[str, str]]
    long: list[str | tuple[str, str]]
    if task == "embed":
        short, long = list(_SHORT_TEXTS), [long_text, _SHORT_TEXTS[1]]
    else:
        short = [(_SHORT_TEXTS[1], t) for t in _SHORT_TEXTS]
        long = [(_SHORT_TEXTS[1], long_text), (_SHORT_TEXTS[2], _SHORT_TEXTS[0])]
    pad_id = _int_or_none(hf_config.get("pad_token_id")) or 0
    return [_encode(tok, texts, input_names, pad_id) for texts in (short, long)]


def _encode(
    tok: Any, texts: list[str | tuple[str, str]], input_names: tuple[str, ...], pad_id: int
) -> _Batch:
    encodings = tok.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(texts), width), pad_id, dtype=np.int64)
    types = np.zeros((len(texts), width), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        types[row, :n] = enc.type_ids
        mask[row, :n] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return _Batch(feeds={k: feeds[k] for k in input_names}, mask=mask.astype(bool))


def _copy_side_files(src: Path, dst: Path) -> None:
    names = ["tokenizer.json", "config.json"]
    for optional in (
        "tokenizer_config.json",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
    ):
        if (src / optional).is_file():
            names.append(optional)
    modules_path = src / "modules.json"
    pooling_dirs = {"1_Pooling"}
    if modules_path.is_file():
        for module in json.loads(modules_path.read_text(encoding="utf-8")):
            if str(module.get("type", "")).endswith("Pooling") and module.get("path"):
                pooling_dirs.add(str(module["path"]))
    names += [
        f"{d}/config.json" for d in sorted(pooling_dirs) if (src / d / "config.json").is_file()
    ]
    for name in names:
        target = dst / name
        if target.exists() and target.resolve() == (src / name).resolve():
            continue  # exporting into the source folder itself
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, target)


# --- command line ---------------------------------------------------------------------------


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``trt-async export``; the parser's ``func`` default is :func:`run_export`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="export a Hugging Face model folder to ONNX for serving",
        description=(
            "Export a local Hugging Face model folder to a model folder the server reads: "
            "model.onnx, tokenizer.json, config.json and the trt_async.json manifest. "
            "Needs torch and transformers (" + _INSTALL_HINT + ")."
        ),
    )
    parser.add_argument(
        "hf_folder",
        type=Path,
        help="Hugging Face model folder (config.json, tokenizer.json, weights)",
    )
    parser.add_argument(
        "--task",
        required=True,
        choices=get_args(Task),
        help="embed: embedding model; rerank: cross-encoder; nli: classifier",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="model folder to write")
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset (default {TORCHSCRIPT_OPSET} for torchscript)",
    )
    parser.add_argument(
        "--exporter",
        choices=get_args(Exporter),
        default="torchscript",
        help="torch exporter (default torchscript: faster to export and to run)",
    )
    parser.add_argument(
        "--pool-in-graph",
        action="store_true",
        help="embed only: fold pooling into the graph (output sentence_embedding); on a GPU "
        "only (batch, hidden) then comes back to the host",
    )
    parser.add_argument(
        "--heads",
        choices=get_args(HeadsOption),
        default="auto",
        help="embed only: bge-m3's sparse and ColBERT heads (FlagEmbedding's colbert_linear.pt "
        "and sparse_linear.pt) in the same graph; auto (default) when both files are there",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="embed only, ONNX Runtime only: 8-bit weights with activations quantised per "
        "batch (smaller and often faster on a CPU, not exact: the export refuses a cosine "
        f"to torch's vectors under {INT8_MIN_COSINE}); TensorRT refuses such a graph",
    )
    from trt_async.tools.export_decoder import add_decoder_arguments

    add_decoder_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``trt-async export``: 0 on success, 1 with the reason on stderr otherwise."""
    from trt_async.tools import export_clip

    if export_clip.is_image_text(args.hf_folder):
        return export_clip.run_image_text_export(args)
    try:
        manifest = export_model(
            args.hf_folder,
            args.task,
            args.output,
            opset=args.opset,
            progress=not args.quiet,
            exporter=args.exporter,
            pool_in_graph=args.pool_in_graph,
            heads=args.heads,
            quantize="int8" if args.int8 else "none",
            template=args.template,
            mask=args.mask,
        )
    except ExportError as exc:
        print(f"trt-async export: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.output}: {manifest.task} model, inputs {', '.join(manifest.inputs)}, "
        f"outputs {', '.join(manifest.outputs or [manifest.output])}, "
        f"max_length {manifest.max_length}"
    )
    return 0
