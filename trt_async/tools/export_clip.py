"""Export image-text models (CLIP, SigLIP) to two ONNX graphs in one model folder.

:func:`~trt_async.tools.export.run_export` hands a folder here when its ``config.json``
names one of :data:`IMAGE_TEXT_MODEL_TYPES` (transformers' ``CLIPModel`` and
``SiglipModel``; open_clip checkpoints published in Hugging Face layout load as
``CLIPModel`` too). The folder written (see
:class:`~trt_async.backends.modelfiles.ImageTextManifest`):

* ``text/model.onnx``: ``input_ids``, ``attention_mask`` -> ``sentence_embedding``, the
  projected text vector (CLIP's ``text_embeds`` before normalisation, SigLIP's pooled
  output), with ``text/tokenizer.json`` and ``text/trt_async.json``;
* ``vision/model.onnx``: ``pixel_values`` (batch, 3, H, W) -> ``image_embeds``, the
  projected image vector in the same space;
* ``trt_async.json``: which graph is which tower, the image preprocessing read from the
  model's ``preprocessor_config.json``, the tokenizer's padding facts, and the logit scale
  (and SigLIP's bias) for zero-shot classification.

SigLIP's text tower was trained on texts padded to 64 tokens and reads the last
position, pad or not: its graph takes exactly that length and writes the pad id wherever
the mask is 0, so a server that pads with another id still gets SigLIP's vectors.

Before the manifest is written, the server's own preprocessing (:mod:`trt_async.core.images`)
is checked against transformers' image processor on sample images, the tokenizer.json
against transformers' tokenizer on sample texts, and each graph against torch with ONNX
Runtime (cosine of every vector at least :data:`MIN_COSINE`).

torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from trt_async.backends.modelfiles import (
    MANIFEST_NAME,
    ONNX_NAME,
    RESAMPLE_CODES,
    TEXT_TOWER_DIR,
    VISION_TOWER_DIR,
    ExportManifest,
    ImagePreprocessing,
    ImageTextManifest,
    Resample,
    TextTower,
    VisionTower,
    sha256_file,
)
from trt_async.core.images import ImagePreprocessor, decode_image
from trt_async.tools import export
from trt_async.tools.export import ExportError

Family = Literal["clip", "siglip"]
#: ``model_type`` in config.json -> the family exported here.
IMAGE_TEXT_MODEL_TYPES: dict[str, Family] = {"clip": "clip", "siglip": "siglip"}
#: Least cosine between ONNX Runtime's and torch's vector for any sample text or image.
MIN_COSINE = 0.999
#: Largest difference allowed between the server's preprocessing and transformers'.
PREPROCESSING_TOLERANCE = 1e-6
TEXT_OUTPUT = "sentence_embedding"
VISION_INPUT = "pixel_values"
VISION_OUTPUT = "image_embeds"
TEXT_INPUTS = ("input_ids", "attention_mask")
#: CLIP configs written before transformers fixed ``eos_token_id`` say 2; the model then
#: pools at the largest token id (CLIP's end-of-text token is the last in its vocabulary).
LEGACY_CLIP_EOS = 2
PREPROCESSOR_CONFIG = "preprocessor_config.json"
_SIDE_FILES = ("config.json", PREPROCESSOR_CONFIG, "open_clip_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_TEXTS = (
    "a photo of a cat",
    "A Photo of TWO dogs, playing in the snow!",
    "hello",
    "今天天氣很好，我們去公園散步吧。",
    "  spaces   and\ttabs ",
)


def is_image_text(src: Path) -> bool:
    """Whether ``src``'s config.json names a CLIP or SigLIP model."""
    try:
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") in IMAGE_TEXT_MODEL_TYPES


@dataclass(frozen=True)
class _TextBatch:
    #: What the server feeds the graph (SigLIP: padded with a wrong id on purpose).
    feeds: dict[str, npt.NDArray[np.int64]]
    #: What transformers feeds torch (its own padding; SigLIP without a mask).
    torch_feeds: dict[str, npt.NDArray[np.int64]]


