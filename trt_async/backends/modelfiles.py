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
from dataclasses import dataclass, field, replace
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
#: How token vectors become one vector: the first token, the mean over real tokens, or each
#: item's last real token (decoder embedders: the only position that has seen every token).
Pooling = Literal["cls", "mean", "last"]
#: How a decoder's tokens see each other: causal (each sees those before it) or every token
#: every other (gte-Qwen2 and other decoders trained as encoders).
AttentionMask = Literal["causal", "bidirectional"]
#: How an LLM reranker's token logits become a score: ``softmax`` over two tokens (false,
#: true), kept as their log-odds (sigmoid of which is the softmax's "true" probability), or
#: the ``logit`` of one token.
ScoreFormula = Literal["softmax", "logit"]


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


#: The longest default input: decoders' tables allow 32768 tokens and more, and attention's
#: memory grows with the square of the length (a model's config may ask for more).
MAX_DEFAULT_LENGTH = 8192


def default_max_length(files: ModelFiles) -> int:
    """The longest input a model folder is served at when the config names none: what
    sentence-transformers truncates at, else the export's or the position table's limit,
    at most :data:`MAX_DEFAULT_LENGTH` either way, else 512. The server's grid and the
    default TensorRT build use it."""
    if files.st_max_length is not None:
        # What sentence-transformers truncates at for this model: users compare against it.
        return min(files.st_max_length, MAX_DEFAULT_LENGTH)
    if files.manifest is not None and files.manifest.max_length:
        return min(files.manifest.max_length, MAX_DEFAULT_LENGTH)
    limit = position_limit(files.hf_config)
    if limit is not None:
        return min(limit, MAX_DEFAULT_LENGTH)
    return 512


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ModelDirError(Exception):
    """A model folder that cannot be served; the message names the file and the fix."""


class PairTemplate(msgspec.Struct, frozen=True, kw_only=True):
    """How an LLM reranker reads a (query, document) pair, as its reference code builds it.

    Each text below is tokenised on its own, without special tokens, and the ids are
    joined in this order: ``before``, the query part, ``between``, the document part,
    ``after``. Fields in braces are filled per request: ``{query}``, ``{document}`` and
    ``{instruction}`` (the request's, else the model's, else ``default_instruction``).
    Truncation cuts the document part first, then the query part past ``query_share`` of
    what the pair may hold; the fixed texts are never cut.
    """

    #: The template's name (``qwen3-reranker``, ``bge-reranker-v2-gemma``, ``mxbai-rerank-v2``).
    name: str
    before: tuple[str, ...] = ()
    #: The query part; ``query_with_instruction`` replaces it when an instruction is given.
    query: str
    query_with_instruction: str | None = None
    between: tuple[str, ...] = ()
    document: str
    after: tuple[str, ...] = ()
    #: The instruction used when neither the request nor the model's config gives one.
    default_instruction: str | None = None
    #: Most of the pair's budget the query part may take; the document keeps the rest.
    query_share: float = 0.75


class ScoreHead(msgspec.Struct, frozen=True, kw_only=True):
    """Which tokens' logits at an LLM reranker's last real token make its score."""

    formula: ScoreFormula
    #: ``softmax``: the false token then the true one (``["no", "yes"]``); ``logit``: one.
    tokens: list[str]
    token_ids: list[int]


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
    pooling: Literal[Pooling, "none"] = "none"
    #: What pooling the graph's pooled output already did (``--pool-in-graph``), if any.
    graph_pooling: Pooling | None = None
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
    #: Decoders: how tokens attend (the server pads on the right either way, so a causal
    #: model's real tokens never see a pad and keep the positions of an unpadded run).
    attention: AttentionMask | None = None
    #: The side the source tokenizer pads on (``left`` for Qwen3-Embedding); the server pads
    #: on the right and last-token pooling reads each item's own last real token.
    padding_side: Literal["left", "right"] | None = None
    #: Whether the served tokenizer.json appends ``eos_token_id`` to every text (as
    #: transformers' tokenizer of the model does; the export makes the two agree).
    appends_eos: bool | None = None
    eos_token_id: int | None = None
    #: sentence-transformers' prompts by name (``config_sentence_transformers.json``), the
    #: text put before an input, and the name used when a request names none.
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None
    #: LLM rerankers: how a pair is laid out, and which logits make the score.
    pair_template: PairTemplate | None = None
    score: ScoreHead | None = None


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
    st_pooling: Pooling | None = None
    #: sentence-transformers' truncation length (sentence_bert_config.json), if any.
    st_max_length: int | None = None
    #: Where a backend that builds plans keeps them (and looks for them); None: its own
    #: default. An image-text model's towers keep theirs beside each tower's graph.
    plans_dir: Path | None = None

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
                if read_image_text_manifest(path) is not None:
                    raise ModelDirError(
                        f"{path}: an image-text model folder (CLIP/SigLIP): each tower is a "
                        f"folder of its own; point model_path at {path / TEXT_TOWER_DIR} to "
                        "serve its text tower as an embedding model"
                    )
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


