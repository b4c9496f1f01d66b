"""CLIP and SigLIP export: both towers on ONNX Runtime against transformers and torch.

Each reference is computed here, independently of the export's own check: transformers'
tokenizer (CLIP: padded to the longest; SigLIP: ``padding="max_length"`` as trained) and
image processor feed the torch model; the exported graphs get what the server would feed
them (tokenizers' ids padded with any id and a mask; ``trt_async.core.images`` pixels).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps
from tokenizers import Tokenizer

from tests.image_models import IMAGE_SIZE, write_clip, write_siglip
from trt_async.backends.modelfiles import (
    ImageTextFiles,
    ImageTextManifest,
    ModelDirError,
    ModelFiles,
    read_image_text_manifest,
    read_manifest,
)
from trt_async.core.images import ImagePreprocessor
from trt_async.tools import export_clip
from trt_async.tools.export import ExportError, export_model, run_export

pytest.importorskip("torch", reason="exporting needs the export extra")
transformers = pytest.importorskip("transformers", reason="exporting needs the export extra")
ort = pytest.importorskip("onnxruntime")

TEXTS = [
    "a photo of a cat",
    "A man is playing a guitar on the street corner.",
    "hello",
    "今天天氣很好，我們去公園散步吧。",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12),  # past 77 and 64 tokens
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (Hugging Face folder, exported folder)."""
    root = tmp_path_factory.mktemp("image-text")
    out: dict[str, tuple[Path, Path]] = {}
    builders = {
        "clip": lambda d: write_clip(d),
        "clip-legacy-eos": lambda d: write_clip(d, eos="legacy", seed=1),
        "siglip": lambda d: write_siglip(d),
    }
    for name, build in builders.items():
        hf = build(root / f"{name}-hf")
        export_clip.export_image_text_model(hf, root / name, progress=False)
        out[name] = (hf, root / name)
    return out


