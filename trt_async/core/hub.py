"""Models from the Hugging Face hub: ``hf://ORG/NAME[@REVISION][/FILE.onnx]``.

A repository is resolved with ``huggingface_hub`` (the ``hub`` extra, imported only here and
only when a hub model is asked for), which owns the download cache and honours
``HF_HOME``, ``HF_HUB_CACHE``, ``HF_TOKEN``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``. Only what
serving needs is downloaded: the ONNX graph (``onnx/model.onnx``, else ``model.onnx``, or the
file the reference names) with its external weights, the tokenizer and config files and
sentence-transformers' pooling and prompt files. A repository without a graph is exported
by the :class:`Exporter` the caller passes (the command line passes torch's; a serving
process passes none and only finds earlier exports).

What the server reads is a folder of its own per commit, in its cache
(``$TRT_ASYNC_CACHE/hub/ORG--NAME/NAME-COMMIT-...``): links into the hub cache for a
repository's graph, or the export of its weights. A new commit gets a new folder (and, on a
GPU, a new plan, which is built per folder name), so a new revision is noticed; an earlier
commit's folder serves offline.

Every error is one :class:`HubError` line that says what to do.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, get_args

import msgspec

from trt_async.backends.modelfiles import (
    EXPORT_REVISION,
    MANIFEST_NAME,
    ONNX_NAME,
    ModelDirError,
    Pooling,
    Task,
    sentence_transformers_pooling_modes,
    sha256_file,
)
from trt_async.core.cachedir import cache_root, locked
from trt_async.core.config import HUB_SCHEME, ModelConfig, ModelKind, is_hub_ref
from trt_async.core.errors import Forbidden, InvalidInput

log = logging.getLogger(__name__)

HUB_INSTALL = "pip install 'trt-async[hub]'"
#: The graph served when the reference names none: the plain (fp32) export, where optimum
#: and sentence-transformers put it, else at the top of the repository.
DEFAULT_GRAPHS = ("onnx/model.onnx", "model.onnx")
#: Small files read when serving: the tokenizer, the model's config, sentence-transformers'
#: modules, truncation length and prompts.
SIDE_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
#: sentence-transformers' pooling config (``1_Pooling/config.json``; modules.json names it).
POOLING_PATTERN = "[0-9]*_Pooling/config.json"
#: Where a serving folder holds the pooling config (where :class:`ModelFiles` reads it).
_ST_POOLING = "1_Pooling/config.json"
#: The file of a serving folder that records what it holds; written last.
RECORD_NAME = "trt_async_hub.json"
#: Weights an export reads, by preference: one safetensors file, sharded safetensors, the
#: pickled formats. bge-m3's sparse and ColBERT heads go with them when present.
_WEIGHTS = (
    ("model.safetensors",),
    ("model.safetensors.index.json", "model-*.safetensors"),
    ("pytorch_model.bin",),
    ("pytorch_model.bin.index.json", "pytorch_model-*.bin"),
)
_M3_HEADS = ("colbert_linear.pt", "sparse_linear.pt")
#: sentence-transformers modules whose work the server does itself after the graph.
_SERVED_MODULES = ("Transformer", "Pooling", "Normalize")
#: ``ORG/NAME`` as the hub allows them (letters, digits, ``-``, ``_``, ``.``; at most 96).
_REF = re.compile(
    r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})"
    r"(?:@(?P<revision>[^/\s]+))?(?:/(?P<graph>\S+))?"
)

#: Told each step worth a line (what is downloaded, from where, into where).
Say = Callable[[str], None]


class HubError(ModelDirError):
    """A hub model that cannot be fetched or served; one line saying what to do."""


class HubUnreachable(HubError):
    """The hub cannot be reached (or ``HF_HUB_OFFLINE`` is set) and the cache cannot serve."""


class Exporter(Protocol):
    """Exports a Hugging Face folder to a model folder (``trt-async export``)."""

    def missing(self) -> str | None:
        """Why exports cannot run here, with the install command; None when they can."""

    def __call__(self, src: Path, task: Task, out_dir: Path) -> None:
        """Export ``src`` for ``task`` into the empty folder ``out_dir``; HubError if it fails."""


class HubRef(msgspec.Struct, frozen=True):
    """A repository, a revision (branch, tag or commit; None: the default branch) and the
    ONNX file to serve (None: :data:`DEFAULT_GRAPHS`)."""

    repo_id: str
    revision: str | None = None
    graph: str | None = None

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[1]

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}{revision}" + (f"/{self.graph}" if self.graph else "")


class HubModel(msgspec.Struct, frozen=True):
    """A resolved hub model: the commit served and the folder the server reads."""

    ref: HubRef
    commit: str
    task: Task
    folder: Path
    #: True when the folder holds an export of the repository's weights.
    exported: bool


class HubRecord(msgspec.Struct, kw_only=True):
    """What a serving folder holds (:data:`RECORD_NAME`)."""

    repo_id: str
    commit: str
    #: The repository's graph this folder links to; None for an export.
    graph: str | None = None
    #: The export's task; None for a repository's own graph.
    task: Task | None = None
    #: The folder's files, relative to it, each of which must exist.
    files: list[str]


def parse_ref(text: str) -> HubRef:
    """``[hf://]ORG/NAME[@REVISION][/FILE.onnx]``; a revision with ``/`` is written with
    ``%2F`` (``refs%2Fpr%2F1``), as in huggingface_hub's ``hf://`` paths."""
    body = text.removeprefix(HUB_SCHEME)
    match = _REF.fullmatch(body)
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        raise HubError(
            f"{text!r} is not a hub model: write ORG/NAME, ORG/NAME@REVISION or "
            "ORG/NAME@REVISION/onnx/FILE.onnx"
        )
    graph = match["graph"]
    if graph is not None and (not graph.endswith(".onnx") or ".." in graph.split("/")):
        raise HubError(
            f"{text!r}: a hub model may name one ONNX file of the repository "
            f"(ORG/NAME@REVISION/onnx/model_O4.onnx), not {graph!r}"
        )
    revision = urllib.parse.unquote(match["revision"]) if match["revision"] else None
    return HubRef(match["repo"], revision, graph)


def infer_task(hf_config: Mapping[str, Any]) -> Task:
    """What a repository serves as by its ``config.json``: a sequence classifier with one
    label reranks, one with more labels is an NLI classifier, anything else embeds."""
    archs = hf_config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        return "embed"
    labels = hf_config.get("id2label")
    count = len(labels) if isinstance(labels, dict) and labels else hf_config.get("num_labels")
    return "rerank" if count == 1 else "nli"


# -- resolution -------------------------------------------------------------------------------


def fetch(
    ref: HubRef,
    task: Task | None = None,
    *,
    pooling: str | None = None,
    exporter: Exporter | None = None,
    say: Say | None = None,
) -> HubModel:
    """The folder serving ``ref``, downloading (and exporting) what is missing.

    ``task`` None reads it from the repository's config (:func:`infer_task`); ``pooling``
    is the configured one (an embedder with none needs sentence-transformers' pooling
    config). Blocking: call it off the event loop.
    """
    if task is not None and task not in get_args(Task):
        raise HubError(f"unknown task {task!r}; use one of {', '.join(get_args(Task))}")
    hub = _import_hub()
    tell = say or log.info
    try:
        info = hub.HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    except Exception as exc:
        _raise_unless_unreachable(hub, exc, ref)
        model = _from_cache(hub, ref, task, exc, tell)
    else:
        model = _Fetch(hub, ref, info, task, exporter, tell).run()
    if model.task == "embed" and pooling is None and not (model.folder / _ST_POOLING).is_file():
        # The server would pool by the CLS token, which is wrong for a mean-pooled model.
        raise HubError(
            f"{ref.repo_id} at commit {model.commit[:12]}: an embedding model without "
            f"sentence-transformers' pooling config ({_ST_POOLING}), so the server cannot tell "
            f"how to pool it; serve it from a config (model_path: hf://{ref}) with pooling: "
            "cls, mean or last"
        )
    return model


def local_config(config: ModelConfig, kind: ModelKind) -> ModelConfig:
    """``config`` with an ``hf://`` model_path replaced by the folder serving it, fetched
    with no exporter (a serving process runs no torch); other configs as they are."""
    if not is_hub_ref(config.model_path):
        return config
    model = fetch(parse_ref(config.model_path), kind.task, pooling=config.pooling)
    return msgspec.structs.replace(config, model_path=str(model.folder))


def check_hub_load(model_path: str, organisations: Sequence[str], field: str) -> HubRef:
    """The reference of a run-time load, if ``server.hub_organisations`` allows its
    organisation (off when empty: the server would download on a client's word).
    ``field`` is the HTTP layer's name for the value, for its error body."""
    try:
        ref = parse_ref(model_path)
    except HubError as exc:
        raise InvalidInput(str(exc), field=field) from None
    if not organisations:
        raise Forbidden(
            "loading hub models at run time is disabled; list the organisations allowed in "
            "server.hub_organisations",
            field=field,
        )
    if ref.org.casefold() not in {org.casefold() for org in organisations}:
        raise Forbidden(
            f"{model_path!r}: organisation {ref.org!r} is not in server.hub_organisations",
            field=field,
        )
    return ref


class _Fetch:
    """One resolution with the hub's answer about the revision in hand."""

    def __init__(
        self,
        hub: ModuleType,
        ref: HubRef,
        info: Any,
        task: Task | None,
        exporter: Exporter | None,
        say: Say,
    ) -> None:
        self.hub = hub
        self.ref = ref
        self.commit: str = str(info.sha)
        self.gated = bool(getattr(info, "gated", False))
        self.files: dict[str, Any] = {s.rfilename: s for s in info.siblings or ()}
        self.task = task
        self.exporter = exporter
        self.say = say

    @property
    def at(self) -> str:
        return f"{self.ref.repo_id} at commit {self.commit[:12]}"

    def run(self) -> HubModel:
        graph = self.ref.graph or next((g for g in DEFAULT_GRAPHS if g in self.files), None)
        if self.ref.graph is not None and self.ref.graph not in self.files:
            graphs = sorted(f for f in self.files if f.endswith(".onnx"))
            raise HubError(
                f"{self.at}: no file {self.ref.graph}; its ONNX graphs: "
                + (", ".join(graphs) if graphs else "none")
            )
        if graph is not None:
            return self._graph(graph)
        return self._export()

    def _graph(self, graph: str) -> HubModel:
        folder = _graph_folder(self.ref, self.commit, graph)
        record = _complete(folder)
        if record is not None:
            self.say(f"{self.ref}: commit {self.commit[:12]}, cached in {folder}")
            return _model(self.ref, record, folder, self.task)
        side = self._side_files()
        self._require(side)
        data = [f for f in self.files if f.startswith((f"{graph}_data", f"{graph}.data"))]
        wanted = [*side, graph, *data]
        self._check_access()
        self.say(
            f"fetching {self.ref} (commit {self.commit[:12]}): {len(wanted)} files, "
            f"{self._megabytes(wanted)} into {self.hub.constants.HF_HUB_CACHE}"
        )
        snapshot = self._download(wanted)
        self._verify(snapshot, [graph, *data])
        _check_servable(snapshot, self.at)
        links = _side_links(snapshot, side)
        links[ONNX_NAME] = snapshot / graph
        links.update({Path(d).name: snapshot / d for d in data})
        record = HubRecord(repo_id=self.ref.repo_id, commit=self.commit, graph=graph, files=[])
        _publish_links(folder, links, record)
        return _model(self.ref, record, folder, self.task)

    def _export(self) -> HubModel:
        found = _find_export(self.ref, self.commit, self.task)
        if found is not None:
            folder, record = found
            self.say(f"{self.ref}: commit {self.commit[:12]}, exported in {folder}")
            return _model(self.ref, record, folder, self.task)
        if self.exporter is None:
            raise HubError(
                f"{self.at} has no ONNX graph ({DEFAULT_GRAPHS[0]}) and no export in the cache; "
                f"export it once on this machine with `trt-async pull {self.ref.repo_id}"
                f"@{self.commit}`"
            )
        missing = self.exporter.missing()
        if missing is not None:
            raise HubError(f"{self.at} has no ONNX graph ({DEFAULT_GRAPHS[0]}); {missing}")
        weights = self._weights()
        side = self._side_files()
        self._require(side)
        self._check_access()
        wanted = [*side, *weights]
        self.say(
            f"{self.at} has no ONNX graph ({DEFAULT_GRAPHS[0]}): downloading its weights "
            f"({self._megabytes(wanted)}) and exporting them with torch, once (a minute or more)"
        )
        snapshot = self._download(wanted)
        self._verify(snapshot, weights)
        task = self.task or _task_of(snapshot, self.at)
        folder = _export_folder(self.ref, self.commit, task)
        record = HubRecord(repo_id=self.ref.repo_id, commit=self.commit, task=task, files=[])
        _publish_export(folder, snapshot, task, self.exporter, record)
        return HubModel(self.ref, self.commit, task, folder, exported=True)

    def _side_files(self) -> list[str]:
        return [f for f in self.files if f in SIDE_FILES or fnmatch.fnmatchcase(f, POOLING_PATTERN)]

    def _require(self, side: list[str]) -> None:
        for name in ("tokenizer.json", "config.json"):
            if name not in side:
                what = (
                    "the fast tokenizer file the server tokenises with"
                    if name == "tokenizer.json"
                    else "the model's config"
                )
                raise HubError(
                    f"{self.at}: {name} missing ({what}); this repository does not make a "
                    "model this server can serve"
                )

    def _weights(self) -> list[str]:
        for names in _WEIGHTS:
            if names[0] in self.files:
                found = [f for f in self.files if any(fnmatch.fnmatchcase(f, n) for n in names)]
                return found + [h for h in _M3_HEADS if h in self.files]
        raise HubError(
            f"{self.at}: no ONNX graph ({DEFAULT_GRAPHS[0]}) and no weights to export "
            "(model.safetensors or pytorch_model.bin)"
        )

    def _check_access(self) -> None:
        if self.gated and not self.hub.get_token():
            raise HubError(_gated_message(self.hub, self.ref, with_token=False))

    def _megabytes(self, names: list[str]) -> str:
        total = sum(_size(self.files[n]) for n in names)
        return f"{total / 1e6:.1f} MB"

    def _download(self, names: list[str]) -> Path:
        try:
            path = self.hub.snapshot_download(
                self.ref.repo_id, revision=self.ref.revision, allow_patterns=names
            )
        except Exception as exc:
            _raise_unless_unreachable(self.hub, exc, self.ref)
            raise HubUnreachable(
                f"{self.ref}: the download stopped: {_first_line(exc)}; start again to resume it"
            ) from None
        snapshot = Path(path)
        if snapshot.name != self.commit:  # the branch moved between the two requests
            raise HubError(
                f"{self.ref}: the revision moved from commit {self.commit[:12]} to "
                f"{snapshot.name[:12]} during the download; start again"
            )
        return snapshot

    def _verify(self, snapshot: Path, names: list[str]) -> None:
        """Hash each large (LFS) file once, when its folder is built, against the hub's
        sha256: huggingface_hub checks sizes, not contents."""
        for name in names:
            lfs = getattr(self.files.get(name), "lfs", None)
            expected = getattr(lfs, "sha256", None)
            if expected is None:
                continue
            actual = sha256_file(snapshot / name)
            if actual != expected:
                raise HubError(
                    f"{self.at}: {name} does not match the hub's sha256 ({actual[:12]} instead "
                    f"of {expected[:12]}); delete {(snapshot / name).resolve()} and start again"
                )


def _from_cache(
    hub: ModuleType, ref: HubRef, task: Task | None, reason: BaseException, say: Say
) -> HubModel:
    """The hub is out of reach: serve the revision's folder from the caches, if there is one."""
    patterns = [*SIDE_FILES, POOLING_PATTERN]
    try:
        path = hub.snapshot_download(
            ref.repo_id, revision=ref.revision, allow_patterns=patterns, local_files_only=True
        )
    except Exception:
        raise HubUnreachable(
            f"{ref}: the hub ({hub.constants.ENDPOINT}) cannot be reached "
            f"({_first_line(reason)}) and this revision is not in the cache "
            f"({hub.constants.HF_HUB_CACHE}); start once with network access"
        ) from None
    commit = Path(path).name
    graphs = [ref.graph] if ref.graph else list(DEFAULT_GRAPHS)
    for graph in graphs:
        folder = _graph_folder(ref, commit, graph)
        record = _complete(folder)
        if record is not None:
            say(f"{ref}: commit {commit[:12]} from the cache (the hub is not reachable)")
            return _model(ref, record, folder, task)
    found = None if ref.graph else _find_export(ref, commit, task)
    if found is not None:
        folder, record = found
        say(f"{ref}: commit {commit[:12]} exported in the cache (the hub is not reachable)")
        return _model(ref, record, folder, task)
    raise HubUnreachable(
        f"{ref}: the hub ({hub.constants.ENDPOINT}) cannot be reached ({_first_line(reason)}) "
        f"and commit {commit[:12]} is only partly cached; start once with network access"
    )


def _model(ref: HubRef, record: HubRecord, folder: Path, task: Task | None) -> HubModel:
    chosen = task or record.task or _task_of(folder, f"{ref.repo_id} at {record.commit[:12]}")
    return HubModel(ref, record.commit, chosen, folder, exported=record.graph is None)


def _task_of(folder: Path, at: str) -> Task:
    path = folder / "config.json"
    try:
        return infer_task(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, AttributeError) as exc:
        raise HubError(f"{at}: config.json cannot be read ({exc}); pass --task") from None


def _check_servable(snapshot: Path, at: str) -> None:
    """sentence-transformers modules the server does not run, or a pooling it does not do,
    would serve other vectors than the model's: refuse them."""
    modules_path = snapshot / "modules.json"
    if modules_path.is_file():
        try:
            modules = json.loads(modules_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise HubError(f"{at}: modules.json is not valid JSON ({exc})") from None
        for module in modules if isinstance(modules, list) else []:
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _SERVED_MODULES:
                raise HubError(
                    f"{at}: modules.json has a {kind} module after the transformer, which the "
                    "ONNX graph does not hold; the server applies only pooling and normalisation"
                )
    st_config = snapshot / "config_sentence_transformers.json"
    if st_config.is_file():
        try:
            default = json.loads(st_config.read_text(encoding="utf-8")).get("default_prompt_name")
        except (ValueError, AttributeError) as exc:
            raise HubError(f"{at}: {st_config.name} is not a JSON object ({exc})") from None
        if default:
            # As the registry refuses an export with one: vectors without it look right.
            raise HubError(
                f"{at}: its default prompt ({default!r}) goes before every input, which this "
                "server's embedding routes do not do yet"
            )
    for pooling in sorted(snapshot.glob("[0-9]*_Pooling/config.json")):
        try:
            config = json.loads(pooling.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise HubError(f"{at}: {pooling.parent.name}/config.json: not JSON ({exc})") from None
        modes = sentence_transformers_pooling_modes(config if isinstance(config, dict) else {})
        if len(modes) == 1 and modes[0] in get_args(Pooling):
            continue
        raise HubError(
            f"{at}: {pooling.parent.name}/config.json pools by "
            f"{' + '.join(map(str, modes)) or 'no mode it names'}; the server pools by one of "
            f"{', '.join(get_args(Pooling))}"
        )


# -- the server's folders ---------------------------------------------------------------------


def _repo_dir(ref: HubRef) -> Path:
    return cache_root() / "hub" / f"{ref.org}--{ref.name}"


def _graph_folder(ref: HubRef, commit: str, graph: str) -> Path:
    slug = graph.removesuffix(".onnx").replace("/", "-")
    return _repo_dir(ref) / f"{ref.name}-{commit[:12]}-{slug}"


def _export_folder(ref: HubRef, commit: str, task: Task) -> Path:
    return _repo_dir(ref) / f"{ref.name}-{commit[:12]}-export-{task}-{EXPORT_REVISION}"


def _find_export(ref: HubRef, commit: str, task: Task | None) -> tuple[Path, HubRecord] | None:
    tasks: Sequence[Task] = [task] if task is not None else get_args(Task)
    for candidate in tasks:
        folder = _export_folder(ref, commit, candidate)
        record = _complete(folder)
        if record is not None:
            return folder, record
    return None


def _complete(folder: Path) -> HubRecord | None:
    """The folder's record if it is whole: written last, and every file it lists exists
    (links into the hub cache break when that cache is cleared)."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = msgspec.json.decode(path.read_bytes(), type=HubRecord)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not all((folder / name).exists() for name in record.files):
        return None
    return record


def _side_links(snapshot: Path, side: list[str]) -> dict[str, Path]:
    """Folder-relative names for the side files; the pooling config goes where
    :class:`ModelFiles` reads it."""
    links: dict[str, Path] = {}
    for name in side:
        target = _ST_POOLING if fnmatch.fnmatchcase(name, POOLING_PATTERN) else name
        links[target] = snapshot / name
    return links


def _publish_links(folder: Path, links: Mapping[str, Path], record: HubRecord) -> None:
    """Build the folder of links beside its final name, then rename it into place."""

    def fill(tmp: Path) -> None:
        for name, target in links.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.symlink_to(target)
            except OSError:  # no symlinks here (Windows without the privilege)
                shutil.copyfile(target, path)
        record.files = sorted(links)

    _publish(folder, record, fill)


def _publish_export(
    folder: Path, snapshot: Path, task: Task, exporter: Exporter, record: HubRecord
) -> None:
    def fill(tmp: Path) -> None:
        exporter(snapshot, task, tmp)
        record.files = [ONNX_NAME, MANIFEST_NAME]

    _publish(folder, record, fill)


def _publish(folder: Path, record: HubRecord, fill: Callable[[Path], None]) -> None:
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HubError(
            f"{parent}: cannot create the model cache ({exc.strerror}); set TRT_ASYNC_CACHE "
            "to a writable folder"
        ) from None
    with locked(parent / f".{folder.name}.lock"):
        if _complete(folder) is not None:  # another process built it while this one waited
            return
        for stale in parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=parent))
        try:
            fill(tmp)
            (tmp / RECORD_NAME).write_bytes(msgspec.json.encode(record))
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
            if folder.exists():  # incomplete or broken: not ours to trust
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- huggingface_hub --------------------------------------------------------------------------


def _import_hub() -> ModuleType:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise HubError(f"serving hub models needs huggingface_hub: {HUB_INSTALL}") from None
    # Its HTTP client logs every request at INFO, the server's level; the download's own
    # progress bars say what is fetched.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return huggingface_hub


def _raise_unless_unreachable(hub: ModuleType, exc: Exception, ref: HubRef) -> None:
    """Return if ``exc`` says the hub could not answer (the cache may serve); raise a
    HubError for the answers that say what is wrong (no such repository, gated, no such
    revision), and anything else as it is."""
    errors = hub.errors
    endpoint = hub.constants.ENDPOINT
    if isinstance(exc, errors.GatedRepoError):
        raise HubError(_gated_message(hub, ref, with_token=bool(hub.get_token()))) from None
    if isinstance(exc, errors.RepositoryNotFoundError):
        raise HubError(
            f"{ref.repo_id}: no such model repository on {endpoint} (check the id; a private "
            "repository needs HF_TOKEN)"
        ) from None
    if isinstance(exc, errors.RevisionNotFoundError):
        raise HubError(
            f"{ref.repo_id}: no revision {ref.revision!r} (a branch, tag or commit of the "
            "repository)"
        ) from None
    if isinstance(exc, errors.HFValidationError):
        raise HubError(f"{ref.repo_id!r} is not a repository id: {_first_line(exc)}") from None
    if isinstance(exc, errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
        if status < 500 and status != 429:
            raise HubError(f"{ref}: the hub answered {_first_line(exc)}") from None
        return
    if isinstance(exc, errors.LocalEntryNotFoundError | ConnectionError | TimeoutError | OSError):
        return
    if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3"):
        return  # the HTTP client's own transport errors
    raise exc


def _gated_message(hub: ModuleType, ref: HubRef, *, with_token: bool) -> str:
    page = f"{hub.constants.ENDPOINT}/{ref.repo_id}"
    if with_token:
        return (
            f"{ref.repo_id} is gated and the token in use has no access to it: request "
            f"access at {page}, or set HF_TOKEN to a token that has it"
        )
    return (
        f"{ref.repo_id} is gated: accept its conditions at {page}, then set HF_TOKEN (or run "
        "`hf auth login`)"
    )


def _first_line(exc: BaseException) -> str:
    if type(exc).__name__ == "OfflineModeIsEnabled":
        return "HF_HUB_OFFLINE is set"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def _size(sibling: Any) -> int:
    lfs = getattr(sibling, "lfs", None)
    size = getattr(lfs, "size", None) or getattr(sibling, "size", None)
    return int(size or 0)