def _sentence_transformers_pooling(root: Path) -> Pooling | None:
    cfg = root / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    modes = sentence_transformers_pooling_modes(data)
    return modes[0] if len(modes) == 1 and modes[0] in _SERVED_POOLING.values() else None


#: sentence-transformers' pooling modes the server applies, by its names for them.
_SERVED_POOLING: dict[str, Pooling] = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
#: The boolean keys of its older pooling configs, by mode (their order in its output).
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def sentence_transformers_pooling_modes(data: dict[str, Any]) -> list[Any]:
    """The pooling modes a sentence-transformers pooling config selects, served ones by the
    server's names (``cls``, ``mean``, ``last``) and others by sentence-transformers'.

    Its configs name them in ``pooling_mode`` (a name or a list, since version 6) or with
    one boolean key per mode (earlier versions; what the hub's folders mostly hold).
    """
    raw = data.get("pooling_mode")
    if isinstance(raw, str):
        names = [raw]
    elif isinstance(raw, list):
        names = [str(n) for n in raw]
    else:
        names = [mode for key, mode in _LEGACY_POOLING_KEYS.items() if data.get(key)]
    return [_SERVED_POOLING.get(n, n) for n in names]


def _sentence_transformers_max_length(root: Path) -> int | None:
    cfg = root / "sentence_bert_config.json"
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, int) and value > 0 else None


# --- image-text models (CLIP, SigLIP) -------------------------------------------------------

#: Subfolders of an image-text model folder, one per tower, each with its own ``model.onnx``
#: (and, on a GPU, its own TensorRT plan beside it).
TEXT_TOWER_DIR = "text"
VISION_TOWER_DIR = "vision"
#: Pillow's resampling filters by the names transformers' image processors use.
Resample = Literal["nearest", "lanczos", "bilinear", "bicubic", "box", "hamming"]
#: transformers' ``PILImageResampling`` values (those of ``PIL.Image.Resampling``) by name.
RESAMPLE_CODES: dict[Resample, int] = {
    "nearest": 0,
    "lanczos": 1,
    "bilinear": 2,
    "bicubic": 3,
    "box": 4,
    "hamming": 5,
}


class ImagePreprocessing(msgspec.Struct, frozen=True, kw_only=True):
    """How an image becomes ``pixel_values``, as the model's ``preprocessor_config.json``
    says (transformers' ``CLIPImageProcessor`` / ``SiglipImageProcessor``, PIL backend).

    Steps, in order: EXIF orientation applied; converted to RGB (transparency composited
    onto white); resized (``resize_shortest_edge``: the short side to that many pixels,
    the long side ``int(size * long / short)``; or to exactly ``resize_height`` x
    ``resize_width``); centre-cropped to ``crop_height`` x ``crop_width`` (zero-padded
    where the image is smaller); multiplied by ``rescale_factor``; normalised per channel
    with ``image_mean`` and ``image_std``. Absent values skip their step.
    """

    resize_shortest_edge: int | None = None
    #: With ``resize_shortest_edge``: the long side is capped at this (transformers'
    #: ``size.longest_edge``).
    resize_longest_edge: int | None = None
    resize_height: int | None = None
    resize_width: int | None = None
    resample: Resample = "bicubic"
    crop_height: int | None = None
    crop_width: int | None = None
    rescale_factor: float | None = None
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None
    #: The size of every preprocessed image, the vision tower's only input shape.
    height: int
    width: int


class TextTower(msgspec.Struct, frozen=True, kw_only=True):
    """The text tower: ``text/model.onnx`` gives one projected vector per text.

    Inputs are ``input_ids`` and ``attention_mask`` (batch, length), padded on the right.
    CLIP's graph pools at each row's end-of-text token (the first ``eos_token_id``, or
    the largest id for configs whose ``eos_token_id`` is the legacy 2), so any length up
    to ``max_length`` serves. SigLIP was trained on texts padded to ``pad_to_length``
    with ``pad_token_id`` and pools the last position: its graph takes exactly that
    length and writes ``pad_token_id`` wherever the mask is 0 itself, so the server may
    pad with any id but must pad every row to ``pad_to_length``.
    """

    inputs: list[str]
    output: str
    #: Most tokens of one text, special tokens included (truncate there).
    max_length: int
    #: Rows must be padded to exactly this length (SigLIP: 64); None: any length.
    pad_to_length: int | None = None
    pad_token_id: int
    eos_token_id: int | None = None
    #: How the graph picks each text's vector: ``eos`` (CLIP: first end-of-text token),
    #: ``max_id`` (CLIP configs with the legacy ``eos_token_id`` 2: the largest id, which
    #: is the end-of-text token in CLIP's vocabulary), ``last`` (SigLIP: last position).
    pooling: Literal["eos", "max_id", "last"]
    onnx_sha256: str | None = None


