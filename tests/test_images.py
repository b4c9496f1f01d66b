"""Image decoding and preprocessing (trt_async.core.images) against transformers' processors.

The reference is transformers' PIL-backed ``CLIPImageProcessor`` / ``SiglipImageProcessor``
loaded from a ``preprocessor_config.json`` as the real checkpoints ship it, fed the image
as transformers' ``load_image`` opens it (``Image.open`` then ``ImageOps.exif_transpose``).
Over every size, mode and orientation below the difference is exactly 0.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.image_models import (
    clip_preprocessor_config,
    png_header_only,
    siglip_preprocessor_config,
)
from trt_async.backends.modelfiles import ImagePreprocessing
from trt_async.core.errors import ImageTooLarge, InvalidImage, Part
from trt_async.core.images import (
    ImagePreprocessor,
    ImageRejected,
    center_crop,
    decode_image,
)

transformers = pytest.importorskip("transformers")


def _processor(tmp_path: Path, config: dict[str, object]) -> Any:
    folder = tmp_path / f"proc-{abs(hash(json.dumps(config, sort_keys=True)))}"
    folder.mkdir(exist_ok=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return transformers.AutoImageProcessor.from_pretrained(str(folder), backend="pil")


def _spec(processor: Any, size: tuple[int, int]) -> ImagePreprocessing:
    from trt_async.tools.export_clip import image_preprocessing

    return image_preprocessing(processor, size)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image with structure in both directions (orientation shows) and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx * yy) % 256], -1
    )
    noise = rng.integers(-30, 30, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _variants() -> dict[str, bytes]:
    """Encoded images of several sizes, modes and orientations."""
    out: dict[str, bytes] = {}
    for w, h in [(640, 480), (480, 640), (224, 224), (100, 37), (1000, 223), (13, 400)]:
        out[f"rgb-{w}x{h}"] = _encode(_photo(w, h))
    base = _photo(300, 200, seed=1)
    rgba = base.copy()
    alpha = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (200, 1))
    rgba.putalpha(Image.fromarray(alpha))
    out["rgba"] = _encode(rgba)
    out["la"] = _encode(rgba.convert("LA"))
    out["l"] = _encode(base.convert("L"))
    out["p"] = _encode(base.convert("P"))
    p_transparent = base.convert("P")
    out["p-transparency"] = _encode(p_transparent, transparency=3)
    out["1"] = _encode(base.convert("1"))
    out["cmyk-jpeg"] = _encode(base.convert("CMYK"), "JPEG", quality=95)
    sixteen = (np.asarray(base.convert("L"), dtype=np.uint16) * 300).astype(np.uint16)
    out["i16"] = _encode(Image.fromarray(sixteen))
    assert Image.open(io.BytesIO(out["i16"])).mode == "I;16"
    out["jpeg"] = _encode(base, "JPEG", quality=90)
    out["webp"] = _encode(base, "WEBP", quality=90)
    frames = [_photo(120, 90, seed=s) for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    out["gif-animated"] = gif.getvalue()
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[f"jpeg-exif-{orientation}"] = _encode(base, "JPEG", quality=95, exif=exif)
    return out


def _reference(processor: Any, data: bytes) -> np.ndarray:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return np.asarray(processor(images=[image], return_tensors="np")["pixel_values"][0])


CONFIGS = {
    "clip-224": (clip_preprocessor_config(224, 224), (224, 224)),
    "siglip-224": (siglip_preprocessor_config(224), (224, 224)),
    # A crop smaller than the resize (many ViT checkpoints: 256 then 224).
    "resize-256-crop-224": (clip_preprocessor_config(256, 224), (224, 224)),
    # A crop larger than the resize: transformers pads with zeros.
    "resize-200-crop-224": (clip_preprocessor_config(200, 224), (224, 224)),
    "bilinear-siglip-96": ({**siglip_preprocessor_config(96), "resample": 2}, (96, 96)),
    "lanczos-clip-64": ({**clip_preprocessor_config(64, 64), "resample": 1}, (64, 64)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_preprocessing_equals_transformers(name: str, tmp_path: Path) -> None:
    config, size = CONFIGS[name]
    processor = _processor(tmp_path, config)
    ours = ImagePreprocessor(_spec(processor, size))
    images = _variants()
    got = ours.pixels(list(images.values()))
    assert got.dtype == np.float32 and got.shape == (len(images), 3, *size)
    worst = 0.0
    for row, (label, data) in enumerate(images.items()):
        expected = _reference(processor, data)
        diff = float(np.abs(got[row] - expected).max())
        assert diff == 0.0, f"{name}/{label}: max abs diff {diff}"
        worst = max(worst, diff)
    print(f"{name}: max abs diff to transformers over {len(images)} images: {worst}")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Orientation 3 (upside down): our values equal the processor's on the image turned
    by hand, not on the stored pixels (an independent check of the transpose)."""
    processor = _processor(tmp_path, clip_preprocessor_config(64, 64))
    ours = ImagePreprocessor(_spec(processor, (64, 64)))
    base = _photo(120, 80, seed=2)
    exif = Image.Exif()
    exif[0x0112] = 3
    data = _encode(base, "PNG", exif=exif)
    turned = processor(images=[base.rotate(180)], return_tensors="np")["pixel_values"][0]
    stored = processor(images=[base], return_tensors="np")["pixel_values"][0]
    got = ours.pixels([data])[0]
    assert np.abs(got - turned).max() == 0.0
    assert np.abs(got - stored).max() > 0.5
    # Orientation 6 (90 degrees clockwise) swaps the sides before the resize.
    exif[0x0112] = 6
    assert decode_image(_encode(base, "PNG", exif=exif)).size == (80, 120)


