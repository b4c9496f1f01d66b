"""A real model through the project's own CUDA path, without TensorRT.

``gpu_smoke.py`` checks the CUDA machinery with an engine stand-in that copies memory; no
real vector comes out of it. Here the stand-in engine's ``execute_async_v3`` runs the
exported model's real computation -- all-MiniLM-L6-v2's architecture (BERT, 6 layers,
hidden 384, mean pooling) in PyTorch -- on the stream the backend hands it
(``torch.cuda.ExternalStream``), reading and writing the device buffers the backend bound
(tensors over those pointers via ``__cuda_array_interface__``). Everything around it is
the project's: :class:`TensorRTBackend`, pinned buffers, one context per bucket, capture,
fallback, the scheduler, the HTTP server.

What it checks, in order (exit 1 if any fails):

1. every bucket's vectors against ONNX Runtime on the CPU running the exported graph:
   finite, cosine >= 0.999 (fp32);
2. CUDA graph capture around the PyTorch kernels inside the project's own ThreadLocal
   capture: per bucket either a graph whose replays give the same vectors as plain
   enqueues, or the exact capture error with the bucket served by plain enqueues (its
   vectors are in check 1 either way);
3. a server (granian, this backend) answering ``/v1/embeddings`` with the vectors a CPU
   server (ONNX Runtime) gives for the same texts (cosine >= 0.999);
4. items/s through that server at 1 and 64 clients (one text per request), against the
   bare stand-in engine (tokenise, then one batch of 1 or 64 at a time, no server).

The weights are random (seeded), built on the spot with transformers, so nothing needs to
be carried to the GPU machine; ``--hf-dir`` takes a real Hugging Face folder instead
(all-MiniLM-L6-v2's own weights, for instance). On a GPU machine with CUDA 13, PyTorch,
cuda-bindings 13, onnxruntime (CPU) and transformers, from a checkout:

    python perf/gpu_model.py --all -o perf/results/gpu-model/report.json

``--all`` runs ``gpu_smoke.py`` first and ``gpu_check.py --random-model`` where TensorRT
is installed, so that one command is the whole GPU check.

``--fake MODULE:NAME`` runs the same code on the CPU against a stand-in for
``cuda.bindings.runtime`` that ``NAME()`` makes (PyTorch on the CPU, kernels queued on the
stand-in's streams); the tests run it with their fake CUDA runtime
(``--fake tests.fake_trt:FakeCudaRuntime``). The script has not yet run on a GPU. Exit
status: 0 all checks passed, 1 a check failed, 2 nothing to run on.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import pkgutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: all-MiniLM-L6-v2's architecture (its config.json), with random weights.
MINILM = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
#: A tiny variant for the CPU run in CI.
TINY = {**MINILM, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}  # fmt: skip
MIN_COSINE = 0.999
MODEL = "minilm-standin"
_ENV = "TRT_ASYNC_GPU_MODEL"  # JSON settings for the server process


# -- the model folder ----------------------------------------------------------------------


def _words() -> list[str]:
    from trt_async.bench.corpus import corpus_dir

    text = (corpus_dir() / "en.txt").read_text(encoding="utf-8")
    return sorted({w.strip(".,;:!?\"'()").lower() for w in text.split()} - {""})


def write_hf_folder(folder: Path, arch: dict[str, int], seed: int = 0) -> Path:
    """A Hugging Face folder: BertModel with ``arch`` and seeded random weights, a WordPiece
    tokenizer over the bench corpus's words, and sentence-transformers' mean pooling."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = transformers.BertModel(transformers.BertConfig(**arch), add_pooling_layer=False)
    model.save_pretrained(folder)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate([*special, *_words()])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "model_max_length": 512})
    )
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": arch["hidden_size"], "pooling_mode_mean_tokens": True}
    ))  # fmt: skip
    return folder


def export(hf_dir: Path, out: Path) -> Path:
    """The project's own export (pooling in the graph), checked against torch there."""
    from trt_async.tools.export import export_model

    export_model(hf_dir, "embed", out, pool_in_graph=True, progress=False)
    return out


