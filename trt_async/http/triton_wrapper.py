"""The API of the inference server that wraps Triton for sentence-transformers and open_clip
models: ``POST /infer``, ``/load_sentence_transformer_model``, ``/load_clip_model``,
``/unload_model``, ``/delete_model`` (and its JSON statistics on ``GET /metrics``, see
:mod:`trt_async.http.observability`).

A model is named by ``model_name`` and, for CLIP models, ``pretrained``; here that names a
served model: ``model_name`` with ``/`` written ``_``, then ``_`` and ``pretrained`` when
given (``intfloat/e5-small-v2`` is served as ``intfloat_e5-small-v2``, ``ViT-B-32`` +
``laion2b_s34b_b79k`` as ``ViT-B-32_laion2b_s34b_b79k``), as that server names them in its
statistics. There is no hub download: the load routes read the folder
``<root>/<model_name>[/<pretrained>]`` under one of ``server.model_roots`` (an export made
by ``trt-async export``), with the admin key as every management route. Deleting unloads
the model and keeps its folder. Errors are FastAPI's ``{"detail"}``, as that server's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Controller, Router, post
from litestar.exceptions import HTTPException, NotFoundException
from msgspec import Meta

from trt_async.backends.modelfiles import ModelDirError, read_image_text_manifest
from trt_async.core.config import ConfigError, ModelConfig, ModelKind, model_name_problem
from trt_async.core.errors import Conflict, Forbidden, InvalidInput, InvalidPath, Part
from trt_async.core.registry import ModelRegistry
from trt_async.core.requests import (
    Embeddings,
    EmbedRequest,
    ImageTextEmbeddings,
    ImageTextEmbedRequest,
)
from trt_async.http.auth import ADMIN_OPT
from trt_async.http.common import JsonBody, RegistryDep, error_responses
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.routes import Call, Translation, inference_route, vector_rows

ModelName = Annotated[
    str,
    Meta(
        description="The model's name (`intfloat/e5-small-v2`, or open_clip's `ViT-B-32`).",
        max_length=256,
    ),
]
Pretrained = (
    Annotated[
        str,
        Meta(
            description="CLIP models: open_clip's pretrained tag (`laion2b_s34b_b79k`).",
            max_length=256,
        ),
    ]
    | None
)


def served_name(model_name: str, pretrained: str | None) -> str:
    """The served model ``model_name`` (and ``pretrained``) stand for."""
    name = model_name.replace("/", "_")
    return f"{name}_{pretrained}" if pretrained else name


def _label(model_name: str, pretrained: str | None) -> str:
    return f"{model_name} ({pretrained})" if pretrained else model_name


# -- /infer ----------------------------------------------------------------------------------


class TextImageInferRequest(msgspec.Struct, kw_only=True):
    """Embed texts and images with one model."""

    model_name: ModelName
    pretrained: Pretrained = None
    text: Annotated[list[str] | str, Meta(description="Texts to embed.")] = msgspec.field(
        default_factory=list
    )
    image: Annotated[
        list[str] | str,
        Meta(description="Images to embed: http(s) URLs (when enabled), data: URIs or base64."),
    ] = msgspec.field(default_factory=list)


class TextImageInferResponse(msgspec.Struct):
    """One vector per text and per image, in the order sent; ``processingTimeMs`` is the
    time the server spent on the request."""

    text_embeddings: list[list[float]]
    image_embeddings: list[list[float]]
    processingTimeMs: float


class _WireTextImageInferResponse(msgspec.Struct):
    text_embeddings: list[msgspec.Raw]
    image_embeddings: list[msgspec.Raw]
    processingTimeMs: float


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else value


def _to_request(
    data: TextImageInferRequest, call: Call[TextImageInferRequest]
) -> EmbedRequest | ImageTextEmbedRequest:
    name = served_name(data.model_name, data.pretrained)
    texts, images = _as_list(data.text), _as_list(data.image)
    if not texts and not images:
        raise InvalidInput("send at least one of text and image", field="text")
    if not images:
        return EmbedRequest(inputs=texts, model=name)
    return ImageTextEmbedRequest(texts=texts, images=images, model=name)


def _to_answer(
    result: Embeddings | ImageTextEmbeddings, data: TextImageInferRequest
) -> _WireTextImageInferResponse:
    ms = round(result.timings.total_s * 1000, 2)
    if isinstance(result, Embeddings):
        return _WireTextImageInferResponse(vector_rows(result.vectors), [], ms)
    return _WireTextImageInferResponse(vector_rows(result.texts), vector_rows(result.images), ms)


# -- model management ------------------------------------------------------------------------


class LoadSentenceTransformer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Serve the exported folder ``<root>/<model_name>`` of ``server.model_roots``."""

    model_name: ModelName


class ClipModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A CLIP model (``<root>/<model_name>/<pretrained>``), or a sentence-transformers
    model by ``model_name`` alone."""

    model_name: ModelName
    pretrained: Pretrained = None


class Message(msgspec.Struct):
    message: str


#: One folder name of a model's path under a root (no '..', no separators).
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def folder_parts(model_name: str, pretrained: str | None) -> list[str]:
    """The folder names ``model_name`` and ``pretrained`` make, each checked to be a plain
    name (no ``..``, no separator of its own)."""
    parts = [*model_name.split("/"), *([pretrained] if pretrained else [])]
    bad = next((p for p in parts if not _COMPONENT.fullmatch(p) or ".." in p), None)
    if bad is not None:
        raise InvalidPath(
            f"{bad!r} cannot name a folder: model_name and pretrained are folder names "
            "(letters, digits, '.', '_', '+', '-'; model_name may hold one '/' per level)",
            field="model_name",
        )
    return parts


def model_folder(roots: list[str], model_name: str, pretrained: str | None) -> Path:
    """The folder ``<root>/<model_name>[/<pretrained>]`` under the first of ``roots`` that
    has it, resolved (links followed) and checked to stay inside that root."""
    if not roots:
        raise Forbidden(
            "loading models at run time is disabled; list allowed folders in server.model_roots",
            field="model_name",
        )
    relative = Path(*folder_parts(model_name, pretrained))
    for root in roots:
        candidate = Path(root, relative)
        if candidate.is_dir():
            real = Path(os.path.realpath(candidate))
            if not real.is_relative_to(os.path.realpath(root)):
                raise Forbidden(f"{relative} leads outside server.model_roots", field="model_name")
            return real
    raise NotFoundException(
        f"no folder {relative} under server.model_roots ({', '.join(roots)}); export the "
        f"model there with trt-async export ... -o <root>/{relative}"
    )


async def _load(
    registry: ModelRegistry, model_name: str, pretrained: str | None, *, clip: bool
) -> Message:
    folder_parts(model_name, pretrained)
    name = served_name(model_name, pretrained)
    label = _label(model_name, pretrained)
    problem = model_name_problem(name)
    if problem is not None:
        raise InvalidInput(problem, field="model_name")
    loaded = Message(f"Model {label} is already loaded.")
    if any(m.name == name for m in registry):
        return loaded
    folder = model_folder(registry.config.server.model_roots, model_name, pretrained)
    try:
        if clip and read_image_text_manifest(folder) is None:
            raise HTTPException(
                f"{folder} is not a CLIP or SigLIP export (no image-text trt_async.json); "
                "load it with /load_sentence_transformer_model, or export the checkpoint "
                "with trt-async export",
                status_code=400,
            )
        await registry.load(name, ModelKind.EMBEDDING, ModelConfig(model_path=str(folder)))
    except Conflict:  # loaded by a request that raced this one
        return loaded
    except ModelDirError as exc:
        raise HTTPException(str(exc), status_code=400) from None
    except ConfigError as exc:
        raise InvalidInput(str(exc), field="model_name") from None
    except OSError as exc:
        raise InvalidPath(f"the model's folder cannot be read: {exc.strerror}") from None
    return Message(f"Model {label} loaded.")


class TritonWrapperManagement(Controller):
    """Load, unload and delete models by name (the admin key, as ``/models/load``)."""

    path = "/"
    tags = ["management"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.DETAIL)
    opt = {ADMIN_OPT: True}  # noqa: RUF012

    @post(
        "/load_sentence_transformer_model",
        status_code=200,
        summary="Serve <root>/<model_name> of server.model_roots (admin key)",
        responses=error_responses(Dialect.DETAIL, 400, 401, 403, 404, 422, 503),
    )
    async def load_sentence_transformer_model(
        self, registry: RegistryDep, data: JsonBody[LoadSentenceTransformer]
    ) -> Message:
        return await _load(registry, data.model_name, None, clip=False)

    @post(
        "/load_clip_model",
        status_code=200,
        summary="Serve the CLIP export <root>/<model_name>/<pretrained> (admin key)",
        responses=error_responses(Dialect.DETAIL, 400, 401, 403, 404, 422, 503),
    )
    async def load_clip_model(self, registry: RegistryDep, data: JsonBody[ClipModel]) -> Message:
        return await _load(registry, data.model_name, data.pretrained, clip=True)

    @post(
        "/unload_model",
        status_code=200,
        summary="Stop serving a model once its queue has drained (admin key)",
        responses=error_responses(Dialect.DETAIL, 401, 403, 404, 422),
    )
    async def unload_model(self, registry: RegistryDep, data: JsonBody[ClipModel]) -> Message:
        await registry.unload(served_name(data.model_name, data.pretrained))
        return Message(f"Model {_label(data.model_name, data.pretrained)} unloaded.")

    @post(
        "/delete_model",
        status_code=200,
        summary="Unload a model; its folder under server.model_roots is kept (admin key)",
        responses=error_responses(Dialect.DETAIL, 401, 403, 404, 422),
    )
    async def delete_model(self, registry: RegistryDep, data: JsonBody[ClipModel]) -> Message:
        await registry.unload(served_name(data.model_name, data.pretrained))
        return Message(
            f"Model {_label(data.model_name, data.pretrained)} deleted from the server; its "
            "folder under server.model_roots is kept (the server never deletes files)."
        )


def router() -> Router:
    """``POST /infer``, answering errors in FastAPI's ``{"detail"}`` shape."""
    infer = inference_route(
        "/infer",
        body=TextImageInferRequest,
        translation=Translation(
            _to_request,
            _to_answer,
            field_names={Part.INPUTS: "text", Part.IMAGES: "image", Part.MODEL: "model_name"},
        ),
        dialect=Dialect.DETAIL,
        answers=TextImageInferResponse,
        summary="Embed texts and images with a model named by model_name and pretrained",
    )
    return Router(
        "/",
        route_handlers=[infer],
        tags=["seed"],
        exception_handlers=dialect_handlers(Dialect.DETAIL),
    )
