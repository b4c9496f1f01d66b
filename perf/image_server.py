"""Images per second through the server against the bare runtime, preprocessing included.

``python -m perf.image_server [--rounds 3] [--seconds 20] [--concurrency 8] [--json FILE]``

* The model: a randomly initialised CLIP whose vision tower has ViT-B/32's shape (224 x 224,
  12 layers, hidden 768), exported with ``trt-async export`` (``--model DIR`` reuses one).
* The bench mix: 640 x 480 JPEGs (24 different pictures) in requests of 1, 2, 4, 8 and 16
  images (``/embeddings_image``, base64 data URIs), sent by ``--concurrency`` clients in a
  closed loop to ``trt-async serve`` on loopback (access log off).
* The bare runtime: in this process, the same JPEGs decoded and preprocessed by
  :class:`~trt_async.core.images.ImagePreprocessor` and run through the vision graph on ONNX
  Runtime (the server's session options), 32 images at a time, in two arrangements (see
  :class:`Bare`); the better one is the ceiling: what the hardware gives with no server
  around it. Each arrangement runs half of a round's seconds.
* Rounds alternate (server, then bare) so that drift on the machine hits both alike; the
  server idles while the bare runtime runs (its threads do not spin). Every figure is the
  median over ``--rounds``.
* Preprocessing per image: CPU time of ``ImagePreprocessor.pixels`` on one JPEG (one thread),
  and the server's own share per image (``compute_input`` of ``GET /metrics`` as JSON,
  wall time: fetching nothing here, decoding and preprocessing in the shared hops).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from perf.image_costs import per_item_us
from perf.servers import REPO, Server, free_port, running, tree_cpu_s
from trt_async.backends.modelfiles import read_image_text_manifest
from trt_async.core.images import ImagePreprocessor
from trt_async.tools.tiny_image_text import write_clip

MODEL = "clip-b32"
REQUEST_SIZES = (1, 2, 4, 8, 16)
BARE_BATCH = 32


def photos(count: int = 24, width: int = 640, height: int = 480) -> list[bytes]:
    """Different smooth pictures with texture, JPEG quality 90."""
    out = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        rng = np.random.default_rng(i)
        a, b, c = rng.uniform(20, 90, 3)
        rgb = np.stack(
            [
                128 + 100 * np.sin(xx / a + i) * np.cos(yy / b),
                128 + 90 * np.cos((xx + yy) / c),
                255 * ((xx + 37 * i) % width) / width,
            ],
            axis=-1,
        )
        rgb += rng.normal(0, 12, size=rgb.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bodies(jpegs: list[bytes]) -> list[tuple[bytes, int]]:
    """The mix's request bodies, each with its image count, built once."""
    uris = [f"data:image/jpeg;base64,{base64.b64encode(j).decode()}" for j in jpegs]
    out = []
    at = 0
    for round_ in range(4):
        for size in REQUEST_SIZES:
            chosen = [uris[(at + k) % len(uris)] for k in range(size)]
            at += size + round_
            out.append((json.dumps({"model": MODEL, "input": chosen}).encode(), size))
    return out


async def _load(url: str, mix: list[tuple[bytes, int]], concurrency: int, seconds: float) -> float:
    """Images per second answered in ``seconds`` of a closed loop of ``concurrency`` clients."""
    images = 0
    failures = 0
    stop = time.perf_counter() + seconds
    counter = iter(range(1 << 62))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal images, failures
            while time.perf_counter() < stop:
                body, size = mix[next(counter) % len(mix)]
                r = await client.post(
                    "/embeddings_image", content=body, headers={"content-type": "application/json"}
                )
                if r.status_code == 200 and len(r.json()["data"]) == size:
                    images += size
                else:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} requests failed")
    return images / elapsed


class Bare:
    """The vision graph on ONNX Runtime with nothing around it, preprocessing included, in
    two arrangements (the better is the ceiling): one session with every core, each batch
    preprocessed then run (``one session``); or one single-thread session per core, each
    in a thread of its own that preprocesses and runs its own batches, so one thread's
    preprocessing overlaps the other's inference (``a session per core``)."""

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        from trt_async.backends.onnxruntime import session_options

        manifest = read_image_text_manifest(model_dir)
        assert manifest is not None
        self.preprocessor = ImagePreprocessor(manifest.preprocessing)
        path = str(model_dir / "vision" / "model.onnx")
        self.cores = os.cpu_count() or 1
        self.session = ort.InferenceSession(
            path, session_options(self.cores), providers=["CPUExecutionProvider"]
        )
        self.lanes = [
            ort.InferenceSession(path, session_options(1), providers=["CPUExecutionProvider"])
            for _ in range(self.cores)
        ]

    def _run(self, session: Any, jpegs: list[bytes], start: int, stop_at: float) -> int:
        done, at = 0, start
        while time.perf_counter() < stop_at:
            chunk = [jpegs[(at + k) % len(jpegs)] for k in range(BARE_BATCH)]
            at += BARE_BATCH
            session.run(None, {"pixel_values": self.preprocessor.pixels(chunk)})
            done += BARE_BATCH
        return done

    def images_per_s(self, jpegs: list[bytes], seconds: float) -> dict[str, float]:
        started = time.perf_counter()
        one = self._run(self.session, jpegs, 0, started + seconds)
        one_rate = one / (time.perf_counter() - started)
        started = time.perf_counter()
        with ThreadPoolExecutor(len(self.lanes)) as pool:
            counts = list(
                pool.map(
                    lambda i: self._run(self.lanes[i], jpegs, 7 * i, started + seconds),
                    range(len(self.lanes)),
                )
            )
        lanes_rate = sum(counts) / (time.perf_counter() - started)
        return {"one session": one_rate, "a session per core": lanes_rate}


