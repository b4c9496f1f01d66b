"""What an image costs before and in the vision tower: preprocessing and bare ONNX Runtime.

``python -m perf.image_costs [--rounds 5] [--seconds 2] [--base] [--json FILE]``

* Preprocessing (:class:`trt_async.core.images.ImagePreprocessor`) of one 640 x 480 JPEG
  to 224 x 224 with CLIP's settings (shortest edge, bicubic, centre crop) and SigLIP's
  (square resize), one image per call and 32 per call: CPU microseconds per image
  (process time, one thread), the JPEG decode alone, and transformers' PIL processor
  doing the same (``Image.open``, ``exif_transpose``, processor) for comparison.
* The vision tower alone on ONNX Runtime (the session called directly, default threads):
  the tiny test CLIP (32 x 32 images) and, with ``--base``, a randomly initialised tower
  of ViT-B/32's shape (224 x 224, 12 layers, hidden 768), at batch 1 and 32.

Every figure is the median over ``--rounds`` rounds of ``--seconds`` each.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from trt_async.core.images import ImagePreprocessor, decode_image
from trt_async.tools.tiny_image_text import (
    clip_preprocessor_config,
    siglip_preprocessor_config,
    write_clip,
)


def photo_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A smooth picture with some texture, JPEG quality 90 (about what a camera writes)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack(
        [
            128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 53.0),
            128 + 90 * np.cos((xx + yy) / 71.0),
            255 * xx / width,
        ],
        axis=-1,
    )
    rgb += rng.normal(0, 12, size=rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def per_item_us(call: Callable[[], object], items: int, seconds: float) -> tuple[float, float]:
    """(CPU µs, wall µs) per item of ``call``, repeated for about ``seconds``."""
    call()  # warm
    cpu0, wall0, calls = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - wall0 < seconds:
        call()
        calls += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / calls / items * 1e6, wall / calls / items * 1e6


def _processors(folder: Path) -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {}
    for name, config in {
        "clip": clip_preprocessor_config(224, 224),
        "siglip": siglip_preprocessor_config(224),
    }.items():
        sub = folder / name
        sub.mkdir()
        (sub / "preprocessor_config.json").write_text(json.dumps(config))
        out[name] = transformers.AutoImageProcessor.from_pretrained(str(sub), backend="pil")
    return out


def preprocessing(rounds: int, seconds: float, folder: Path) -> dict[str, Any]:
    from trt_async.tools.export_clip import image_preprocessing

    jpeg = photo_jpeg()
    results: dict[str, Any] = {"image": "640x480 JPEG q90", "bytes": len(jpeg)}
    processors = _processors(folder)
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "decode only": (lambda: decode_image(jpeg), 1),
    }
    for name, processor in processors.items():
        ours = ImagePreprocessor(image_preprocessing(processor, (224, 224)))
        batch = [jpeg] * 32
        cases[f"{name} x1"] = (lambda o=ours: o.pixels([jpeg]), 1)
        cases[f"{name} x32"] = (lambda o=ours, b=batch: o.pixels(b), 32)

        def transformers_one(p: Any = processor) -> object:
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg)))
            return p(images=[image], return_tensors="np")["pixel_values"]

        cases[f"{name} transformers x1"] = (transformers_one, 1)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(rounds):
        for label, (call, items) in cases.items():
            samples[label].append(per_item_us(call, items, seconds))
    for label, values in samples.items():
        results[label] = {
            "cpu_us_per_image": statistics.median(v[0] for v in values),
            "wall_us_per_image": statistics.median(v[1] for v in values),
        }
    return results


def vision_tower(model_dir: Path, rounds: int, seconds: float) -> dict[str, Any]:
    import onnxruntime as ort

    from trt_async.backends.modelfiles import read_image_text_manifest

    manifest = read_image_text_manifest(model_dir)
    assert manifest is not None
    session = ort.InferenceSession(
        str(model_dir / "vision" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    shape = (3, manifest.vision.height, manifest.vision.width)
    out: dict[str, Any] = {"image_size": manifest.vision.height}
    for batch in (1, 32):
        pixels = np.random.default_rng(batch).normal(size=(batch, *shape)).astype(np.float32)
        rates = []
        for _ in range(rounds):

            def run(p: np.ndarray = pixels) -> object:
                return session.run(None, {"pixel_values": p})

            _, wall_us = per_item_us(run, batch, seconds)
            rates.append(1e6 / wall_us)
        out[f"batch {batch} images/s"] = statistics.median(rates)
    return out


def _export(folder: Path, name: str, **sizes: Any) -> Path:
    from trt_async.tools.export_clip import export_image_text_model

    hf = write_clip(folder / f"{name}-hf", **sizes)
    export_image_text_model(hf, folder / name, progress=False)
    return folder / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--base", action="store_true", help="also a ViT-B/32-shaped tower")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report["preprocessing"] = preprocessing(args.rounds, args.seconds, folder)
        report["vision tiny"] = vision_tower(_export(folder, "tiny"), args.rounds, args.seconds)
        if args.base:
            base = _export(folder, "base", vision="vit-b-32")
            report["vision ViT-B/32 shape"] = vision_tower(base, args.rounds, args.seconds)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
