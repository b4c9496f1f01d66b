"""The set of served models: load at start-up or at run time, look up, unload, close.

Configured names that point at the same folder with the same runtime options share one
:class:`ModelRuntime` (one session or engine, one queue): the embedded default serves
all-MiniLM-L6-v2 both as an embedder and as a reranker this way.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterator

from trt_async.backends import BackendUnavailable
from trt_async.core import hub
from trt_async.core.config import Config, ConfigError, ModelConfig, ModelKind, model_name_problem
from trt_async.core.errors import Conflict, InvalidInput, ModelNotFound, Part
from trt_async.core.image_text import load_runtime
from trt_async.core.requests import Timings
from trt_async.core.runtime import ModelRuntime
from trt_async.core.scheduler import BatchObserver
from trt_async.core.tasks import ModelState, ServedModel
from trt_async.core.vision import image_series

log = logging.getLogger(__name__)

ObserverFactory = Callable[[str], BatchObserver]

TimingsObserver = Callable[[str, Timings], None]
#: Told the name of each model unloaded (metrics drop its series).
UnloadObserver = Callable[[str], None]


class ModelRegistry:
    """Owns every :class:`ServedModel` and the runtimes behind them."""

    def __init__(
        self,
        config: Config,
        *,
        observer_factory: ObserverFactory | None = None,
        timings_observer: TimingsObserver | None = None,
        unload_observer: UnloadObserver | None = None,
        unhealthy_after: int | None = None,
    ) -> None:
        self.config = config
        self._models: dict[str, ServedModel] = {}
        self._runtimes: dict[bytes, tuple[ModelRuntime, int]] = {}
        self._observer_factory = observer_factory
        self._timings_observer = timings_observer
        self._unload_observer = unload_observer
        self._unhealthy_after = unhealthy_after or config.server.unhealthy_after_failures
        self._lock = asyncio.Lock()

    # -- lookup ----------------------------------------------------------------------------

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(name, self._models)
        return model

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    def names_by_kind(self) -> dict[ModelKind, list[str]]:
        out: dict[ModelKind, list[str]] = {kind: [] for kind in ModelKind}
        for model in self._models.values():
            out[model.kind].append(model.name)
        return out

    @property
    def ready(self) -> bool:
        return bool(self._models) and all(m.state is ModelState.READY for m in self)

    def not_ready_reasons(self) -> dict[str, str]:
        return {
            m.name: f"{m.state.value}" + (f": {m.reason}" if m.reason else "")
            for m in self
            if m.state is not ModelState.READY
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load and warm every configured model; the first failure stops start-up."""
        for name, kind, config in self.config.models():
            await self._load(name, kind, config)
        settle_heap()

    async def load(self, name: str, kind: ModelKind, config: ModelConfig) -> ServedModel:
        """Load a model while serving (the admin route)."""
        model = await self._load(name, kind, config)
        settle_heap()
        return model

    async def _load(self, name: str, kind: ModelKind, config: ModelConfig) -> ServedModel:
        problem = model_name_problem(name)
        if problem is not None:
            raise InvalidInput(problem, part=Part.NAME)
        async with self._lock:
            if name in self._models:
                raise Conflict(f"model {name!r} is already loaded; unload it first", part=Part.NAME)
            key = config.runtime_key()
            shared = self._runtimes.get(key)
            if shared is not None:
                runtime, refs = shared
                self._runtimes[key] = (runtime, refs + 1)
            else:
                started = time.perf_counter()
                try:
                    # An hf:// model is served from its folder in the cache (downloading it).
                    local = await asyncio.to_thread(hub.local_config, config, kind)
                    runtime = await asyncio.to_thread(self._build_runtime, name, local)
                    try:
                        await runtime.start()
                    except BaseException:
                        await runtime.close()
                        raise
                except BackendUnavailable as exc:
                    message = f"{name}: backend {config.backend!r} cannot run here: {exc}"
                    raise ConfigError(message) from None
                self._runtimes[key] = (runtime, 1)
                log.info(
                    "model ready: name=%s backend=%s buckets=%d load_s=%.2f",
                    name,
                    runtime.info().name,
                    sum(1 for _ in runtime.grid.buckets()),
                    time.perf_counter() - started,
                )
            on_timings = (
                functools.partial(self._timings_observer, name)
                if self._timings_observer is not None
                else None
            )
            try:
                # Checks what the config asks of the model (prompts, an instruction).
                model = ServedModel(
                    name,
                    kind,
                    config,
                    runtime,
                    on_timings=on_timings,
                    unhealthy_after=self._unhealthy_after,
                )
            except BaseException:
                await self._release(key)
                raise
            model.state = ModelState.READY
            self._models[name] = model
            return model

    def _build_runtime(self, name: str, config: ModelConfig) -> ModelRuntime:
        factory = self._observer_factory
        return load_runtime(
            config,
            observer=factory(name) if factory else None,
            image_observer=factory(image_series(name)) if factory else None,
            label=name,
            max_image_pixels=self.config.server.max_image_pixels,
        )

    async def unload(self, name: str) -> None:
        """Stop taking requests for ``name``, let its queue drain, then free its runtime."""
        await self._unload(name)
        # Here, not in _unload: its locals would keep the model alive through the collection.
        settle_heap()

    async def _unload(self, name: str) -> None:
        async with self._lock:
            model = self.get(name)
            model.state = ModelState.DRAINING
            await self._release(model.config.runtime_key())
            model.state = ModelState.UNLOADED
            del self._models[name]
            if self._unload_observer is not None:
                self._unload_observer(name)

    async def _release(self, key: bytes) -> None:
        """One name fewer on the runtime of ``key``: the last one drains and frees it."""
        runtime, refs = self._runtimes[key]
        if refs > 1:
            self._runtimes[key] = (runtime, refs - 1)
        else:
            await runtime.drain()
            await runtime.close()
            del self._runtimes[key]

    async def close(self, deadline_s: float = 0.0) -> None:
        """Drain everything for up to ``deadline_s``, fail what is left with 503, free all."""
        for model in self._models.values():
            model.state = ModelState.DRAINING
        runtimes = [rt for rt, _ in self._runtimes.values()]
        if deadline_s > 0 and runtimes:
            waits = [asyncio.ensure_future(rt.drain()) for rt in runtimes]
            _, pending = await asyncio.wait(waits, timeout=deadline_s)
            for fut in pending:
                fut.cancel()
        for runtime in runtimes:
            await runtime.close("the server is shutting down; retry on another replica")
        self._runtimes.clear()
        for model in self._models.values():
            model.state = ModelState.UNLOADED
        # What the models held may sit in reference cycles: let the collector see it again.
        gc.unfreeze()


#: Allocations between two collections of the youngest generation (Python's default: 700).
#: Each of those collections walks every young object alive, and under load that is every
#: request in flight: at 64 clients the young collections paused the loop 0.12-0.14 ms a
#: request at 700 and 0.03 ms at 10,000 (``perf/gc_pauses.py``). Only garbage in
#: reference cycles waits longer to be freed.
YOUNG_GC_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect, then move every object still alive into the collector's permanent generation.

    A loaded server holds ~8x10^4 long-lived objects (sessions, tokenizers, the web app), and
    every full collection walks all of them on the event loop, stalling every request in
    flight (~130 ms, once in 10,000 requests at 64 clients: ``perf/gc_pauses.py``). Frozen
    objects are skipped by every collection. Unloading a model or closing the registry
    unfreezes them, so a model that sits in a reference cycle is still freed; a load or
    unload while serving pays one full collection. Both settings are the process's: a
    program that embeds a registry gets them too.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, oldest)
