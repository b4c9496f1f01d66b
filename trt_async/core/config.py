"""Server and model configuration, decoded from YAML into msgspec Structs.

The seed server's file works unchanged: three sections (``embedding_models``,
``reranking_models``, ``nli_models``) map a name to ``model_name``, ``model_path`` and
``tokenizer_path``. Everything else is optional with defaults that suit the backend.
Unknown keys are errors, so a typo fails at start-up instead of being ignored.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import yaml
from msgspec import UNSET, UnsetType

from trt_async.backends import BackendName
from trt_async.backends.base import Precision as Precision  # the engine build tool reads it here
from trt_async.backends.modelfiles import Task

#: Environment variable naming the config file for ``granian --factory trt_async.app:create_app``.
CONFIG_ENV = "TRT_ASYNC_CONFIG"
#: The server's log level (``trt-async --log-level`` sets it for the worker; default INFO).
LOG_LEVEL_ENV = "TRT_ASYNC_LOG_LEVEL"

#: ``last``: each item's last real token (decoder embedders such as Qwen3-Embedding).
Pooling = Literal["cls", "mean", "last", "none"]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
_T = TypeVar("_T")
#: Most pixels (width x height) of one image by default: 8192 x 8192, 192 MiB as RGB; below
#: Pillow's own decompression-bomb warning (about 89 M pixels).
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26


class ModelKind(str, enum.Enum):
    """What a model is served as; the config section it sits in decides."""

    EMBEDDING = "embedding"
    RERANKER = "reranker"
    NLI = "nli"

    @property
    def section(self) -> str:
        return _SECTIONS[self]

    @property
    def task(self) -> Task:
        """The export task (``trt-async export --task``) of a model served as this kind."""
        return _TASKS[self]

    @classmethod
    def for_task(cls, task: Task) -> ModelKind:
        return next(kind for kind, t in _TASKS.items() if t == task)


_SECTIONS = {
    ModelKind.EMBEDDING: "embedding_models",
    ModelKind.RERANKER: "reranking_models",
    ModelKind.NLI: "nli_models",
}
_TASKS: dict[ModelKind, Task] = {
    ModelKind.EMBEDDING: "embed",
    ModelKind.RERANKER: "rerank",
    ModelKind.NLI: "nli",
}

#: ``model_path: hf://ORG/NAME[@REVISION][/FILE.onnx]`` names a Hugging Face hub repository
#: (the form of huggingface_hub's own file system), downloaded at start (``core.hub``).
HUB_SCHEME = "hf://"


def is_hub_ref(model_path: str) -> bool:
    return model_path.startswith(HUB_SCHEME)


class ConfigError(Exception):
    """A configuration problem, with the file and key path in the message."""


#: Served names appear in URL paths (``/infer/{model}``) and metric labels.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a served model, or None when it can."""
    if _MODEL_NAME.fullmatch(name):
        return None
    return (
        f"model name {name!r} is not allowed: use 1 to 128 letters, digits, '.', '_', '-' "
        "or ':', starting with a letter or digit (names appear in URL paths; write "
        "'org-model' for 'org/model')"
    )


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One served model. Only ``model_path`` is required."""

    #: A model folder, a .onnx file, a TensorRT plan, or ``hf://ORG/NAME[@REVISION]``.
    model_path: str
    #: The seed's display name; the section key is the name clients use.
    model_name: str | None = None
    #: Folder (or file) holding tokenizer.json; defaults to the model folder (a hub
    #: repository brings its own).
    tokenizer_path: str | None = None
    backend: BackendName = "auto"
    #: Longest input in tokens, special tokens included. Default: from config.json, capped at 512.
    max_length: Positive | None = None
    #: Bucket grid. Defaults come from the backend's spec (``BackendSpec``).
    batch_sizes: list[Positive] | None = None
    lengths: list[Positive] | None = None
    #: Most padded tokens (rows x length) in one batch. Default: the backend's (``BackendSpec``).
    max_batch_tokens: Positive | None = None
    #: Embedding pooling; default from the export manifest or sentence-transformers' config.
    pooling: Pooling | None = None
    normalize: bool = True
    #: Reranker score: sigmoid of the logit (Cohere/TEI convention) or the raw logit.
    score_activation: Literal["sigmoid", "none"] = "sigmoid"
    #: NLI label names by class index. Default: ``id2label`` from the model's config.json.
    labels: dict[int, str] | None = None
    #: Truncate over-long inputs unless a request says otherwise (TEI's ``auto_truncate``).
    truncate: bool = True
    #: Embedders: prompts by name, put before a request's texts when it names one
    #: (``prompt_name``). They join the model's own sentence-transformers prompts (from
    #: its export manifest), replacing those of the same name.
    prompts: dict[str, str] | None = None
    #: The prompt put before the texts of a request that names none. Default: the model's
    #: own (sentence-transformers' ``default_prompt_name``); ``null`` for none at all.
    default_prompt_name: str | UnsetType | None = UNSET
    #: LLM rerankers: the instruction pairs are read with when a request gives none
    #: (default: the template's own).
    instruction: str | None = None
    intra_op_threads: Positive | None = None
    #: ONNX Runtime: batches run side by side under load, each on its share of the
    #: threads (default: one per thread; 1 runs every batch on all threads).
    parallel_batches: Positive | None = None
    device: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: TensorRT: capture one CUDA graph per bucket (``false`` runs plain enqueues).
    graphs: bool = True
    precision: Precision = "fp16"
    #: TensorRT: rebuild a plan whose manifest does not match, or refuse to start.
    rebuild: Literal["auto", "never"] = "auto"
    gpu_memory_budget_gib: NonNegativeFloat | None = None
    #: Backpressure: beyond these a request is answered 429 at once.
    max_queue_items: Positive = 8192
    max_queue_tokens: Positive = 2_000_000
    #: Memory one request's token-level results may take (every token's vector, ColBERT
    #: vectors, sparse weights): checked after tokenising, before any batch runs.
    max_request_output_mib: Positive = 512
    #: A request waiting longer than this in the queue is answered 503.
    queue_timeout_s: NonNegativeFloat = 30.0
    #: Waiting this long doubles a queue's claim on the next batch, so none starves.
    max_queue_delay_ms: NonNegativeFloat = 50.0
    #: Fixed cost of one batch in token-equivalents, for choosing batches; default by
    #: backend (small on the CPU, where cost grows with tokens; large on the GPU).
    batch_overhead_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def runtime_key(self) -> bytes:
        """Equal for configs that can share one runtime (one backend, one queue): every
        option but those read per name (display name, normalisation, score activation,
        truncation default, output budget, prompts, instruction) is the same."""
        per_name_defaults = msgspec.structs.replace(
            self,
            model_name=None,
            normalize=True,
            score_activation="sigmoid",
            truncate=True,
            max_request_output_mib=512,
            prompts=None,
            default_prompt_name=UNSET,
            instruction=None,
        )
        return msgspec.json.encode(per_name_defaults)


class ImageUrlConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fetching images that requests name by http(s) URL (base64 and ``data:`` URIs are
    always accepted). Off by default; when on, only ``allow_hosts`` are fetched, and only
    from public addresses (checked after DNS and after each redirect)."""

    enabled: bool = False
    #: Host names fetched from: ``images.example.com``, ``*.example.com`` (its subdomains)
    #: or ``*`` (any host; the address checks still apply). Every redirect is checked too.
    allow_hosts: list[str] = msgspec.field(default_factory=list)
    #: Most bytes of one image.
    max_bytes: Positive = 16 * 1024 * 1024
    #: Seconds one URL may take, redirects included; and to open one connection.
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    max_redirects: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3

    def __post_init__(self) -> None:
        if self.enabled and not self.allow_hosts:
            raise ValueError(
                "enabled needs allow_hosts: list the image hosts (or '*' for any public host)"
            )
        hosts = [h.strip().lower().rstrip(".") for h in self.allow_hosts]
        bad = [h for h in hosts if not _ALLOWED_HOST.fullmatch(h)]
        if bad:
            raise ValueError(f"allow_hosts entry {bad[0]!r} is not a host name, '*.domain' or '*'")
        self.allow_hosts = hosts


