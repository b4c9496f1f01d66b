"""The ASGI application: ``granian --interface asgi --factory trt_async.app:create_app``.

The config comes from the argument, else the file named by ``TRT_ASYNC_CONFIG``, else the
embedded default (all-MiniLM-L6-v2 on ONNX Runtime). ``TRT_ASYNC_API_KEY`` overrides the
config's API key, so a key need not be written into a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from trt_async import __version__
from trt_async.core.config import CONFIG_ENV, Config, load_config
from trt_async.core.metrics import Metrics
from trt_async.core.registry import ModelRegistry
from trt_async.http.admin import HealthController, ManagementController
from trt_async.http.auth import make_api_key_guard
from trt_async.http.common import REGISTRY_KEY
from trt_async.http.errors import exception_handlers
from trt_async.http.observability import (
    METRICS_STATE_KEY,
    RequestContextMiddleware,
    configure_logging,
    metrics_endpoint,
)
from trt_async.http.openai_api import OpenAIController
from trt_async.http.rerank import RerankController
from trt_async.http.seed import SeedController
from trt_async.http.tei import TEIController
from trt_async.http.zero_shot import ZeroShotController

log = logging.getLogger(__name__)

API_KEY_ENV = "TRT_ASYNC_API_KEY"
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
    return config


def create_app(config: Config | None = None) -> Litestar:
    config = resolve_config(config)

    configure_logging(config.server.log_format)
    metrics = Metrics(lambda: list(app.state.get(REGISTRY_KEY) or ()))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        registry = ModelRegistry(
            config,
            observer_factory=metrics.batch_observer,
            timings_observer=metrics.observe_timings,
        )
        try:
            await registry.start()
        except BaseException:
            # Free what did load; the exception stops start-up with its reason.
            await registry.close()
            raise
        app.state[REGISTRY_KEY] = registry
        log.info("serving %d models: %s", len(registry), ", ".join(m.name for m in registry))
        try:
            yield
        finally:
            await registry.close(deadline_s=config.server.drain_seconds)

    app = Litestar(
        route_handlers=[
            metrics_endpoint,
            SeedController,
            OpenAIController,
            RerankController,
            TEIController,
            ZeroShotController,
            HealthController,
            ManagementController,
        ],
        lifespan=[lifespan],
        middleware=[RequestContextMiddleware(metrics)],
        exception_handlers=exception_handlers(),
        guards=make_api_key_guard(config.server.api_key, public_prefixes=(DOCS_PATH,)),
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
            render_plugins=[SwaggerRenderPlugin(path="/"), JsonRenderPlugin()],
        ),
    )
    app.state[METRICS_STATE_KEY] = metrics
    return app