# -- the stand-in engine -------------------------------------------------------------------


class _DeviceArray:
    """Device memory as ``__cuda_array_interface__`` (version 2: no stream semantics), so
    ``torch.as_tensor`` wraps the backend's own buffer without a copy."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (int(ptr), False), "version": 2,
        }  # fmt: skip


class TorchCompute:
    """The model's forward pass over bound buffers, on GPU (real CUDA) or CPU (fakes)."""

    def __init__(self, hf_dir: Path, pooling: str, device: str) -> None:
        import torch
        import transformers

        self.torch = torch
        self.device = device
        self.pooling = pooling
        model = transformers.AutoModel.from_pretrained(
            hf_dir, attn_implementation="eager", add_pooling_layer=False
        )
        self.model = model.eval().to(device)

    def tensor(self, ptr: int, shape: tuple[int, ...], dtype: str) -> Any:
        torch = self.torch
        if self.device == "cpu":  # fake device memory is host memory
            count = int(np.prod(shape))
            raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(ptr)
            return torch.from_numpy(np.frombuffer(raw, dtype=dtype, count=count).reshape(shape))
        typestr = np.dtype(dtype).str
        return torch.as_tensor(_DeviceArray(ptr, shape, typestr), device=self.device)

    def __call__(self, addresses: dict[str, int], batch: int, length: int) -> None:
        torch = self.torch
        with torch.inference_mode():
            ids = self.tensor(addresses["input_ids"], (batch, length), "int64")
            mask = self.tensor(addresses["attention_mask"], (batch, length), "int64")
            types = self.tensor(addresses["token_type_ids"], (batch, length), "int64")
            hidden = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                w = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)
            out = self.tensor(addresses["sentence_embedding"], (batch, pooled.shape[1]), "float32")
            out.copy_(pooled)


class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class _Namespace:
    def __init__(self, *names: str) -> None:
        for n in names:
            setattr(self, n, _Enum(n))


INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"


class StandInEngine:
    num_io_tensors = len(INPUTS) + 1
    num_optimization_profiles = 1

    def __init__(self, module: StandInTensorRT, spec: dict[str, Any]) -> None:
        self.module = module
        self.max_batch, self.max_length = spec["profile_max"]
        self.hidden = spec["hidden"]

    @property
    def device_memory_size_v2(self) -> int:
        return 256  # the forward pass uses PyTorch's own allocator, not this scratch

    def get_device_memory_size_for_profile_v2(self, profile: int) -> int:
        return 256

    def get_tensor_name(self, index: int) -> str:
        return (*INPUTS, OUTPUT)[index]

    def get_tensor_mode(self, name: str) -> Any:
        io = self.module.TensorIOMode
        return io.INPUT if name in INPUTS else io.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return self.module.DataType.INT64 if name in INPUTS else self.module.DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, -1) if name in INPUTS else (-1, self.hidden)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, int], ...]:
        return ((1, 1), (1, 1), (self.max_batch, self.max_length))

    def create_execution_context(self, strategy: Any = None) -> StandInContext:
        return StandInContext(self)


class StandInContext:
    def __init__(self, engine: StandInEngine) -> None:
        self.engine = engine
        self.shape: tuple[int, int] | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        b, n = int(shape[0]), int(shape[1])
        if b > self.engine.max_batch or n > self.engine.max_length:
            return False
        self.shape = (b, n)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.shape is None:
            return self.engine.get_tensor_shape(name)
        return self.shape if name in INPUTS else (self.shape[0], self.engine.hidden)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if int(ptr) % 256:
            return False
        self.addresses[name] = int(ptr)
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        return 256

    def set_device_memory(self, memory: int, size: int) -> None:
        pass

    def execute_async_v3(self, stream_handle: int) -> bool:
        if self.shape is None or set(self.addresses) != {*INPUTS, OUTPUT}:
            return False
        return self.engine.module.launch(stream_handle, dict(self.addresses), *self.shape)