_ALLOWED_HOST = re.compile(r"\*|(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[?[0-9a-f:.]+\]?")


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8887
    api_key: str | None = None
    #: Key for ``POST /models/load`` and ``/models/unload`` (only this key); unset, they are off.
    admin_api_key: str | None = None
    #: Most inputs in one request (OpenAI allows 2048).
    max_client_batch_size: Positive = 2048
    max_body_bytes: Positive = 16 * 1024 * 1024
    #: Folders under which ``POST /models/load`` may load model folders.
    model_roots: list[str] = msgspec.field(default_factory=list)
    #: Hub organisations (or users) whose repositories ``POST /models/load`` may download
    #: (``hf://ORG/NAME``); empty, hub loads are off: the server would download on a
    #: client's word.
    hub_organisations: list[str] = msgspec.field(default_factory=list)
    #: Seconds queued and running work may take to finish after SIGTERM.
    drain_seconds: NonNegativeFloat = 30.0
    #: Consecutive failed batches after which a model reports unhealthy.
    unhealthy_after_failures: Positive = 3
    log_format: Literal["json", "text"] = "text"
    #: Connections served at once (granian's backpressure); more wait in the listen backlog.
    max_connections: Positive = 2048
    #: Connections the kernel queues while every slot is busy (granian's backlog).
    backlog: Annotated[int, msgspec.Meta(ge=128)] = 4096
    #: Seconds a connection may take to send a request's headers, counted from its opening
    #: or from the previous answer: a connection that sends nothing (or stays idle after a
    #: keep-alive answer) is closed after this long. Clients keep idle connections 5 s
    #: (httpx) to 15 s (aiohttp); longer than that here avoids closing one they reuse.
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 20.0
    #: Seconds from a request's headers to the end of its body; a slower body is answered 408.
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: Images given by URL (off unless enabled, see ImageUrlConfig).
    image_urls: ImageUrlConfig = msgspec.field(default_factory=ImageUrlConfig)
    #: Most pixels of one image, read from its header before it is decoded.
    max_image_pixels: Positive = DEFAULT_MAX_IMAGE_PIXELS


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    embedding_models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    reranking_models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    nli_models: dict[str, ModelConfig] = msgspec.field(default_factory=dict)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)

    def models(self) -> list[tuple[str, ModelKind, ModelConfig]]:
        """Every configured model with its kind, in file order."""
        out: list[tuple[str, ModelKind, ModelConfig]] = []
        for kind in ModelKind:
            section: dict[str, ModelConfig] = getattr(self, kind.section)
            out.extend((name, kind, cfg) for name, cfg in section.items())
        return out