def export_image_text_model(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    opset: int | None = None,
    progress: bool = True,
    exporter: export.Exporter = "torchscript",
) -> ImageTextManifest:
    """Export the CLIP or SigLIP checkpoint in ``hf_dir`` into ``out_dir`` (module docstring)."""
    src, dst = Path(hf_dir), Path(out_dir)
    step = export._Progress(progress)
    family = _check_source(src)
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}; use torchscript or dynamo")
    export._require_export_libraries(exporter)

    step(f"load {src.name} ({family}: text and vision towers)")
    model = _load(src, family)
    text_config, vision_config = model.config.text_config, model.config.vision_config
    image_size = _pair(vision_config.image_size)
    processor = _image_processor(src)
    spec = image_preprocessing(processor, image_size, src / PREPROCESSOR_CONFIG)
    hf_tok = _hf_tokenizer(src)
    text = _text_tower(family, text_config, hf_tok)
    _check_tokenizer(src / "tokenizer.json", hf_tok, text.max_length)
    step(f"loaded: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")

    images = sample_images(image_size)
    pixels, preprocessing_diff = _check_preprocessing(images, spec, processor)
    step(f"preprocessing equals transformers' (max abs diff {preprocessing_diff:.1e})")
    batches = _text_batches(src / "tokenizer.json", text)
    # References first: the TorchScript exporter can leave the module unusable.
    text_refs = [_torch_text(model, b) for b in batches]
    image_refs = _torch_images(model, pixels)
    embedding_size = int(text_refs[0].shape[1])
    if image_refs.shape[1] != embedding_size:
        raise ExportError(
            f"{src / 'config.json'}: text vectors have {embedding_size} values, image "
            f"vectors {image_refs.shape[1]}; the towers do not share one space"
        )
    logit_scale = float(model.logit_scale.detach().exp().reshape(-1)[0])
    logit_bias = (
        float(model.logit_bias.detach().reshape(-1)[0]) if hasattr(model, "logit_bias") else None
    )
    texts = sum(len(b.feeds["input_ids"]) for b in batches)
    step(f"torch reference vectors for {texts} texts and {len(images)} images")

    dst.mkdir(parents=True, exist_ok=True)
    # An earlier export's manifest must not vouch for the graphs about to replace it.
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    text_dir, vision_dir = dst / TEXT_TOWER_DIR, dst / VISION_TOWER_DIR
    text_dir.mkdir(exist_ok=True)
    vision_dir.mkdir(exist_ok=True)
    (text_dir / MANIFEST_NAME).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=dst) as tmp:
        step(f"export {TEXT_TOWER_DIR}/{ONNX_NAME} with the {exporter} exporter")
        raw = Path(tmp) / "text" / ONNX_NAME
        raw.parent.mkdir()
        _export_graph(
            _text_module(model, family, text.pad_token_id),
            tuple(batches[0].feeds[n] for n in TEXT_INPUTS),
            TEXT_INPUTS,
            TEXT_OUTPUT,
            raw,
            exporter,
            opset,
            fixed_length=text.pad_to_length is not None,
        )
        text_graph = export._finalise_onnx(raw, text_dir / ONNX_NAME)
        # A fresh model for the second trace: the first may have changed the module.
        model = _load(src, family)
        step(f"export {VISION_TOWER_DIR}/{ONNX_NAME} with the {exporter} exporter")
        raw = Path(tmp) / "vision" / ONNX_NAME
        raw.parent.mkdir()
        _export_graph(
            _vision_module(model),
            (pixels[:2],),
            (VISION_INPUT,),
            VISION_OUTPUT,
            raw,
            exporter,
            opset,
            fixed_length=True,
        )
        del model
        vision_graph = export._finalise_onnx(raw, vision_dir / ONNX_NAME)
    step(f"exported: opset {text_graph.opset}, {text_graph.size_mb + vision_graph.size_mb:.1f} MB")

    step("verify both towers with onnxruntime")
    text_cosine = _verify(
        text_dir / ONNX_NAME, [b.feeds for b in batches], text_refs, TEXT_INPUTS, TEXT_OUTPUT
    )
    vision_cosine = _verify(
        vision_dir / ONNX_NAME,
        [{VISION_INPUT: pixels[i : i + 3]} for i in range(0, len(pixels), 3)],
        [image_refs[i : i + 3] for i in range(0, len(pixels), 3)],
        (VISION_INPUT,),
        VISION_OUTPUT,
    )
    step(f"verified: least cosine to torch, text {text_cosine:.6f}, image {vision_cosine:.6f}")

    step(f"write the tokenizer, {PREPROCESSOR_CONFIG} and {MANIFEST_NAME}")
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, text_dir / name)
    for name in _SIDE_FILES:
        if (src / name).is_file() and (dst / name).resolve() != (src / name).resolve():
            shutil.copyfile(src / name, dst / name)
    exporter_name = f"torch-{export._torch_version()}/{exporter}"
    text = msgspec.structs.replace(text, onnx_sha256=sha256_file(text_dir / ONNX_NAME))
    text_manifest = ExportManifest(
        task="embed",
        inputs=list(text.inputs),
        output=TEXT_OUTPUT,
        outputs=[TEXT_OUTPUT],
        pooling="none",
        hidden_size=embedding_size,
        max_length=text.max_length,
        onnx_sha256=text.onnx_sha256,
        opset=text_graph.opset,
        exporter=exporter_name,
        source=src.resolve().name,
        eos_token_id=text.eos_token_id,
    )
    _write_json(text_dir / MANIFEST_NAME, text_manifest)
    manifest = ImageTextManifest(
        family=family,
        text=text,
        vision=VisionTower(
            input=VISION_INPUT,
            output=VISION_OUTPUT,
            height=spec.height,
            width=spec.width,
            onnx_sha256=sha256_file(vision_dir / ONNX_NAME),
        ),
        preprocessing=spec,
        embedding_size=embedding_size,
        logit_scale=logit_scale,
        logit_bias=logit_bias,
        zero_shot_activation="sigmoid" if family == "siglip" else "softmax",
        text_min_cosine=text_cosine,
        vision_min_cosine=vision_cosine,
        preprocessing_max_abs_diff=preprocessing_diff,
        opset=text_graph.opset,
        exporter=exporter_name,
        source=src.resolve().name,
    )
    # Written last: a folder with this manifest holds a complete, verified export.
    _write_json(dst / MANIFEST_NAME, manifest)
    step(f"done: {dst}")
    return manifest