class StandInTensorRT:
    """The part of the ``tensorrt`` module the backend's runtime path touches."""

    __version__ = "stand-in (PyTorch)"
    TensorIOMode = _Namespace("NONE", "INPUT", "OUTPUT")
    DataType = _Namespace("FLOAT", "HALF", "INT32", "INT64", "BF16")
    ExecutionContextAllocationStrategy = _Namespace("STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED")

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            pass

    def __init__(self, compute: TorchCompute, fake_runtime: Any | None) -> None:
        self.compute = compute
        self.fake = fake_runtime
        self.launches = 0

    def Runtime(self, logger: Any) -> Any:
        module = self

        class _Runtime:
            def deserialize_cuda_engine(self, plan: bytes) -> StandInEngine:
                return StandInEngine(module, json.loads(plan))

        return _Runtime()

    def launch(self, stream_handle: int, addresses: dict[str, int], b: int, n: int) -> bool:
        self.launches += 1
        if self.fake is not None:
            # The fake CUDA runtime runs queued work when the stream is waited on (and
            # records it while capturing), as kernels on a real stream would run.
            def kernel() -> None:
                self.compute(addresses, b, n)

            return bool(int(self.fake.submit(stream_handle, kernel)) == 0)
        torch = self.compute.torch
        with torch.cuda.stream(torch.cuda.ExternalStream(int(stream_handle))):
            self.compute(addresses, b, n)
        return True


def write_plan(model_dir: Path, hf_dir: Path, grid: Any) -> Path:
    """The stand-in's "plan": the profile and the hidden size, as JSON."""
    hidden = json.loads((hf_dir / "config.json").read_text())["hidden_size"]
    plan = model_dir / "standin.plan"
    plan.write_text(
        json.dumps({"profile_max": [grid.max_batch, grid.max_length], "hidden": hidden})
    )
    return plan


def fake_runtime(fake: str) -> Any:
    """A CUDA runtime stand-in from its ``module:name`` (a class or factory called bare)."""
    return pkgutil.resolve_name(fake)()


def make_backend(
    model_dir: Path, hf_dir: Path, grid: Any, fake: str | None, cuda_runtime: Any | None = None
) -> Any:
    """A :class:`TensorRTBackend` over the stand-in engine for the exported folder, on the
    CUDA runtime stand-in that ``fake`` names (see :func:`fake_runtime`) if given."""
    from trt_async.backends.base import BackendOptions
    from trt_async.backends.modelfiles import MANIFEST_NAME, ModelFiles, read_manifest
    from trt_async.backends.tensorrt import TensorRTBackend

    manifest = read_manifest(model_dir / MANIFEST_NAME)
    plan = write_plan(model_dir, hf_dir, grid)
    if cuda_runtime is None and fake:
        cuda_runtime = fake_runtime(fake)
    compute = TorchCompute(hf_dir, manifest.pooling or "mean", "cpu" if fake else "cuda")
    trt = StandInTensorRT(compute, cuda_runtime if fake else None)
    files = ModelFiles.resolve(plan)
    return TensorRTBackend(files, BackendOptions(), trt_module=trt, cuda_runtime=cuda_runtime)


# -- the server ----------------------------------------------------------------------------