def _batches(url: str) -> tuple[float, float]:
    """(image batches, images in them) so far, from the Prometheus batch-size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("trt_async_batch_size_count") and f'"{MODEL}/image"' in line:
            count = float(line.rsplit(" ", 1)[1])
        if line.startswith("trt_async_batch_size_sum") and f'"{MODEL}/image"' in line:
            total = float(line.rsplit(" ", 1)[1])
    return count, total


def _stats(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/metrics", headers={"accept": "application/json"}, timeout=10)
    by_name = {m["name"]: m["inference_stats"] for m in r.json()["model_stats"]}
    stats: dict[str, Any] = by_name[f"{MODEL}_image_encoder"]
    return stats


def measure(args: argparse.Namespace, model_dir: Path, logs: Path) -> dict[str, Any]:
    jpegs = photos()
    mix = bodies(jpegs)
    bare = Bare(model_dir)
    bare.images_per_s(jpegs, 4.0)  # warm
    config = logs / "server.yaml"
    config.write_text(
        f"embedding_models:\n  {MODEL}:\n    model_path: {json.dumps(str(model_dir))}\n"
        "server:\n  max_body_bytes: 67108864\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "trt_async", "--log-level", "WARNING", "serve"]
    server = Server(
        "ours",
        [*command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        port,
        env={"PYTHONPATH": str(REPO)},
    )
    server_rates: list[float] = []
    bare_rates: list[dict[str, float]] = []
    probe = json.dumps({"model": MODEL, "input": ["warm up"]}).encode()
    with running([server], logs, probe):
        asyncio.run(_load(server.url, mix, args.concurrency, 5.0))  # warm
        before = _stats(server.url)
        batches_before = _batches(server.url)
        cpu_before = tree_cpu_s(server.process.pid) if server.process else 0.0
        sent = 0
        for _ in range(args.rounds):
            rate = asyncio.run(_load(server.url, mix, args.concurrency, args.seconds))
            server_rates.append(rate)
            sent += round(rate * args.seconds)
            bare_rates.append(bare.images_per_s(jpegs, args.seconds / 2))
            shown = ", ".join(f"{k} {v:.2f}" for k, v in bare_rates[-1].items())
            print(f"round: server {server_rates[-1]:.2f} images/s; bare: {shown}", flush=True)
        after = _stats(server.url)
        batches_after = _batches(server.url)
        cpu_after = tree_cpu_s(server.process.pid) if server.process else 0.0
    served_images = sum(r * args.seconds for r in server_rates)
    input_ns = after["compute_input"]["ns"] - before["compute_input"]["ns"]
    cpu_us, wall_us = per_item_us(lambda: bare.preprocessor.pixels(jpegs[:1]), 1, 3.0)
    server_median = statistics.median(server_rates)
    bare_medians = {k: statistics.median(r[k] for r in bare_rates) for k in bare_rates[0]}
    bare_median = max(bare_medians.values())
    return {
        "model": "CLIP, vision tower of ViT-B/32's shape (224 x 224), ONNX Runtime fp32",
        "mix": f"640x480 JPEG q90, requests of {list(REQUEST_SIZES)} images, "
        f"{args.concurrency} clients, /embeddings_image with data: URIs",
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "server images/s": server_rates,
        "bare images/s (batches of 32, preprocessing included)": bare_rates,
        "server images/s median": server_median,
        "bare images/s medians": bare_medians,
        "server / bare (the better arrangement)": server_median / bare_median,
        "preprocessing CPU us per image (one thread)": cpu_us,
        "preprocessing wall us per image (one thread)": wall_us,
        "server compute_input ms per image (wall, in the shared hops)": (
            input_ns / 1e6 / max(served_images, 1)
        ),
        "server images per batch": (batches_after[1] - batches_before[1])
        / max(batches_after[0] - batches_before[0], 1),
        "server CPU ms per image (its whole process tree)": (cpu_after - cpu_before)
        * 1000
        / max(served_images, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--model", type=Path, default=None, help="an exported CLIP folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from trt_async.tools.export_clip import export_image_text_model

            hf = write_clip(folder / "hf", vision="vit-b-32")
            model_dir = folder / "model"
            export_image_text_model(hf, model_dir, progress=False)
        report = measure(args, model_dir, folder)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