def test_transparency_is_composited_onto_white(tmp_path: Path) -> None:
    """transformers' convert_to_rgb: a fully transparent pixel becomes white, whatever
    its stored colour (Pillow's plain convert("RGB") would keep the colour)."""
    spec = ImagePreprocessing(height=4, width=4, rescale_factor=1 / 255)
    clear_black = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    got = ImagePreprocessor(spec).pixels([_encode(clear_black)])
    assert np.all(got == 1.0)


def test_center_crop_matches_transformers_on_odd_sizes() -> None:
    from transformers.image_transforms import center_crop as hf_center_crop

    rng = np.random.default_rng(0)
    for h, w, ch, cw in [(7, 9, 4, 4), (5, 5, 8, 3), (10, 3, 3, 10), (6, 6, 6, 6), (3, 4, 9, 9)]:
        pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        ours = center_crop(pixels, ch, cw)
        theirs = hf_center_crop(pixels, (ch, cw), input_data_format="channels_last")
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), (h, w, ch, cw)


def test_batches_and_requests_keep_their_own_errors(tmp_path: Path) -> None:
    processor = _processor(tmp_path, clip_preprocessor_config(32, 32))
    ours = ImagePreprocessor(_spec(processor, (32, 32)))
    good = _encode(_photo(50, 40))
    one = ours.pixels([good])
    two = ours.pixels([good, _encode(_photo(60, 30, seed=3))])
    assert np.array_equal(one[0], two[0])  # a batch does not change an image's values
    with pytest.raises(InvalidImage) as caught:
        ours.pixels([good, b"not an image"])
    assert caught.value.index == 1
    assert caught.value.message.startswith("image[1] is not an image")
    with pytest.raises(InvalidImage) as caught:
        ours.pixels([b"junk"], indices=[7], part=Part.INPUTS)
    assert caught.value.index == 7 and caught.value.message.startswith("input[7]")
    results = ours.pixels_each([[good], [good, b""], [good]])
    assert isinstance(results[0], np.ndarray) and isinstance(results[2], np.ndarray)
    assert isinstance(results[1], InvalidImage) and results[1].index == 1
    assert np.array_equal(results[0], one)


# --- hostile files ------------------------------------------------------------------------


def test_png_bomb_is_refused_from_its_header() -> None:
    """20,000 x 20,000 (1.2 GB as RGB): refused as too large, not as truncated, so no
    pixel was decoded (the file holds 64 bytes of image data)."""
    bomb = png_header_only(20_000, 20_000)
    assert len(bomb) < 200
    with pytest.raises(ImageRejected) as caught:
        decode_image(bomb)
    assert caught.value.too_large
    # Under Pillow's own limit but over ours: our check, before decoding.
    with pytest.raises(ImageRejected) as caught:
        decode_image(png_header_only(9_000, 9_000))
    assert caught.value.too_large and "81000000 pixels" in caught.value.reason
    spec = ImagePreprocessing(height=8, width=8)
    with pytest.raises(ImageTooLarge) as too_large:
        small, large = _encode(_photo(8, 8)), _encode(_photo(40, 40))
        ImagePreprocessor(spec, max_pixels=1000).pixels([small, large])
    assert too_large.value.index == 1 and "1600 pixels" in too_large.value.message
    # The same header with a small size is a (truncated) image, refused as such.
    with pytest.raises(ImageRejected) as caught:
        decode_image(png_header_only(100, 100))
    assert not caught.value.too_large and "truncated" in caught.value.reason


@pytest.mark.parametrize(
    ("label", "data", "words"),
    [
        ("empty", b"", "empty"),
        ("text", b"<html>hello</html>", "not an image"),
        ("truncated png", _encode(_photo(64, 64))[:300], "truncated"),
        ("truncated jpeg header", _encode(_photo(64, 64), "JPEG")[:400], "truncated"),
        ("truncated jpeg", _encode(_photo(64, 64), "JPEG")[:1500], "truncated"),
        # Pillow reads PPM, but only common web formats are opened.
        ("ppm", b"P6\n2 2\n255\n" + bytes(12), "not an image in a supported format"),
    ],
)
def test_bad_files_are_refused_with_a_reason(label: str, data: bytes, words: str) -> None:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data)
    assert words in caught.value.reason, (label, caught.value.reason)
    assert not caught.value.too_large


def test_image_errors_map_to_4xx() -> None:
    from trt_async.http.errors import Dialect, classify

    bad = classify(InvalidImage(2, "is truncated or corrupt (x)"), Dialect.OPENAI)
    assert (bad.status, bad.code) == (422, "invalid_image")
    big = classify(ImageTooLarge(0, "has too many pixels"), Dialect.DETAIL)
    assert big.status == 413 and big.message == "image[0] has too many pixels"
