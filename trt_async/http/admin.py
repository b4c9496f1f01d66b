"""Probes (``/health``, ``/ready``) and model management (load, unload, status).

Loading reads only folders under ``server.model_roots``: a path is resolved (symlinks
followed) before the check, so ``..`` or a link cannot reach outside a root. A hub model
(``hf://ORG/NAME``) loads only from an organisation in ``server.hub_organisations``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.exceptions import HTTPException
from msgspec import Meta

from trt_async.backends.modelfiles import ModelDirError
from trt_async.core.config import ConfigError, ModelConfig, ModelKind, is_hub_ref
from trt_async.core.errors import Forbidden, InvalidInput, InvalidPath, Unavailable
from trt_async.core.hub import HubUnreachable, check_hub_load
from trt_async.core.registry import ModelRegistry
from trt_async.core.tasks import ServedModel
from trt_async.http.auth import ADMIN_OPT, PUBLIC_OPT
from trt_async.http.common import REGISTRY_KEY, AnyRequest, JsonBody, RegistryDep, error_responses
from trt_async.http.errors import Dialect, dialect_handlers


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    models: dict[str, str]


class LoadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Load an exported model folder at run time."""

    name: Annotated[str, Meta(description="The name clients will use.")]
    kind: Annotated[ModelKind, Meta(description="How the model is served.")]
    model_path: Annotated[
        str,
        Meta(
            description="An exported model folder under `server.model_roots`, or "
            "`hf://ORG/NAME[@REVISION]` of an organisation in `server.hub_organisations`."
        ),
    ]
    options: Annotated[
        dict[str, Any],
        Meta(
            description="Any other model option of the config file (`max_length`, `backend`, ...)."
        ),
    ] = msgspec.field(default_factory=dict)


class UnloadRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Unload a model once its queue has drained."""

    name: Annotated[str, Meta(description="A served model's name.")]


class Buckets(msgspec.Struct):
    batch_sizes: list[int]
    lengths: list[int]


class ModelStats(msgspec.Struct):
    """The scheduler's counters for the model's runtime (shared by names on one runtime)."""

    queued_items: int
    queued_tokens: int
    running_batches: int
    batches: int
    #: Batches run per bucket, keyed ``"<batch>x<length>"``.
    batches_by_bucket: dict[str, int]
    items: int
    real_tokens: int
    padded_tokens: int
    padding_efficiency: float
    cancelled_items: int
    rejected_requests: int
    timed_out_requests: int
    failed_batches: int


class ModelDescription(msgspec.Struct):
    """One model's state, shape and statistics (``/models/status``, ``/models/load``)."""

    name: str
    kind: str
    state: str
    reason: str | None
    backend: str
    device: str
    max_length: int
    #: Embedding size (embedders only).
    dimensions: int | None
    #: Label names by class index (classifiers only).
    labels: list[str] | None
    buckets: Buckets
    stats: ModelStats
    #: Bytes by purpose, as the backend reports them.
    memory: dict[str, int]


class ModelStatus(msgspec.Struct):
    ready: bool
    models: list[ModelDescription]


def describe(model: ServedModel) -> ModelDescription:
    rt = model.runtime
    caps = model.capabilities
    stats = rt.scheduler.stats
    info = rt.info()
    return ModelDescription(
        name=model.name,
        kind=model.kind.value,
        state=model.state.value,
        reason=model.reason,
        backend=info.name,
        device=info.device,
        max_length=rt.max_length,
        dimensions=rt.output_dim if caps.embeds else None,
        labels=[caps.labels[i] for i in sorted(caps.labels)] if caps.classifies else None,
        buckets=Buckets(list(rt.grid.batch_sizes), list(rt.grid.lengths)),
        stats=ModelStats(
            queued_items=stats.queued_items,
            queued_tokens=stats.queued_tokens,
            running_batches=stats.running_batches,
            batches=sum(stats.batches.values()),
            batches_by_bucket={
                f"{b.batch}x{b.length}": n for b, n in sorted(stats.batches.items())
            },
            items=stats.items_run,
            real_tokens=stats.real_tokens,
            padded_tokens=stats.padded_tokens,
            padding_efficiency=round(stats.padding_efficiency, 4),
            cancelled_items=stats.cancelled_items,
            rejected_requests=stats.rejected_requests,
            timed_out_requests=stats.timed_out_requests,
            failed_batches=stats.failed_batches,
        ),
        memory=dict(info.memory),
    )


