"""Finding a model's files: the graph (ONNX or a TensorRT plan), tokenizer.json, config.json.

A model folder written by ``trt-async export`` holds ``model.onnx`` (with
``model.onnx.data`` for large weights), ``tokenizer.json``, ``config.json`` and
``trt_async.json``, the manifest of what the graph takes and gives. The seed's configs
point ``model_path`` straight at a ``.trt`` plan and ``tokenizer_path`` at a folder: that
works too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

MANIFEST_NAME = "trt_async.json"
#: Bumped whenever ``trt-async export`` writes a different graph, so that cached exports (the
#: embedded default's, hub models') are redone.
EXPORT_REVISION = "e2"
ONNX_NAME = "model.onnx"
PLAN_SUFFIXES = (".trt", ".plan", ".engine")

Task = Literal["embed", "rerank", "nli"]


#: Model types whose position ids start after the padding index (fairseq heritage): they
#: reserve ``pad_token_id + 1`` of ``max_position_embeddings`` (XLM-R large: 514 -> 512).
OFFSET_POSITION_MODELS = frozenset(
    {
        "roberta",
        "xlm-roberta",
        "xlm-roberta-xl",
        "camembert",
        "data2vec-text",
        "longformer",
        "mpnet",
        "ibert",
        "markuplm",
        "luke",
        "roberta-prelayernorm",
    }
)


def position_limit(hf_config: dict[str, Any]) -> int | None:
    """Longest input in tokens, special tokens included, that the position table allows."""
    positions = hf_config.get("max_position_embeddings")
    if not isinstance(positions, int) or positions <= 0:
        return None
    if hf_config.get("model_type") in OFFSET_POSITION_MODELS:
        pad = hf_config.get("pad_token_id")
        positions -= (pad if isinstance(pad, int) else 1) + 1
    return positions


def default_max_length(files: ModelFiles) -> int:
    """The longest input a model folder is served at when the config names none: what
    sentence-transformers truncates at, else the export's or the position table's limit
    (at most 8192), else 512. The server's grid and the default TensorRT build use it."""
    if files.st_max_length is not None:
        # What sentence-transformers truncates at for this model: users compare against it.
        return files.st_max_length
    if files.manifest is not None and files.manifest.max_length:
        return min(files.manifest.max_length, 8192)
    limit = position_limit(files.hf_config)
    if limit is not None:
        return min(limit, 8192)
    return 512


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ModelDirError(Exception):
    """A model folder that cannot be served; the message names the file and the fix."""


class ExportManifest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """What ``trt-async export`` recorded about a graph."""

    task: Task
    inputs: list[str]
    #: The output every batch reads (pooled or per token, or logits).
    output: str
    #: Every output of the graph, ``output`` first (bge-m3: dense, sparse, ColBERT, tokens).
    outputs: list[str] | None = None
    #: Token ids left out of bge-m3's lexical weights (cls, eos, pad, unk, as FlagEmbedding).
    sparse_skip_ids: list[int] | None = None
    #: Pooling the server applies (``none`` when the graph already pools).
    pooling: Literal["cls", "mean", "none"] = "none"
    hidden_size: int | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    max_length: int | None = None
    onnx_sha256: str | None = None
    opset: int | None = None
    exporter: str | None = None
    source: str | None = None
    #: ``int8-dynamic``: int8 weights, activations quantised per batch (ONNX Runtime only).
    quantization: str | None = None


def read_manifest(path: Path) -> ExportManifest:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ExportManifest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelDirError(
            f"{path}: not a valid export manifest ({exc}); re-run trt-async export"
        ) from None