def create_server_app() -> Any:
    """Granian's factory: the app, with the TensorRT backend replaced by the stand-in."""
    from trt_async import backends
    from trt_async.app import create_app
    from trt_async.core.config import Config, ModelConfig

    s = json.loads(os.environ[_ENV])
    model_dir, hf_dir = Path(s["model_dir"]), Path(s["hf_dir"])
    grid = dict(batch_sizes=s["batch_sizes"], lengths=s["lengths"],
                max_batch_tokens=s["max_batch_tokens"], max_length=max(s["lengths"]))  # fmt: skip
    if s["backend"] == "standin":
        from trt_async.backends.shapes import BucketGrid

        bucket_grid = BucketGrid(s["batch_sizes"], s["lengths"], s["max_batch_tokens"])

        def factory(files: Any, options: Any) -> Any:
            return make_backend(model_dir, hf_dir, bucket_grid, s["fake"])

        backends.replace_backend("tensorrt", factory)
        path = str(write_plan(model_dir, hf_dir, bucket_grid))
        model = ModelConfig(model_path=path, backend="tensorrt", precision="fp32", **grid)
    else:
        model = ModelConfig(model_path=str(model_dir), backend="onnxruntime", **grid)
    config = Config(embedding_models={MODEL: model})
    return create_app(config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """This script's ``serve`` in a child process on a free loopback port."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.port = _free_port()
        env = {**os.environ, _ENV: json.dumps(settings)}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"server exited {self.proc.returncode}: {err[-2000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def embeddings(url: str, texts: list[str]) -> np.ndarray:
    import httpx

    r = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=120)
    r.raise_for_status()
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


async def _closed_loop(url: str, clients: int, texts: list[str], seconds: float) -> float:
    """items/s with ``clients`` each sending one text per request, back to back."""
    import httpx

    done = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal done
            k = i
            while time.perf_counter() < stop:
                text = texts[k % len(texts)]
                r = await client.post("/v1/embeddings", json={"model": MODEL, "input": text})
                r.raise_for_status()
                done += 1
                k += clients

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(clients)))
        return done / (time.perf_counter() - started)


def serve(port: int) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces

    server: Any = Granian(
        "perf.gpu_model:create_server_app", factory=True, address="127.0.0.1", port=port,
        interface=Interfaces.ASGI, workers=1, http=HTTPModes.http1,
    )  # fmt: skip
    server.serve()
    return 0


# -- the checks ----------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, out: Any) -> None:
        self.args = args
        self.out = out
        self.report: dict[str, Any] = {"fake": bool(args.fake), "checks": {}}
        self.failed: list[str] = []

    def check(self, name: str, fn: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
            traceback.print_exc(file=self.out)
        if not ok:
            self.failed.append(name)
        self.report["checks"][name] = {
            "ok": ok,
            "detail": detail,
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.out.write(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}\n")
        self.out.flush()
        return ok


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _texts(n: int) -> list[str]:
    from trt_async.bench.corpus import corpus_dir

    lines = [x for x in (corpus_dir() / "en.txt").read_text(encoding="utf-8").splitlines() if x]
    return [lines[i % len(lines)] for i in range(n)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command")
    s = sub.add_parser("serve", help="(internal) the server process")
    s.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--fake",
        metavar="MODULE:NAME",
        help="CPU run on the CUDA runtime stand-in NAME() makes "
        "(the tests': tests.fake_trt:FakeCudaRuntime)",
    )
    p.add_argument("--tiny", action="store_true", help="hidden 32, 2 layers (CI)")
    p.add_argument("--hf-dir", type=Path, help="a real Hugging Face folder instead")
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--lengths", default="16,32,64,128,256")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--seconds", type=float, default=10.0, help="per load level")
    p.add_argument("--clients", default="1,64")
    p.add_argument("--no-server", action="store_true")
    p.add_argument(
        "--all",
        action="store_true",
        help="first gpu_smoke.py, then gpu_check.py --random-model where TensorRT is "
        "installed, then this script: the whole GPU check in one command",
    )
    p.add_argument("-o", "--out", type=Path)
    return p.parse_args(argv)


def _unavailable(fake: bool) -> str | None:
    for module in ("torch", "transformers", "onnxruntime", "onnx"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed"
    if fake:
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device for PyTorch"
    from trt_async.backends.tensorrt.cuda import Cuda, CudaError

    try:
        Cuda().device_count()
    except (ImportError, CudaError) as exc:
        return f"cuda-python: {exc}"
    return None


def main(argv: list[str] | None = None, out: Any = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        return serve(args.port)
    out = out if out is not None else sys.stdout
    why = _unavailable(bool(args.fake))
    if why is not None:
        out.write(f"gpu_model: {why}\n")
        return 2
    status = _others(args, out) if args.all else 0
    with tempfile.TemporaryDirectory() as tmp:
        return max(status, _run(args, Path(tmp), out))


def _others(args: argparse.Namespace, out: Any) -> int:
    """gpu_smoke.py, and gpu_check.py where TensorRT is installed; 1 if either failed."""
    import importlib.util

    from perf import gpu_check, gpu_smoke

    runtime = fake_runtime(args.fake) if args.fake else None
    out.write("== gpu_smoke.py\n")
    failed = gpu_smoke.main([], runtime=runtime, out=out) != 0
    if importlib.util.find_spec("tensorrt") is None:
        out.write("== gpu_check.py: skipped, TensorRT is not installed here\n")
    else:
        out.write("== gpu_check.py --random-model\n")
        report = args.out.with_name("gpu_check.json") if args.out else None
        failed |= gpu_check.main(["--random-model", *(["-o", str(report)] if report else [])]) != 0
    out.write("== gpu_model.py\n")
    return 1 if failed else 0


def _run(args: argparse.Namespace, tmp: Path, out: Any) -> int:
    import onnxruntime as ort

    from trt_async.backends.shapes import BucketGrid

    ints = [int(v) for v in args.batch_sizes.split(",")]
    lengths = [int(v) for v in args.lengths.split(",")]
    grid = BucketGrid(ints, lengths, args.max_batch_tokens)
    run = Run(args, out)
    state: dict[str, Any] = {}

    def build() -> str:
        hf = args.hf_dir or write_hf_folder(tmp / "hf", TINY if args.tiny else MINILM)
        model = export(hf, tmp / "model")
        state.update(hf=hf, model=model)
        if not args.fake:
            import torch

            run.report["device"] = torch.cuda.get_device_name(0)
        return f"exported {hf} to {model} (the export checks the graph against torch)"

    if not run.check("model: random all-MiniLM-L6-v2 architecture, exported", build):
        return _finish(run, args)
    hf, model = state["hf"], state["model"]
    backend = make_backend(model, hf, grid, args.fake)
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    vocab = json.loads((hf / "config.json").read_text())["vocab_size"]
    buckets = list(grid.buckets())
    inputs: dict[Any, dict[str, np.ndarray]] = {}

    def prepare() -> str:
        backend.prepare(grid)
        info = backend.info()
        fallbacks = info.details["graph_fallbacks"]
        run.report["graph_fallbacks"] = fallbacks
        where = "the fake CUDA runtime (CPU)" if args.fake else info.device
        return (f"{len(buckets)} buckets on {where}: {info.details['graphs']} graphs, "
                f"{len(fallbacks)} plain (capture failed)")  # fmt: skip

    if not run.check("prepare: one context per bucket, capture around PyTorch", prepare):
        backend.close()
        return _finish(run, args)

    def parity() -> str:
        rows = []
        for b in buckets:
            bufs = backend.inputs(b)
            lens = rng.integers(1, b.length + 1, b.batch)
            lens[0] = b.length
            mask = (np.arange(b.length)[None, :] < lens[:, None]).astype(np.int64)
            feed = {"input_ids": rng.integers(5, vocab, (b.batch, b.length)) * mask,
                    "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}  # fmt: skip
            for name, value in feed.items():
                bufs[name][...] = value
            inputs[b] = feed
            got = backend.execute(b)[backend.io.output].copy()
            (ref,) = session.run([backend.io.output], feed)
            cos = float(np.min(_cosines(got, ref))) if np.isfinite(got).all() else float("nan")
            rows.append({"bucket": f"{b.batch}x{b.length}", "min_cosine": cos,
                         "finite": bool(np.isfinite(got).all())})  # fmt: skip
        run.report["parity"] = rows
        bad = [r["bucket"] for r in rows if not r["min_cosine"] >= MIN_COSINE]
        assert not bad, f"under cosine {MIN_COSINE} or not finite: {bad}"
        worst = min(r["min_cosine"] for r in rows)
        return f"{len(rows)} buckets against ONNX Runtime (CPU): lowest cosine {worst:.6f}"

    run.check("vectors per bucket against ONNX Runtime", parity)

    def replay() -> str:
        fallbacks = backend.info().details["graph_fallbacks"]
        worst = 1.0
        for b in buckets:
            bufs = backend.inputs(b)
            for name, value in inputs[b].items():
                bufs[name][...] = value
            graph = backend.execute(b)[backend.io.output].copy()
            plain = backend.execute_plain(b).copy()
            worst = min(worst, float(np.min(_cosines(graph, plain))))
        assert worst >= 0.99999, f"replay and plain differ: cosine {worst}"
        first = next(iter(fallbacks.items()), None)
        how = (
            f"capture failed in {len(fallbacks)} buckets, e.g. {first}"
            if first
            else ("every bucket captured")
        )
        return f"{how}; replay (or fallback) vs plain enqueue: lowest cosine {worst:.7f}"

    run.check("graph replay or per-bucket fallback gives the same vectors", replay)

    texts = _texts(64)

    def bare() -> str:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
        tokenizer.enable_truncation(grid.max_length)
        result = {}
        for batch in (1, 64):
            if batch not in grid.batch_sizes:
                continue
            stop, items = time.perf_counter() + args.seconds, 0
            started = time.perf_counter()
            while time.perf_counter() < stop:
                chunk = [texts[(items + i) % len(texts)] for i in range(batch)]
                enc = tokenizer.encode_batch(chunk)
                n = grid.length_for(max(len(e.ids) for e in enc))
                bucket = next(b for b in buckets if b.batch == batch and b.length == n)
                bufs = backend.inputs(bucket)
                bufs["input_ids"][...] = 0
                bufs["attention_mask"][...] = 0
                for row, e in enumerate(enc):
                    bufs["input_ids"][row, : len(e.ids)] = e.ids
                    bufs["attention_mask"][row, : len(e.ids)] = 1
                backend.execute(bucket)
                items += batch
            result[batch] = items / (time.perf_counter() - started)
        run.report["bare_items_per_s"] = result
        return ", ".join(f"batch {b}: {v:.1f} items/s" for b, v in result.items())

    run.check("bare stand-in engine: items/s at batch 1 and 64", bare)
    backend.close()

    if not args.no_server:
        settings = {"model_dir": str(model), "hf_dir": str(hf), "fake": args.fake,
                    "batch_sizes": ints, "lengths": lengths,
                    "max_batch_tokens": args.max_batch_tokens}  # fmt: skip

        def servers() -> str:
            gpu = Server({**settings, "backend": "standin"})
            cpu = Server({**settings, "backend": "onnxruntime"})
            try:
                gpu.wait_ready()
                cpu.wait_ready()
                a, b = embeddings(gpu.url, texts[:16]), embeddings(cpu.url, texts[:16])
                worst = float(np.min(_cosines(a, b)))
                assert np.isfinite(a).all() and worst >= MIN_COSINE, worst
                cpu.stop()
                rates = {}
                for clients in (int(c) for c in args.clients.split(",")):
                    rates[clients] = asyncio.run(
                        _closed_loop(gpu.url, clients, texts, args.seconds)
                    )
                run.report["server_items_per_s"] = rates
                run.report["server_vs_cpu_min_cosine"] = worst
                load = ", ".join(f"{c} clients: {r:.1f} items/s" for c, r in rates.items())
                return f"/v1/embeddings equal to the CPU server's (cosine >= {worst:.6f}); {load}"
            finally:
                gpu.stop()
                cpu.stop()

        run.check("server on the stand-in backend vs the CPU server; items/s", servers)
    return _finish(run, args)


def _finish(run: Run, args: argparse.Namespace) -> int:
    run.report["failed"] = run.failed
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(run.report, indent=2, default=str) + "\n")
    n = len(run.report["checks"])
    run.out.write(f"\nsummary: {n - len(run.failed)} of {n} checks passed"
                  + (f"; FAILED: {', '.join(run.failed)}\n" if run.failed else "\n"))  # fmt: skip
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