class Unloaded(msgspec.Struct):
    unloaded: str


def _inside_roots(path: str, roots: list[str], param: str) -> str:
    if not roots:
        raise Forbidden(
            "loading models at run time is disabled; list allowed folders in server.model_roots",
            field=param,
        )
    if "\0" in path:
        raise InvalidPath(f"{param} contains a NUL character", field=param)
    real = Path(os.path.realpath(path))
    for root in roots:
        if real.is_relative_to(os.path.realpath(root)):
            return str(real)
    raise Forbidden(f"{param} {path!r} is outside server.model_roots", field=param)


class HealthController(Controller):
    tags = ["probes"]  # noqa: RUF012 - Litestar reads class attributes
    opt = {PUBLIC_OPT: True}  # noqa: RUF012
    exception_handlers = dialect_handlers(Dialect.DETAIL)

    @get("/health", summary="Liveness: 200 while the process serves HTTP")
    async def health(self) -> Health:
        return Health("ok")

    @get(
        "/ready",
        summary="Readiness: 200 when every model is ready, else 503 with the reasons",
        responses={503: error_responses(Dialect.DETAIL, 503)[503]},
    )
    async def ready(self, request: AnyRequest) -> Response[Readiness]:
        # Not the `registry` dependency: while starting, readiness answers instead of failing.
        registry: ModelRegistry | None = request.app.state.get(REGISTRY_KEY)
        if registry is None:
            return Response(Readiness("starting", {}), status_code=503)
        if registry.ready:
            return Response(Readiness("ready", {m.name: m.state.value for m in registry}))
        reasons = registry.not_ready_reasons() or {"server": "no model loaded"}
        return Response(Readiness("not ready", reasons), status_code=503)


class ManagementController(Controller):
    path = "/models"
    tags = ["management"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.DETAIL)

    @post(
        "/load",
        status_code=201,
        summary="Load a model folder under server.model_roots or a hub model (admin key)",
        responses=error_responses(Dialect.DETAIL, 400, 401, 403, 409, 422, 503),
        opt={ADMIN_OPT: True},
    )
    async def load(self, registry: RegistryDep, data: JsonBody[LoadRequest]) -> ModelDescription:
        server = registry.config.server
        roots = server.model_roots
        if is_hub_ref(data.model_path):
            check_hub_load(data.model_path, server.hub_organisations, "model_path")
            model_path = data.model_path
        else:
            model_path = _inside_roots(data.model_path, roots, "model_path")
        raw = {**data.options, "model_path": model_path}
        tokenizer = raw.get("tokenizer_path")
        if isinstance(tokenizer, str):
            raw["tokenizer_path"] = _inside_roots(tokenizer, roots, "options.tokenizer_path")
        try:
            config = msgspec.convert(raw, ModelConfig, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"options: {exc}", field="options") from None
        try:
            model = await registry.load(data.name, data.kind, config)
        except HubUnreachable as exc:
            raise Unavailable(str(exc)) from None
        except ModelDirError as exc:
            raise HTTPException(str(exc), status_code=400) from None
        except ConfigError as exc:
            raise InvalidInput(str(exc), field="options") from None
        except OSError as exc:  # a name too long, a folder that cannot be read, ...
            message = f"model_path cannot be read: {exc.strerror}"
            raise InvalidPath(message, field="model_path") from None
        return describe(model)

    @post(
        "/unload",
        status_code=200,
        summary="Unload a model once its queue has drained (admin key)",
        responses=error_responses(Dialect.DETAIL, 401, 403, 404, 422),
        opt={ADMIN_OPT: True},
    )
    async def unload(self, registry: RegistryDep, data: JsonBody[UnloadRequest]) -> Unloaded:
        await registry.unload(data.name)
        return Unloaded(data.name)

    @get("/status", summary="Every model's state, buckets and queue statistics")
    async def status(self, registry: RegistryDep) -> ModelStatus:
        return ModelStatus(registry.ready, [describe(m) for m in registry])
