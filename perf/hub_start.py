"""Time from ``trt-async serve --model ORG/NAME`` to ``/ready``, through a local mirror of the
Hugging Face hub (``tests/hub_mirror.py``, with ``HF_ENDPOINT`` pointed at it).

Two repositories of all-MiniLM-L6-v2's real weights: one as sentence-transformers publishes
it (with ``onnx/model.onnx``), one without the graph (exported with torch at the first
start). Each is timed from an empty cache (download, plus the export) and again from the
filled cache; every process's attempts to import torch are logged, and the ONNX starts must
have none. The export of the model itself is done once beforehand, for the mirror's graph;
the same graph served from its local folder (``--config``) is the baseline.

    python -m perf.hub_start --rounds 3 --json perf/results/hub-start/hub_start.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.hub_mirror import HubMirror, hf_folder, hub_env, sentence_transformers_repo
from tests.models import minilm_hf_path

REPO = Path(__file__).resolve().parents[1]
WITH_ONNX = "sentence-transformers/all-MiniLM-L6-v2"
WITHOUT_ONNX = "mirror-no-onnx/all-MiniLM-L6-v2"
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
    args = parser.parse_args()

    from trt_async.tools.embedded import embedded_model_dir

    work = Path(tempfile.mkdtemp(prefix="hub-start-"))
    mirror = HubMirror().start()
    try:
        exported = embedded_model_dir(cache_dir=work / "export", progress=False)
        mirror.add(WITH_ONNX, sentence_transformers_repo(minilm_hf_path(), exported / "model.onnx"))
        mirror.add(WITHOUT_ONNX, hf_folder(minilm_hf_path()))
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
            WITH_ONNX: ["--model", WITH_ONNX],
            WITHOUT_ONNX: ["--model", WITHOUT_ONNX],
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
                    env = hub_env(mirror.url, root, site=site, IMPORT_WATCH_LOG=str(watch))
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
        mirror.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