class VisionTower(msgspec.Struct, frozen=True, kw_only=True):
    """The vision tower: ``vision/model.onnx`` takes ``input`` (batch, 3, height, width)
    float32 from :class:`ImagePreprocessing` and gives one projected vector per image.
    Only the batch axis varies, so its buckets are batch sizes only."""

    input: str
    output: str
    channels: int = 3
    height: int
    width: int
    onnx_sha256: str | None = None


class ImageTextManifest(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """``trt_async.json`` of an image-text model folder (``trt-async export`` of a CLIP or
    SigLIP checkpoint): two towers whose vectors share one space.

    Layout: ``text/model.onnx`` with ``text/tokenizer.json`` (and ``text/trt_async.json``,
    an :class:`ExportManifest` for serving the text tower alone), ``vision/model.onnx``,
    and beside this file the source's ``config.json`` and ``preprocessor_config.json``.
    """

    kind: Literal["image-text"] = "image-text"
    family: Literal["clip", "siglip"]
    text: TextTower
    vision: VisionTower
    preprocessing: ImagePreprocessing
    #: Length of every vector, text or image.
    embedding_size: int
    #: Zero-shot classification: ``logit_scale * cosine (+ logit_bias)``, then softmax over
    #: the labels (CLIP) or a sigmoid per label (SigLIP), as transformers' pipeline does.
    logit_scale: float
    logit_bias: float | None = None
    zero_shot_activation: Literal["softmax", "sigmoid"]
    #: transformers' zero-shot-image-classification default.
    hypothesis_template: str = "This is a photo of {}."
    #: What the export measured against transformers and torch (ONNX Runtime, fp32).
    text_min_cosine: float | None = None
    vision_min_cosine: float | None = None
    preprocessing_max_abs_diff: float | None = None
    opset: int | None = None
    exporter: str | None = None
    source: str | None = None


def read_image_text_manifest(root: Path) -> ImageTextManifest | None:
    """The image-text manifest of folder ``root``, or None when it holds another model."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        raw = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as exc:
        raise ModelDirError(f"{path}: not valid JSON ({exc}); re-run trt-async export") from None
    if not isinstance(raw, dict) or raw.get("kind") != "image-text":
        return None
    try:
        return msgspec.convert(raw, ImageTextManifest)
    except msgspec.ValidationError as exc:
        raise ModelDirError(
            f"{path}: not a valid image-text manifest ({exc}); re-run trt-async export"
        ) from None


@dataclass(frozen=True)
class ImageTextFiles:
    """The resolved files of an image-text model folder."""

    root: Path
    manifest: ImageTextManifest
    #: The text tower as an ordinary model folder (graph, tokenizer.json, manifest).
    text: ModelFiles
    vision_onnx: Path | None
    #: TensorRT plans beside ``vision/model.onnx``, if one was built (``trt-async build``
    #: of the folder writes one beside each tower's graph).
    vision_plan: Path | None

    @classmethod
    def resolve(cls, root: str | Path) -> ImageTextFiles:
        folder = Path(root)
        manifest = read_image_text_manifest(folder)
        if manifest is None:
            raise ModelDirError(
                f"{folder / MANIFEST_NAME}: not an image-text model folder; export a CLIP "
                "or SigLIP checkpoint with trt-async export"
            )
        vision = folder / VISION_TOWER_DIR
        onnx = vision / ONNX_NAME
        plans = (
            sorted(p for p in vision.iterdir() if p.suffix in PLAN_SUFFIXES)
            if (vision.is_dir())
            else []
        )
        if not onnx.is_file() and not plans:
            raise ModelDirError(f"{onnx}: missing; re-run trt-async export")
        return cls(
            root=folder,
            manifest=manifest,
            text=replace(
                ModelFiles.resolve(folder / TEXT_TOWER_DIR), plans_dir=folder / TEXT_TOWER_DIR
            ),
            vision_onnx=onnx if onnx.is_file() else None,
            vision_plan=plans[0] if plans else None,
        )

    def vision(self) -> ModelFiles:
        """The vision tower as a backend reads a model folder: its graph (or plan). It has
        no tokenizer of its own; the text tower's is named and never read."""
        return ModelFiles(
            root=self.root / VISION_TOWER_DIR,
            tokenizer=self.text.tokenizer,
            onnx=self.vision_onnx,
            plan=self.vision_plan,
            plans_dir=self.root / VISION_TOWER_DIR,
        )


def resolve_model_folder(
    model_path: str | Path, tokenizer_path: str | Path | None = None
) -> ModelFiles | ImageTextFiles:
    """The files of a served model: an image-text folder (both towers), else one graph."""
    path = Path(model_path)
    if path.is_dir() and read_image_text_manifest(path) is not None:
        return ImageTextFiles.resolve(path)
    return ModelFiles.resolve(path, tokenizer_path)