def _write_json(path: Path, value: msgspec.Struct) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n")
    tmp.replace(path)


# --- what the folder says -------------------------------------------------------------------


def _check_source(src: Path) -> Family:
    if (src / "spiece.model").is_file() and not (src / "tokenizer.json").is_file():
        # Google's SigLIP checkpoints: transformers' SiglipTokenizer is SentencePiece plus
        # Python (lowercasing, punctuation removed) and writes no tokenizer.json.
        raise ExportError(
            f"{src / 'tokenizer.json'}: missing; the server tokenises with a tokenizer.json "
            "and this folder has only SentencePiece's spiece.model, which transformers does "
            "not convert for SigLIP. Add a tokenizer.json that tokenises as the model's "
            "SiglipTokenizer (the export checks that it does)"
        )
    hf_config = export._check_source(src, "embed")
    family = IMAGE_TEXT_MODEL_TYPES.get(str(hf_config.get("model_type")))
    if family is None:
        raise ExportError(f"{src / 'config.json'}: not a CLIP or SigLIP model")
    if not (src / PREPROCESSOR_CONFIG).is_file():
        raise ExportError(
            f"{src / PREPROCESSOR_CONFIG}: missing; the image preprocessing (resize, crop, "
            "mean, std) is read from it: copy it from the model's repository"
        )
    return family


