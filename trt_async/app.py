"""The ASGI application: ``granian --interface asgi --factory trt_async.app:create_app``.

The config comes from the argument, else the file named by ``TRT_ASYNC_CONFIG``, else the
embedded default (all-MiniLM-L6-v2 on ONNX Runtime). ``TRT_ASYNC_API_KEY`` overrides the
config's API key, so a key need not be written into a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

from litestar import Litestar, Router
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from trt_async import __version__
from trt_async.core.config import CONFIG_ENV, LOG_LEVEL_ENV, Config, load_config
from trt_async.core.image_inputs import ImageFetcher
from trt_async.core.inference import Inference
from trt_async.core.metrics import Metrics
from trt_async.core.registry import ModelRegistry
from trt_async.http import (
    cohere_embed,
    embedding_proxy,
    infinity,
    multivector,
    openai_api,
    rerank,
    seed,
    tei,
    tei_root,
    triton_wrapper,
    zero_shot,
)
from trt_async.http.admin import HealthController, ManagementController
from trt_async.http.auth import make_admin_guard, make_api_key_guard
from trt_async.http.common import DEPENDENCIES, INFERENCE_KEY, REGISTRY_KEY
from trt_async.http.docs import OfflineSwaggerPlugin, document
from trt_async.http.errors import (
    Dialect,
    route_dialects,
    routing_error_handlers,
)
from trt_async.http.observability import (
    METRICS_STATE_KEY,
    RequestContextMiddleware,
    configure_logging,
    metrics_endpoint,
    stop_log_writer,
)
from trt_async.http.strict import strict_body

log = logging.getLogger(__name__)

API_KEY_ENV = "TRT_ASYNC_API_KEY"
ADMIN_API_KEY_ENV = "TRT_ASYNC_ADMIN_API_KEY"
DOCS_PATH = "/docs"


def resolve_config(config: Config | None = None) -> Config:
    if config is None:
        path = os.environ.get(CONFIG_ENV)
        if path:
            config = load_config(path)
        else:
            # Imported here: it pulls in the export machinery only when it is needed.
            from trt_async.tools.embedded import embedded_config, embedded_model_dir

            config = embedded_config(embedded_model_dir())
    api_key = os.environ.get(API_KEY_ENV)
    if api_key:
        config.server.api_key = api_key
    admin_api_key = os.environ.get(ADMIN_API_KEY_ENV)
    if admin_api_key:
        config.server.admin_api_key = admin_api_key
    return config


class DrainDeadline:
    """After a shutdown signal, close the registry once ``drain_s`` has passed.

    Closing fails what is still queued with 503 (running batches finish), so every open
    request ends with an answer and the process can exit near the deadline.
    """

    def __init__(self, registry: ModelRegistry, drain_s: float) -> None:
        self.registry = registry
        self.drain_s = drain_s
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            log.info("shutdown signal: finishing in-flight work for up to %g s", self.drain_s)
            self._task = asyncio.ensure_future(self._close_at_deadline())

    async def _close_at_deadline(self) -> None:
        await asyncio.sleep(self.drain_s)
        self._closing = True
        log.warning("drain deadline (%g s) passed: failing queued work with 503", self.drain_s)
        await self.registry.close()

    async def finish(self) -> None:
        """Stop the timer if it is still waiting, else let the close it began complete."""
        if self._task is None:
            return
        if not self._closing:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def chain_shutdown_signals(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on the loop when SIGTERM or SIGINT arrives; return an undo function.

    granian (like most ASGI servers) waits for every open request to finish before it runs
    the lifespan's shutdown, so ``server.drain_seconds`` could not bound a long queue
    without hearing of the signal itself. The server's own handler is kept and called
    after ours. Where no server has taken the signal (its handler is the default, as in
    tests running the app in-process) or off the main thread, nothing is installed.
    """
    loop = asyncio.get_running_loop()
    installed: list[tuple[signal.Signals, Callable[[int, FrameType | None], object]]] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous) or previous is signal.default_int_handler:
            continue

        def handler(
            signum: int,
            frame: FrameType | None,
            previous: Callable[[int, FrameType | None], object] = previous,
        ) -> None:
            loop.call_soon_threadsafe(callback)
            previous(signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            break
        installed.append((sig, previous))

    def restore() -> None:
        for sig, previous in installed:
            signal.signal(sig, previous)

    return restore


def log_level() -> int:
    """The level ``trt_async`` logs at: ``$TRT_ASYNC_LOG_LEVEL`` (the CLI's ``--log-level``,
    passed on to the worker process), else INFO, so the access log is on by default."""
    name = os.environ.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError(
            f"{LOG_LEVEL_ENV}={name!r} is not a log level; use DEBUG, INFO, WARNING or ERROR"
        )
    return level


#: tokenizers' own thread pool (rayon) for ``encode_batch``: off unless the environment
#: says otherwise. Requests are tokenised on the server's own threads, in shared batches;
#: rayon's workers on top of those only added CPU (32-text requests of the near-instant
#: model, in one run: 1.33 ms of tokenising CPU a request with them, 1.15 ms without).
TOKENIZERS_PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"


def create_app(
    config: Config | None = None, *, image_fetcher: ImageFetcher | None = None
) -> Litestar:
    """The app for ``config``; ``image_fetcher`` fetches image URLs instead of one made
    from ``server.image_urls`` (tests reach a local server with it)."""
    config = resolve_config(config)
    os.environ.setdefault(TOKENIZERS_PARALLELISM_ENV, "false")

    configure_logging(config.server.log_format, log_level())
    metrics = Metrics(lambda: list(app.state.get(REGISTRY_KEY) or ()))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        registry = ModelRegistry(
            config,
            observer_factory=metrics.batch_observer,
            timings_observer=metrics.observe_timings,
            unload_observer=metrics.forget_model,
        )
        try:
            await registry.start()
        except BaseException:
            # Free what did load; the exception stops start-up with its reason.
            await registry.close()
            raise
        # One fetcher per server (it pools connections); none while URLs are off.
        urls = config.server.image_urls
        fetcher = image_fetcher or (ImageFetcher(urls) if urls.enabled else None)
        app.state[REGISTRY_KEY] = registry
        app.state[INFERENCE_KEY] = Inference(registry, fetcher=fetcher, stats=metrics.inference)
        log.info("serving %d models: %s", len(registry), ", ".join(m.name for m in registry))
        drain = DrainDeadline(registry, config.server.drain_seconds)
        restore = chain_shutdown_signals(drain.start)
        try:
            yield
        finally:
            restore()
            await drain.finish()
            await registry.close(deadline_s=config.server.drain_seconds)
            if fetcher is not None:
                await fetcher.aclose()
            # The worker process ends without running exit handlers: write what is queued.
            stop_log_writer()

    # Filled once the routes exist: path -> the dialect its handlers answer errors in.
    dialects: dict[str, Dialect] = {}
    app = Litestar(
        route_handlers=[
            metrics_endpoint,
            seed.router(),
            openai_api.router(),
            rerank.router(),
            tei.router(),
            multivector.router(),
            cohere_embed.router(),
            tei_root.router(),
            zero_shot.router(),
            triton_wrapper.router(),
            infinity.router(),
            embedding_proxy.router(os.environ.get(embedding_proxy.MODEL_NAME_ENV) or None),
            HealthController,
            # Only these routes run the admin check (a guard costs a handler copy per call),
            # and only their bodies go through Litestar's own decoding (checked strictly).
            Router(
                path="/",
                route_handlers=[ManagementController, triton_wrapper.TritonWrapperManagement],
                guards=[make_admin_guard(config.server.admin_api_key)],
                before_request=strict_body,
            ),
        ],
        lifespan=[lifespan],
        middleware=[
            DefineMiddleware(
                RequestContextMiddleware,
                metrics=metrics,
                body_timeout_s=config.server.body_timeout_s,
            )
        ],
        dependencies=DEPENDENCIES,
        # Each controller answers errors in its own dialect; these take what no route took.
        exception_handlers=routing_error_handlers(dialects),
        guards=make_api_key_guard(
            config.server.api_key,
            public_prefixes=(DOCS_PATH,),
            admin_api_key=config.server.admin_api_key,
        ),
        request_max_body_size=config.server.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="trt_async",
            version=__version__,
            description=(
                "Encoder models (embeddings, rerankers, NLI) over several API dialects: "
                "the seed's native routes, OpenAI, Cohere/Jina rerank, Hugging Face TEI "
                "and zero-shot classification."
            ),
            path=DOCS_PATH,
            render_plugins=[OfflineSwaggerPlugin(DOCS_PATH), JsonRenderPlugin()],
        ),
    )
    dialects.update(route_dialects(app.routes))
    document(app.openapi_schema, config, app.routes)
    app.state[METRICS_STATE_KEY] = metrics
    return app
