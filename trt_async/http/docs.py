"""The API docs page and what the OpenAPI schema teaches.

* Swagger UI's assets come from the ``swagger-ui-py`` package and are served by this server
  under ``/docs/assets``: the page works on a machine without internet access.
* Request bodies carry examples with the names of the models this server serves, so the
  first "Execute" works (Swagger UI would otherwise prefill ``"model": "string"``).
* A Struct's docstring becomes its schema's description; fields describe themselves with
  ``msgspec.Meta(description=...)``.
"""

from __future__ import annotations

import importlib.resources
import inspect
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Router, post
from litestar.enums import RequestEncodingType
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Example, OpenAPI, Operation, Reference
from litestar.params import Body, FromPath
from litestar.routes import BaseRoute
from litestar.static_files import create_static_files_router

from trt_async.core.capabilities import declared_inputs
from trt_async.core.config import Config, ModelConfig, ModelKind
from trt_async.http.routes import ANSWER_OPT, BODY_OPT

ASSETS_PATH = "/assets"


def swagger_assets() -> Path:
    """The folder of Swagger UI's distribution files inside the ``swagger-ui-py`` package."""
    return Path(str(importlib.resources.files("swagger_ui") / "static"))


class OfflineSwaggerPlugin(SwaggerRenderPlugin):
    """Swagger UI with its script, style sheet and icon served by this server, no CDN."""

    def __init__(self, docs_path: str) -> None:
        base = f"{docs_path.rstrip('/')}{ASSETS_PATH}"
        super().__init__(
            js_url=f"{base}/swagger-ui-bundle.js",
            css_url=f"{base}/swagger-ui.css",
            standalone_preset_js_url=f"{base}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{base}/favicon-32x32.png'>",
            path="/",
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(
            create_static_files_router(
                ASSETS_PATH,
                directories=[swagger_assets()],
                include_in_schema=False,
                # Assets change only with the package; let browsers keep them.
                cache_control=None,
            )
        )


def _structs() -> dict[str, type[msgspec.Struct]]:
    """This package's Structs by class name (the title Litestar gives their schemas)."""
    out: dict[str, type[msgspec.Struct]] = {}
    stack: list[type[msgspec.Struct]] = [msgspec.Struct]
    while stack:
        for sub in stack.pop().__subclasses__():
            stack.append(sub)
            if sub.__module__.startswith("trt_async."):
                out.setdefault(sub.__name__, sub)
    return out


def add_struct_descriptions(schema: OpenAPI) -> None:
    """Each Struct's docstring as its schema's description (Litestar reads only the
    fields' ``msgspec.Meta(description=...)``)."""
    structs = _structs()
    components = schema.components.schemas if schema.components else {}
    for name, component in (components or {}).items():
        cls = structs.get(component.title or name)
        doc = inspect.getdoc(cls) if cls is not None and cls.__doc__ else None
        if doc and not component.description:
            component.description = doc


# -- request examples ------------------------------------------------------------------------

QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Bread is baked every morning."]
PREMISE = "A man is playing a guitar on stage."
HYPOTHESIS = "Someone is making music."
INSTRUCTION = "Given a question, find the passages that answer it"

Examples = dict[str, dict[str, Any]]


def _first(config: Config, *kinds: ModelKind) -> str | None:
    for kind in kinds:
        section: dict[str, Any] = getattr(config, kind.section)
        if section:
            return next(iter(section))
    return None


def request_examples(config: Config) -> dict[tuple[str, str], Examples]:
    """Example bodies by (method, path), naming the models ``config`` serves.

    A route whose model kind is not served gets no example rather than a wrong one.
    """
    embedder = _first(config, ModelKind.EMBEDDING)
    reranker = _first(config, ModelKind.RERANKER, ModelKind.EMBEDDING)
    nli = _first(config, ModelKind.NLI)
    out: dict[tuple[str, str], Examples] = {}
    models = {name: model for name, _, model in config.models()}

    def add(path: str, name: str, body: dict[str, Any] | None, method: str = "post") -> None:
        if body is not None:
            out.setdefault((method, path), {})[name] = body

    def when(model: str | None, body: Callable[[str], dict[str, Any]]) -> dict[str, Any] | None:
        return body(model) if model else None

    add("/v1/embeddings", "embed", when(embedder, lambda m: {"model": m, "input": DOCUMENTS}))
    add(
        "/v1/embeddings",
        "embed, base64, 128 dimensions",
        when(
            embedder,
            lambda m: {
                "model": m,
                "input": "hello world",
                "encoding_format": "base64",
                "dimensions": 128,
            },
        ),
    )
    cohere = when(
        reranker,
        lambda m: {"model": m, "query": QUERY, "documents": DOCUMENTS, "top_n": 1},
    )
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        add(path, "rerank", cohere)
    add(
        "/v1/rerank",
        "rerank (Voyage: top_k)",
        when(reranker, lambda m: {"model": m, "query": QUERY, "documents": DOCUMENTS, "top_k": 1}),
    )
    _add_prompt_examples(add, models, embedder, reranker)
    root = _first(config, *ModelKind)
    add("/", "the root model's task (TEI)", {"inputs": DOCUMENTS[0]} if root else None)
    add(
        "/",
        "sentence similarity",
        when(
            embedder,
            lambda m: {"inputs": {"source_sentence": QUERY, "sentences": DOCUMENTS}, "model": m},
        ),
    )
    add(
        "/",
        "text classification",
        when(nli, lambda m: {"inputs": PREMISE, "parameters": {"top_k": 2}, "model": m}),
    )
    add(
        "/",
        "rerank (TEI)",
        when(reranker, lambda m: {"query": QUERY, "texts": DOCUMENTS, "model": m}),
    )
    add(
        "/rerank",
        "rerank (TEI: texts)",
        when(reranker, lambda m: {"model": m, "query": QUERY, "texts": DOCUMENTS}),
    )
    add("/embed", "embed", when(embedder, lambda m: {"model": m, "inputs": DOCUMENTS}))
    add(
        "/predict",
        "NLI pair",
        when(nli, lambda m: {"model": m, "inputs": [PREMISE, HYPOTHESIS]}),
    )
    add(
        "/tokenize",
        "tokenize",
        when(embedder or reranker or nli, lambda m: {"model": m, "inputs": "hello world"}),
    )
    add(
        "/v1/zero-shot",
        "zero-shot",
        when(
            nli,
            lambda m: {
                "model": m,
                "text": "The new phone has a great camera.",
                "candidate_labels": ["technology", "sports", "cooking"],
            },
        ),
    )
    add("/infer/{model}", "embedding model", {"documents": DOCUMENTS} if embedder else None)
    add(
        "/infer/{model}",
        "reranker",
        {"query": QUERY, "documents": DOCUMENTS} if config.reranking_models else None,
    )
    add(
        "/infer/{model}",
        "NLI model",
        {"premises": [PREMISE], "hypotheses": [HYPOTHESIS]} if nli else None,
    )
    return out


def _add_prompt_examples(
    add: Callable[[str, str, dict[str, Any] | None], None],
    models: dict[str, ModelConfig],
    embedder: str | None,
    reranker: str | None,
) -> None:
    """Examples with the first embedder's prompt names and the first reranker's
    instruction, where their folders declare them."""
    if embedder is not None:
        names = declared_inputs(models[embedder]).prompt_names
        name = "query" if "query" in names else (names[0] if names else None)
        if name is not None:
            label = f"embed with a prompt (prompt_name; this model's: {', '.join(names)})"
            body = {"model": embedder, "input": QUERY, "prompt_name": name}
            add("/v1/embeddings", label, body)
            add("/embed", label, {"model": embedder, "inputs": QUERY, "prompt_name": name})
    if reranker is not None and declared_inputs(models[reranker]).pair_template is not None:
        instructed = {"model": reranker, "query": QUERY, "documents": DOCUMENTS}
        instructed["instruction"] = INSTRUCTION
        for path in ("/v1/rerank", "/v2/rerank"):
            add(path, "rerank with an instruction (LLM reranker)", instructed)


def _operation(schema: OpenAPI, method: str, path: str) -> Operation | None:
    item = (schema.paths or {}).get(path)
    op = getattr(item, method, None) if item is not None else None
    return op if isinstance(op, Operation) else None


def document(schema: OpenAPI, config: Config, routes: Iterable[BaseRoute] = ()) -> None:
    """Complete the generated schema: the inference routes' bodies and answers, Struct
    descriptions, examples for ``config``."""
    add_bodies(schema, routes)
    add_struct_descriptions(schema)
    add_request_examples(schema, config)


def add_bodies(schema: OpenAPI, routes: Iterable[BaseRoute]) -> None:
    """The request body and the 200 answer of each route that decodes its own body.

    Those handlers take the raw request (see :mod:`trt_async.http.routes`), so Litestar
    cannot see their types. A throwaway app with one stand-in handler per route, declaring
    the body and the answer types, lets Litestar write their schemas as it writes every
    other; they are copied over with the components they use.
    """
    stand_ins: list[HTTPRouteHandler] = []
    for route in routes:
        for handler in getattr(route, "route_handlers", ()):
            body = handler.opt.get(BODY_OPT)
            if body is None:
                continue
            stand_ins.append(_stand_in(route.path, body, handler.opt.get(ANSWER_OPT)))
    if not stand_ins:
        return
    documented = Litestar(stand_ins, openapi_config=OpenAPIConfig("bodies", "0")).openapi_schema
    for path, item in (documented.paths or {}).items():
        op = getattr(item, "post", None)
        ours = _operation(schema, "post", path)
        if op is None or ours is None:
            continue
        ours.request_body = op.request_body
        ours.responses = {**(ours.responses or {}), **{"200": (op.responses or {})["200"]}}
    if documented.components.schemas:
        if schema.components.schemas is None:
            schema.components.schemas = {}
        for name, component in documented.components.schemas.items():
            schema.components.schemas.setdefault(name, component)


def _stand_in(path: str, body: Any, answer: Any) -> HTTPRouteHandler:
    """A handler at ``path`` that only declares ``body`` and ``answer`` (never called)."""
    params = [
        inspect.Parameter(
            "data",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Annotated[body, Body(media_type=RequestEncodingType.JSON)],
        )
    ]
    if "{" in path:
        for name in re.findall(r"{(\w+)(?::\w+)?}", path):
            params.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=FromPath[str])
            )

    async def stand_in(**kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - documentation only

    stand_in.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        params, return_annotation=answer if answer is not None else Any
    )
    stand_in.__annotations__ = {p.name: p.annotation for p in params}
    stand_in.__annotations__["return"] = answer if answer is not None else Any
    return post(path, status_code=200)(stand_in)


def add_request_examples(schema: OpenAPI, config: Config) -> None:
    """Put :func:`request_examples` on the matching operations' JSON request bodies."""
    for (method, path), examples in request_examples(config).items():
        op = _operation(schema, method, path)
        body = op.request_body if op is not None else None
        if body is None or isinstance(body, Reference):
            continue
        media = body.content.get("application/json")
        if media is not None:
            media.examples = {
                name: Example(summary=name, value=value) for name, value in examples.items()
            }
    seed = _operation(schema, "post", "/infer/{model}")
    names = [name for name, _, _ in config.models()]
    for param in (seed.parameters or []) if seed is not None and names else []:
        if not isinstance(param, Reference) and param.name == "model":
            param.examples = {name: Example(summary=name, value=name) for name in names}