def _images() -> list[bytes]:
    rng = np.random.default_rng(5)
    out = []
    for i, (w, h) in enumerate([(64, 48), (31, 90), (32, 32), (200, 120), (50, 50)]):
        pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        pixels[: h // 2] //= 3  # structure, not only noise
        image = Image.fromarray(pixels)
        if i == 3:
            image = image.convert("L")
        buf = io.BytesIO()
        image.save(buf, format="JPEG" if i == 4 else "PNG")
        out.append(buf.getvalue())
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _vectors(out: Any) -> np.ndarray:
    tensor = out if hasattr(out, "shape") else out.pooler_output
    return tensor.detach().float().numpy()


def _served_text_feeds(model_dir: Path, manifest: ImageTextManifest) -> dict[str, np.ndarray]:
    """What a server feeds the text tower: tokenizers' ids, right-padded with an id that is
    not the pad token (the graph must not depend on it), and the mask."""
    tok = Tokenizer.from_file(str(model_dir / "text" / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(manifest.text.max_length)
    encodings = tok.encode_batch(TEXTS)
    width = manifest.text.pad_to_length or max(len(e.ids) for e in encodings)
    ids = np.full((len(TEXTS), width), 0, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, enc in enumerate(encodings):
        ids[row, : len(enc.ids)] = enc.ids
        mask[row, : len(enc.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("name", ["clip", "clip-legacy-eos", "siglip"])
def test_towers_match_torch(name: str, exported: dict[str, tuple[Path, Path]]) -> None:
    import torch

    hf_dir, model_dir = exported[name]
    manifest = read_image_text_manifest(model_dir)
    assert manifest is not None
    model = transformers.AutoModel.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    processor = transformers.AutoImageProcessor.from_pretrained(str(hf_dir), backend="pil")
    padding = {"padding": "max_length", "max_length": 64} if name == "siglip" else {"padding": True}
    enc = hf_tok(TEXTS, truncation=True, return_tensors="pt", **padding)
    if name == "siglip":
        enc.pop("attention_mask", None)  # SigLIP takes none (its tokenizer gives none)
    images = _images()
    opened = [ImageOps.exif_transpose(Image.open(io.BytesIO(b))) for b in images]
    with torch.inference_mode():
        text_ref = _vectors(model.get_text_features(**enc))
        pixel_ref = processor(images=opened, return_tensors="pt")["pixel_values"]
        image_ref = _vectors(model.get_image_features(pixel_values=pixel_ref))
        both = model(**enc, pixel_values=pixel_ref)

    text = ort.InferenceSession(str(model_dir / "text" / "model.onnx"))
    (text_got,) = text.run(None, _served_text_feeds(model_dir, manifest))
    vision = ort.InferenceSession(str(model_dir / "vision" / "model.onnx"))
    pixels = ImagePreprocessor(manifest.preprocessing).pixels(images)
    (image_got,) = vision.run(None, {"pixel_values": pixels})

    text_cos, image_cos = _cosines(text_got, text_ref), _cosines(image_got, image_ref)
    print(f"{name}: least cosine to torch, text {text_cos.min():.7f}, image {image_cos.min():.7f}")
    assert text_cos.min() >= 0.999 and image_cos.min() >= 0.999
    assert np.abs(pixels - pixel_ref.numpy()).max() == 0.0
    # The vectors differ between inputs far more than from torch's (a graph that ignored
    # its input would pass the cosine check on a random model's similar vectors).
    assert _cosines(text_got[:1], text_got[1:2])[0] < 0.9999
    assert _cosines(image_got[:1], image_got[1:2])[0] < 0.9999

    # Zero-shot logits from the two towers and the manifest's scale equal the model's.
    units = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (image_got, text_got)]
    logits = manifest.logit_scale * units[0] @ units[1].T + (manifest.logit_bias or 0.0)
    np.testing.assert_allclose(logits, both.logits_per_image.numpy(), rtol=1e-3, atol=1e-3)


def test_manifests_say_which_graph_is_which(exported: dict[str, tuple[Path, Path]]) -> None:
    _, clip_dir = exported["clip"]
    files = ImageTextFiles.resolve(clip_dir)
    clip = files.manifest
    assert clip.family == "clip" and clip.zero_shot_activation == "softmax"
    assert clip.text.inputs == ["input_ids", "attention_mask"] and clip.text.pad_to_length is None
    assert clip.text.max_length == 77 and clip.text.pooling == "eos"
    assert clip.vision.input == "pixel_values" and (clip.vision.height, clip.vision.width) == (
        IMAGE_SIZE,
        IMAGE_SIZE,
    )
    prep = clip.preprocessing
    assert (prep.resize_shortest_edge, prep.crop_height, prep.resample) == (32, 32, "bicubic")
    assert prep.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert clip.preprocessing_max_abs_diff == 0.0
    assert clip.text_min_cosine is not None and clip.text_min_cosine >= 0.999
    assert files.vision_onnx == clip_dir / "vision" / "model.onnx"
    # The text tower is an ordinary model folder the server can already serve.
    text_files = ModelFiles.resolve(clip_dir / "text")
    assert text_files.manifest is not None
    assert text_files.manifest.output == "sentence_embedding"
    assert text_files.manifest.pooling == "none" and text_files.manifest.max_length == 77
    assert read_manifest(clip_dir / "text" / "trt_async.json").hidden_size == clip.embedding_size
    with pytest.raises(ModelDirError, match="image-text model folder"):
        ModelFiles.resolve(clip_dir)
    with pytest.raises(ModelDirError, match="not an image-text model folder"):
        ImageTextFiles.resolve(clip_dir / "text")
    assert (clip_dir / "preprocessor_config.json").is_file()

    legacy = read_image_text_manifest(exported["clip-legacy-eos"][1])
    assert legacy is not None and legacy.text.pooling == "max_id"

    siglip = read_image_text_manifest(exported["siglip"][1])
    assert siglip is not None and siglip.family == "siglip"
    assert siglip.zero_shot_activation == "sigmoid" and siglip.logit_bias is not None
    # SigLIP's tokenizer pads with </s> (id 1), not <pad> (id 0).
    assert (siglip.text.pad_to_length, siglip.text.pad_token_id, siglip.text.max_length) == (
        64,
        1,
        64,
    )
    assert siglip.preprocessing.crop_height is None
    assert (siglip.preprocessing.resize_height, siglip.preprocessing.resize_width) == (32, 32)


def test_siglip_text_needs_its_length_and_its_pad(exported: dict[str, tuple[Path, Path]]) -> None:
    """The graph takes exactly 64 tokens (a shorter row would pool a real token) and
    repads with </s>: padding with another id changes torch's vector, not the graph's."""
    import torch

    hf_dir, model_dir = exported["siglip"]
    manifest = read_image_text_manifest(model_dir)
    assert manifest is not None
    feeds = _served_text_feeds(model_dir, manifest)
    session = ort.InferenceSession(str(model_dir / "text" / "model.onnx"))
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {k: v[:, :20] for k, v in feeds.items()})
    model = transformers.SiglipModel.from_pretrained(str(hf_dir)).eval()
    with torch.inference_mode():
        ids = torch.from_numpy(feeds["input_ids"])
        wrong_pad = _vectors(model.get_text_features(input_ids=ids))
    (got,) = session.run(None, feeds)
    assert _cosines(got[:1], wrong_pad[:1])[0] < 0.999


def test_vision_batch_axis_is_dynamic(exported: dict[str, tuple[Path, Path]]) -> None:
    _, model_dir = exported["clip"]
    manifest = read_image_text_manifest(model_dir)
    assert manifest is not None
    pixels = ImagePreprocessor(manifest.preprocessing).pixels(_images())
    session = ort.InferenceSession(str(model_dir / "vision" / "model.onnx"))
    (all_rows,) = session.run(None, {"pixel_values": pixels})
    (one,) = session.run(None, {"pixel_values": pixels[2:3]})
    np.testing.assert_allclose(one[0], all_rows[2], atol=1e-5)
    shape = session.get_inputs()[0].shape
    assert shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE] and not isinstance(shape[0], int)


def _args(hf: Path, out: Path, **over: Any) -> argparse.Namespace:
    base = {
        "hf_folder": hf,
        "task": "embed",
        "output": out,
        "opset": None,
        "quiet": True,
        "exporter": "torchscript",
        "pool_in_graph": False,
        "heads": "auto",
        "int8": False,
        "template": None,
        "mask": None,
    }
    return argparse.Namespace(**{**base, **over})


def test_cli_exports_clip_and_refuses_what_does_not_apply(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, capsys: Any
) -> None:
    hf, _ = exported["clip"]
    assert run_export(_args(hf, tmp_path / "out")) == 0
    assert "clip text and image towers" in capsys.readouterr().out
    assert (tmp_path / "out" / "trt_async.json").is_file()
    assert run_export(_args(hf, tmp_path / "x", task="rerank")) == 1
    assert "use --task embed" in capsys.readouterr().err
    assert run_export(_args(hf, tmp_path / "x", int8=True)) == 1
    assert "--int8" in capsys.readouterr().err
    with pytest.raises(ExportError, match="CLIP/SigLIP"):
        export_model(hf, "embed", tmp_path / "y", progress=False)


def test_bad_folders_are_named_with_the_fix(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf, _ = exported["clip"]
    copy = tmp_path / "hf"
    shutil.copytree(hf, copy)
    (copy / "preprocessor_config.json").unlink()
    with pytest.raises(ExportError, match=r"preprocessor_config\.json: missing"):
        export_clip.export_image_text_model(copy, tmp_path / "o1", progress=False)

    shutil.copyfile(hf / "preprocessor_config.json", copy / "preprocessor_config.json")
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(
        json.dumps({**config, "crop_size": {"height": 24, "width": 24}})
    )
    with pytest.raises(ExportError, match="vision tower takes 32 x 32"):
        export_clip.export_image_text_model(copy, tmp_path / "o2", progress=False)
    (copy / "preprocessor_config.json").write_text(json.dumps(config))

    # transformers' tokenizer of a model may differ from a tokenizer.json found beside it
    # (SigLIP's SentencePiece tokenizer lowercases in Python): simulated here by a
    # transformers tokenizer that does not lowercase.
    raw = json.loads((hf / "tokenizer.json").read_text())
    raw["normalizer"] = None
    other = tmp_path / "other-tokenizer.json"
    other.write_text(json.dumps(raw))
    cased = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(other), pad_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    monkeypatch.setattr(export_clip, "_hf_tokenizer", lambda src: cased)
    with pytest.raises(ExportError, match="tokenises 'A Photo of TWO dogs"):
        export_clip.export_image_text_model(copy, tmp_path / "o3", progress=False)


def test_sentencepiece_only_siglip_is_refused_with_the_reason(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    hf, _ = exported["siglip"]
    copy = tmp_path / "hf"
    shutil.copytree(hf, copy)
    (copy / "tokenizer.json").unlink()
    (copy / "spiece.model").write_bytes(b"a SentencePiece model")
    with pytest.raises(ExportError, match=r"only SentencePiece's spiece\.model"):
        export_clip.export_image_text_model(copy, tmp_path / "out", progress=False)


def test_unsupported_preprocessing_is_refused(tmp_path: Path) -> None:
    from tests.image_models import clip_preprocessor_config

    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({**clip_preprocessor_config(32, 32), "do_center_crop": False})
    )
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path), backend="pil")
    with pytest.raises(ExportError, match="without a centre crop"):
        export_clip.image_preprocessing(processor, (32, 32))


@pytest.mark.slow
def test_dynamo_exporter_exports_both_towers(
    exported: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    hf, _ = exported["siglip"]
    manifest = export_clip.export_image_text_model(
        hf, tmp_path / "dynamo", progress=False, exporter="dynamo"
    )
    assert manifest.text_min_cosine is not None and manifest.text_min_cosine >= 0.999
    assert manifest.vision_min_cosine is not None and manifest.vision_min_cosine >= 0.999