def _resolve_paths(config: Config, base: Path) -> None:
    """Relative paths in a file are relative to that file's folder, as users expect."""
    for _, _, model in config.models():
        if not is_hub_ref(model.model_path):
            model.model_path = str(_resolve(model.model_path, base))
        if model.tokenizer_path is not None:
            model.tokenizer_path = str(_resolve(model.tokenizer_path, base))
    config.server.model_roots = [str(_resolve(r, base)) for r in config.server.model_roots]


def _resolve(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else (base / p).resolve()


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Decode and check a YAML document; errors name ``source`` and the key path."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_message(exc, source)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    # Models are decoded one by one so that an error names the model, not ``[...]``.
    models: dict[str, dict[str, ModelConfig]] = {}
    for kind in ModelKind:
        section = raw.get(kind.section) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: at {kind.section}: expected a mapping of model names")
        models[kind.section] = {
            str(name): _convert(spec, ModelConfig, source, f"{kind.section}.{name}")
            for name, spec in section.items()
        }
    rest = {k: v for k, v in raw.items() if k not in models}
    config = _convert(rest, Config, source, "")
    for section_name, section_models in models.items():
        setattr(config, section_name, section_models)
    names: dict[str, str] = {}
    for name, kind, _ in config.models():
        problem = model_name_problem(name)
        if problem is not None:
            raise ConfigError(f"{source}: at {kind.section}: {problem}")
        if name in names:
            raise ConfigError(
                f"{source}: model name {name!r} appears in both {names[name]} and "
                f"{kind.section}; names must be unique"
            )
        names[name] = kind.section
    if base is not None:
        _resolve_paths(config, base)
    return config


def _yaml_message(exc: yaml.YAMLError, source: str) -> str:
    """PyYAML names the stream ``"<unicode string>"``; name the file and the line instead."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return (
            f"{source}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: "
            f"{exc.problem}{context}"
        )
    return f"{source}: not valid YAML: {exc}"


def _convert(raw: object, type_: type[_T], source: str, prefix: str) -> _T:
    try:
        return msgspec.convert(raw, type_, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `int`, got `str` - at `$.max_length`": put the key path first.
        what, _, where = str(exc).rpartition(" - at `")
        if not what:
            what, where = str(exc), "$"
        path = where.rstrip("`").removeprefix("$").lstrip(".")
        key = ".".join(p for p in (prefix, path) if p)
        what += _hint(type_, path, what)
        raise ConfigError(f"{source}: at {key or 'top level'}: {what}") from None


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(.+)`")


def _unwrap(node: Any) -> Any:
    """The type inside ``Annotated[...]`` and ``X | None``."""
    while True:
        if isinstance(node, msgspec.inspect.Metadata):
            node = node.type
            continue
        if isinstance(node, msgspec.inspect.UnionType):
            arms = [t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(arms) == 1:
                node = arms[0]
                continue
        return node


def _hint(type_: type[Any], path: str, what: str) -> str:
    """What to write instead: the allowed values of an enum, the key a typo meant."""
    node: Any = msgspec.inspect.type_info(type_)
    for part in re.findall(r"[^.\[\]]+", path):
        node = _unwrap(node)
        if isinstance(node, msgspec.inspect.StructType):
            node = next((f.type for f in node.fields if f.encode_name == part), None)
        elif isinstance(node, msgspec.inspect.DictType):
            node = node.value_type
        elif isinstance(node, msgspec.inspect.ListType):
            node = node.item_type
        else:
            return ""
    node = _unwrap(node)
    if isinstance(node, msgspec.inspect.LiteralType):
        return "; allowed values: " + ", ".join(str(v) for v in node.values)
    if isinstance(node, msgspec.inspect.EnumType):
        return "; allowed values: " + ", ".join(str(m.value) for m in node.cls)
    return _key_hint(node, what)


def _key_hint(node: Any, what: str) -> str:
    match = _UNKNOWN_FIELD.match(what)
    if match is None or not isinstance(node, msgspec.inspect.StructType):
        return ""
    known = [f.encode_name for f in node.fields]
    close = difflib.get_close_matches(match.group(1), known, n=1)
    return f"; did you mean `{close[0]}`?" if close else "; known keys: " + ", ".join(known)


def dump_config(config: Config) -> str:
    """YAML that :func:`parse_config` reads back into an equal config (paths as they are)."""
    return yaml.safe_dump(msgspec.to_builtins(config), sort_keys=False, allow_unicode=True)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror}") from None
    return parse_config(text, source=str(p), base=p.resolve().parent)