def _load(src: Path, family: Family) -> Any:
    import torch
    import transformers

    cls = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
    with export._quiet(progress_bars=False):
        try:
            model: Any = cls.from_pretrained(
                str(src), attn_implementation="eager", dtype=torch.float32, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ExportError(f"{src}: transformers cannot load the model: {exc}") from None
    model.eval()
    return model


def _hf_tokenizer(src: Path) -> Any:
    import transformers

    with export._quiet():
        try:
            return transformers.AutoTokenizer.from_pretrained(str(src), local_files_only=True)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ExportError(f"{src}: transformers cannot load the tokenizer: {exc}") from None


def _image_processor(src: Path) -> Any:
    """transformers' PIL-backed image processor of the folder (the one the server's
    preprocessing reproduces; its torchvision backend resizes differently)."""
    import transformers

    with export._quiet():
        try:
            return transformers.AutoImageProcessor.from_pretrained(
                str(src), backend="pil", local_files_only=True
            )
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ExportError(
                f"{src / PREPROCESSOR_CONFIG}: transformers cannot load it: {exc}"
            ) from None


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _size_field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def image_preprocessing(
    processor: Any, image_size: tuple[int, int], where: Path | str = PREPROCESSOR_CONFIG
) -> ImagePreprocessing:
    """What transformers' image ``processor`` does, as an :class:`ImagePreprocessing`;
    ``image_size`` (height, width) is what the vision tower takes. Settings the server
    does not reproduce are refused, naming ``where``."""
    unsupported = [
        name
        for name in ("do_pad", "do_reduce_labels", "do_convert_grayscale")
        if getattr(processor, name, None)
    ]
    if getattr(processor, "do_convert_rgb", True) is False:
        unsupported.append("do_convert_rgb: false")
    if unsupported:
        raise ExportError(f"{where}: {', '.join(unsupported)} is not supported")
    resample_code = int(getattr(processor, "resample", 3))
    names = {code: name for name, code in RESAMPLE_CODES.items()}
    if resample_code not in names:
        raise ExportError(f"{where}: resample {resample_code} is not a Pillow filter")
    resample: Resample = names[resample_code]
    shortest = longest = height = width = None
    if getattr(processor, "do_resize", False):
        size = processor.size
        shortest = _size_field(size, "shortest_edge")
        longest = _size_field(size, "longest_edge")
        height, width = _size_field(size, "height"), _size_field(size, "width")
        if shortest is None and (height is None or width is None):
            raise ExportError(
                f"{where}: size {dict(size) if isinstance(size, dict) else size} is not "
                "supported (use shortest_edge, or height and width)"
            )
        if shortest is not None:
            height = width = None
    crop_h = crop_w = None
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        crop_h, crop_w = _size_field(crop, "height"), _size_field(crop, "width")
        if crop_h is None or crop_w is None:
            raise ExportError(f"{where}: crop_size needs height and width")
    final = (crop_h, crop_w) if crop_h is not None else (height, width)
    if shortest is not None and crop_h is None:
        raise ExportError(
            f"{where}: resizing the shortest edge without a centre crop gives images of many "
            "shapes; the vision tower takes one"
        )
    if final != image_size:
        raise ExportError(
            f"{where}: preprocessing gives {final[0]} x {final[1]} pixels but the vision "
            f"tower takes {image_size[0]} x {image_size[1]} (config.json's image_size)"
        )
    mean = std = None
    if getattr(processor, "do_normalize", False):
        mean = _three(processor.image_mean, where, "image_mean")
        std = _three(processor.image_std, where, "image_std")
    return ImagePreprocessing(
        resize_shortest_edge=shortest,
        resize_longest_edge=longest if shortest is not None else None,
        resize_height=height,
        resize_width=width,
        resample=resample,
        crop_height=crop_h,
        crop_width=crop_w,
        rescale_factor=(
            float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else None
        ),
        image_mean=mean,
        image_std=std,
        height=image_size[0],
        width=image_size[1],
    )


def _three(value: Any, where: Path | str, name: str) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise ExportError(f"{where}: {name} must have 3 values (RGB), has {len(values)}")
    return values[0], values[1], values[2]


def _text_tower(family: Family, text_config: Any, hf_tok: Any) -> TextTower:
    """The text tower's padding and pooling facts, from the model's config and tokenizer."""
    max_length = int(text_config.max_position_embeddings)
    tok_max = getattr(hf_tok, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < max_length:
        max_length = tok_max
    pad_id = hf_tok.pad_token_id
    if pad_id is None:
        pad_id = text_config.pad_token_id if text_config.pad_token_id is not None else 0
    if family == "siglip":
        eos = hf_tok.eos_token_id
        return TextTower(
            inputs=list(TEXT_INPUTS),
            output=TEXT_OUTPUT,
            max_length=max_length,
            pad_to_length=max_length,
            pad_token_id=int(pad_id),
            eos_token_id=int(eos) if eos is not None else None,
            pooling="last",
        )
    eos = int(text_config.eos_token_id)
    return TextTower(
        inputs=list(TEXT_INPUTS),
        output=TEXT_OUTPUT,
        max_length=max_length,
        pad_token_id=int(pad_id),
        eos_token_id=eos if eos != LEGACY_CLIP_EOS else hf_tok.eos_token_id,
        pooling="max_id" if eos == LEGACY_CLIP_EOS else "eos",
    )


def _served_tokenizer(path: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any bad file
        raise ExportError(f"{path}: tokenizers cannot read it ({exc})") from None
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def _check_tokenizer(path: Path, hf_tok: Any, max_length: int) -> None:
    """tokenizer.json must tokenise as transformers' tokenizer of the model (SigLIP's
    SentencePiece tokenizer lowercases and drops punctuation in Python, which a
    tokenizer.json written elsewhere may not do)."""
    tok = _served_tokenizer(path, max_length)
    long_text = " ".join(_TEXTS * 20)
    for text in (*_TEXTS, long_text):
        ours = tok.encode(text).ids
        theirs = list(hf_tok(text, truncation=True, max_length=max_length)["input_ids"])
        if ours != theirs:
            raise ExportError(
                f"{path}: tokenises {text[:40]!r} as {ours[:12]}..., transformers' "
                f"tokenizer of the model as {theirs[:12]}...; write tokenizer.json with "
                "AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
            )


def _text_batches(path: Path, text: TextTower) -> list[_TextBatch]:
    """A short mixed-length batch (the trace's example) and one reaching ``max_length``."""
    tok = _served_tokenizer(path, text.max_length)
    long_text = " ".join(_TEXTS * 20)
    return [_encode(tok, list(texts), text) for texts in (_TEXTS, (long_text, _TEXTS[2]))]


def _encode(tok: Any, texts: list[str], text: TextTower) -> _TextBatch:
    encodings = tok.encode_batch(texts)
    width = text.pad_to_length or max(len(e.ids) for e in encodings)
    # The server may pad with any id; SigLIP's graph must put its own pad id back.
    served_pad = text.pad_token_id if text.pad_to_length is None else text.pad_token_id + 1
    ids = np.full((len(texts), width), served_pad, dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if text.pad_to_length is None:
        return _TextBatch(feeds=feeds, torch_feeds=feeds)
    # transformers' way: padding="max_length", no attention mask.
    torch_ids = np.where(mask.astype(bool), ids, text.pad_token_id)
    return _TextBatch(feeds=feeds, torch_feeds={"input_ids": torch_ids})


# --- sample images and the preprocessing check ----------------------------------------------


def sample_images(image_size: tuple[int, int]) -> list[bytes]:
    """Encoded images of several sizes, shapes and modes (deterministic): PNG in RGB, RGBA,
    grey, palette; JPEG; sizes below, at and above the model's."""
    from PIL import Image

    rng = np.random.default_rng(0)
    height, width = image_size
    sizes = [(97, 131), (width, height), (320, 240), (2 * width + 3, height + 5), (40, 300)]
    out: list[bytes] = []
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack(
            [(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256],
            axis=-1,
        )
        noise = rng.integers(-40, 40, size=base.shape)
        rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(rgb)
        buf = io.BytesIO()
        if i == 1:
            image.putalpha(Image.fromarray((xx * 3 % 256).astype(np.uint8)))
        elif i == 2:
            image = image.convert("L")
        elif i == 3:
            image = image.convert("P")
        if i == 4:
            image.save(buf, format="JPEG", quality=90)
        else:
            image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def reference_pixels(processor: Any, images: Sequence[bytes]) -> npt.NDArray[np.float32]:
    """transformers' ``pixel_values`` for encoded images, opened and turned upright as
    transformers' ``load_image`` does (``Image.open`` then ``ImageOps.exif_transpose``)."""
    from PIL import Image, ImageOps

    opened = [ImageOps.exif_transpose(Image.open(io.BytesIO(data))) for data in images]
    with export._quiet():
        values = processor(images=opened, return_tensors="np")["pixel_values"]
    return np.asarray(values, dtype=np.float32)


def _check_preprocessing(
    images: Sequence[bytes], spec: ImagePreprocessing, processor: Any
) -> tuple[npt.NDArray[np.float32], float]:
    ours = ImagePreprocessor(spec).pixels(images)
    for data in images:
        decode_image(data)  # every sample must decode (a broken Pillow build would not)
    theirs = reference_pixels(processor, images)
    if ours.shape != theirs.shape:
        raise ExportError(
            f"the server's preprocessing gives {ours.shape}, transformers' {theirs.shape}"
        )
    diff = float(np.abs(ours - theirs).max())
    if diff > PREPROCESSING_TOLERANCE:
        raise ExportError(
            f"the server's image preprocessing differs from transformers' by {diff:.2e} "
            f"(more than {PREPROCESSING_TOLERANCE:g}); {PREPROCESSOR_CONFIG} has a setting "
            "it does not reproduce"
        )
    return ours, diff


# --- torch side -----------------------------------------------------------------------------


def _vectors(out: Any) -> Any:
    """transformers 5 returns the projected vector as ``pooler_output``; 4.x the tensor."""
    return out if hasattr(out, "shape") else out.pooler_output


def _torch_text(model: Any, batch: _TextBatch) -> npt.NDArray[np.float32]:
    import torch

    with torch.inference_mode():
        feeds = {k: torch.from_numpy(v) for k, v in batch.torch_feeds.items()}
        out = _vectors(model.get_text_features(**feeds))
    return np.asarray(out.float().numpy(), dtype=np.float32)


def _torch_images(model: Any, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import torch

    with torch.inference_mode():
        out = _vectors(model.get_image_features(pixel_values=torch.from_numpy(pixels)))
    return np.asarray(out.float().numpy(), dtype=np.float32)


def _text_module(model: Any, family: Family, pad_id: int) -> Any:
    import torch

    class TextGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            if family == "siglip":
                # Trained without a mask on texts padded with its pad id: put that id back
                # wherever the server padded.
                ids = torch.where(attention_mask > 0, input_ids, torch.full_like(input_ids, pad_id))
                return _vectors(self.model.get_text_features(input_ids=ids))
            return _vectors(
                self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
            )

    return TextGraph().eval()


def _vision_module(model: Any) -> Any:
    import torch

    class VisionGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return _vectors(self.model.get_image_features(pixel_values=pixel_values))

    return VisionGraph().eval()


def _export_graph(
    module: Any,
    example: tuple[npt.NDArray[Any], ...],
    input_names: tuple[str, ...],
    output_name: str,
    path: Path,
    exporter: export.Exporter,
    opset: int | None,
    *,
    fixed_length: bool,
) -> None:
    """Export with a dynamic batch axis, and a dynamic sequence axis unless
    ``fixed_length`` (images; SigLIP's texts)."""
    import torch

    args = tuple(torch.from_numpy(x) for x in example)
    axes: dict[int, str] = {0: "batch"} if fixed_length else {0: "batch", 1: "sequence"}
    with export._quiet(), torch.no_grad():
        try:
            options: dict[str, Any]
            if exporter == "dynamo":
                dims = {n: torch.export.Dim(n) for n in axes.values()}
                options = {
                    "verbose": False,
                    "opset_version": opset,
                    "dynamic_shapes": tuple(
                        {i: dims[n] for i, n in axes.items()} for _ in input_names
                    ),
                }
            else:
                options = {
                    "opset_version": opset or export.TORCHSCRIPT_OPSET,
                    "dynamic_axes": {
                        **{name: axes for name in input_names},
                        output_name: {0: "batch"},
                    },
                    "do_constant_folding": True,
                }
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=[output_name],
                dynamo=exporter == "dynamo",
                **options,
            )
        except Exception as exc:
            raise ExportError(f"torch.onnx.export ({exporter}) failed: {exc}") from exc


def _verify(
    path: Path,
    feeds: Sequence[dict[str, npt.NDArray[Any]]],
    references: Sequence[npt.NDArray[np.float32]],
    input_names: tuple[str, ...],
    output_name: str,
) -> float:
    """Least cosine between ONNX Runtime's and torch's vectors over every sample."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got_inputs = [i.name for i in session.get_inputs()]
    got_outputs = [o.name for o in session.get_outputs()]
    if got_inputs != list(input_names) or got_outputs != [output_name]:
        raise ExportError(
            f"{path}: graph takes {got_inputs} and gives {got_outputs}, expected "
            f"{list(input_names)} and {[output_name]}"
        )
    least = 1.0
    for feed, ref in zip(feeds, references, strict=True):
        (out,) = session.run([output_name], {n: feed[n] for n in input_names})
        got = np.asarray(out, dtype=np.float32)
        if got.shape != ref.shape or not np.isfinite(got).all():
            raise ExportError(f"{path}: gives {got.shape} (or NaN/inf), torch {ref.shape}")
        cosine = (got * ref).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12
        )
        least = min(least, float(cosine.min()))
    if least < MIN_COSINE:
        raise ExportError(
            f"{path}: ONNX Runtime's vectors reach a cosine of only {least:.6f} to torch's "
            f"(at least {MIN_COSINE} is required); try the other --exporter"
        )
    return least


# --- command line ---------------------------------------------------------------------------


def run_image_text_export(args: argparse.Namespace) -> int:
    """``trt-async export`` of a CLIP or SigLIP folder: 0 on success, 1 with the reason."""
    refused = [
        flag
        for flag, given in (
            ("--pool-in-graph", args.pool_in_graph),
            ("--heads m3", args.heads == "m3"),
            ("--int8", args.int8),
            ("--template", args.template is not None),
            ("--mask", args.mask is not None),
        )
        if given
    ]
    try:
        if args.task != "embed":
            raise ExportError(
                f"{args.hf_folder} is a CLIP/SigLIP model: it embeds texts and images; "
                "use --task embed"
            )
        if refused:
            raise ExportError(f"{', '.join(refused)} do(es) not apply to CLIP/SigLIP models")
        manifest = export_image_text_model(
            args.hf_folder,
            args.output,
            opset=args.opset,
            progress=not args.quiet,
            exporter=args.exporter,
        )
    except ExportError as exc:
        print(f"trt-async export: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.output}: {manifest.family} text and image towers, {manifest.embedding_size} "
        f"dims, images {manifest.vision.width} x {manifest.vision.height}, texts up to "
        f"{manifest.text.max_length} tokens"
    )
    return 0