@dataclass(frozen=True)
class ModelFiles:
    """The resolved files of one model."""

    root: Path
    tokenizer: Path
    onnx: Path | None = None
    plan: Path | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    manifest: ExportManifest | None = None
    #: sentence-transformers' pooling mode, if the folder has one (1_Pooling/config.json).
    st_pooling: Literal["cls", "mean"] | None = None
    #: sentence-transformers' truncation length (sentence_bert_config.json), if any.
    st_max_length: int | None = None

    @classmethod
    def resolve(
        cls, model_path: str | Path, tokenizer_path: str | Path | None = None
    ) -> ModelFiles:
        path = Path(model_path)
        plan: Path | None = None
        onnx: Path | None = None
        if path.is_file():
            root = path.parent
            if path.suffix in PLAN_SUFFIXES:
                plan = path
            elif path.suffix == ".onnx":
                onnx = path
            else:
                raise ModelDirError(
                    f"{path}: model_path must be a model folder, a .onnx file or a TensorRT plan "
                    f"({', '.join(PLAN_SUFFIXES)})"
                )
        elif path.is_dir():
            root = path
            if (path / ONNX_NAME).is_file():
                onnx = path / ONNX_NAME
            plans = sorted(p for p in path.iterdir() if p.suffix in PLAN_SUFFIXES)
            plan = plans[0] if plans else None
            if onnx is None and plan is None:
                hint = (
                    "it holds Hugging Face weights: run `trt-async export "
                    f"{path} --task embed|rerank|nli -o <model-dir>` and point model_path there"
                    if (path / "config.json").is_file()
                    else "run `trt-async export` on the Hugging Face folder to create it"
                )
                raise ModelDirError(f"{path / ONNX_NAME}: missing; {hint}")
        else:
            raise ModelDirError(f"{path}: no such model file or folder (check model_path)")

        tok_root = Path(tokenizer_path) if tokenizer_path is not None else root
        tokenizer = tok_root if tok_root.is_file() else tok_root / "tokenizer.json"
        if not tokenizer.is_file():
            hint = (
                "tokenizer_path must be a local folder (no model hub is used); "
                if tokenizer_path is not None and not Path(tokenizer_path).exists()
                else ""
            )
            raise ModelDirError(
                f"{tokenizer}: missing; {hint}copy the model's tokenizer.json there "
                "(trt-async export writes it)"
            )

        hf_config: dict[str, Any] = {}
        for candidate in (root / "config.json", tokenizer.parent / "config.json"):
            if candidate.is_file():
                try:
                    hf_config = json.loads(candidate.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ModelDirError(f"{candidate}: not valid JSON ({exc})") from None
                if not isinstance(hf_config, dict):
                    raise ModelDirError(
                        f"{candidate}: must hold a JSON object (a model's config), "
                        f"not a {type(hf_config).__name__}"
                    )
                break

        manifest_path = root / MANIFEST_NAME
        manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
        return cls(
            root=root,
            tokenizer=tokenizer,
            onnx=onnx,
            plan=plan,
            hf_config=hf_config,
            manifest=manifest,
            st_pooling=_sentence_transformers_pooling(root),
            st_max_length=_sentence_transformers_max_length(root),
        )


#: sentence-transformers' pooling flags before ``pooling_mode``, and the mode each sets (in
#: the order it concatenates them).
_ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def sentence_transformers_pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The modes of a sentence-transformers pooling config (``1_Pooling/config.json``) in
    either of its formats: ``pooling_mode``, a mode or a list (sentence-transformers 6 writes
    it), or the older ``pooling_mode_*`` flags. Several modes are concatenated; with none,
    sentence-transformers pools by the mean."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return (mode,)
    if isinstance(mode, list) and mode:
        return tuple(str(m) for m in mode)
    flags = tuple(m for key, m in _ST_POOLING_FLAGS.items() if config.get(key))
    return flags or ("mean",)


def _sentence_transformers_pooling(root: Path) -> Literal["cls", "mean"] | None:
    cfg = root / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    modes = sentence_transformers_pooling_modes(data) if isinstance(data, dict) else ()
    if "cls" in modes:
        return "cls"
    if "mean" in modes:
        return "mean"
    return None


def _sentence_transformers_max_length(root: Path) -> int | None:
    cfg = root / "sentence_bert_config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, int) and value > 0 else None
