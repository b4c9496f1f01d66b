"""The one entry every API dialect calls: a request struct in, a result struct out.

:class:`Inference` does, once for every route, what each handler used to repeat: find the
model (the one named, else the task's default), check that it can do the task (its
:class:`~trt_async.core.capabilities.Capabilities`), check the request's size against the
server's limit, run it, and finish the result (activations, rankings, cosine similarities,
quantised copies) so that a dialect only encodes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar, overload

import numpy as np

from trt_async.core import heads, image_text
from trt_async.core.config import ModelKind, ServerConfig
from trt_async.core.errors import (
    EmptyInput,
    ModelNotFound,
    Part,
    TooManyInputs,
)
from trt_async.core.image_inputs import ImageFetcher
from trt_async.core.inference_stats import InferenceStats, Tower
from trt_async.core.multivector import SparseVector
from trt_async.core.registry import ModelRegistry
from trt_async.core.requests import (
    Classification,
    ClassifyRequest,
    Embeddings,
    EmbedRequest,
    ImageTextEmbeddings,
    ImageTextEmbedRequest,
    ImageZeroShotRequest,
    Ranking,
    Request,
    RerankRequest,
    Result,
    Similarities,
    SimilarityRequest,
    TokenizeRequest,
    Tokens,
    ZeroShotRequest,
    ZeroShotScores,
)
from trt_async.core.tasks import Prompt, ServedModel

T = TypeVar("T")

#: The roles whose first model serves a request that names none, in order of preference.
DEFAULT_ROLES: dict[type[Request], tuple[ModelKind, ...]] = {
    EmbedRequest: (ModelKind.EMBEDDING,),
    RerankRequest: (ModelKind.RERANKER, ModelKind.EMBEDDING),
    ClassifyRequest: (ModelKind.NLI, ModelKind.RERANKER),
    ZeroShotRequest: (ModelKind.NLI,),
    SimilarityRequest: (ModelKind.EMBEDDING,),
    TokenizeRequest: (ModelKind.EMBEDDING, ModelKind.RERANKER, ModelKind.NLI),
    # Requests with images default to the first model with an image tower instead.
    ImageTextEmbedRequest: (ModelKind.EMBEDDING,),
    ImageZeroShotRequest: (ModelKind.EMBEDDING,),
}


def best_first(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Indices of ``scores`` from the highest, ties in input order, cut to ``top_n``."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]


class Inference:
    """Runs requests against the served models of a registry.

    ``fetcher`` fetches the image URLs of requests (None: URLs are refused); ``stats``
    counts each model's requests in Triton's shape.
    """

    __slots__ = ("fetcher", "registry", "stats")

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        fetcher: ImageFetcher | None = None,
        stats: InferenceStats | None = None,
    ) -> None:
        self.registry = registry
        self.fetcher = fetcher
        self.stats = stats if stats is not None else InferenceStats()

    @property
    def server(self) -> ServerConfig:
        return self.registry.config.server

    # -- the model --------------------------------------------------------------------------

    def model(self, request: Request) -> ServedModel:
        """The model ``request`` names, else its task's default, checked to be able to do
        the task."""
        if isinstance(request, ImageTextEmbedRequest | ImageZeroShotRequest):
            return self._image_model(request)
        model = self.lookup(request.model, DEFAULT_ROLES[type(request)])
        caps, name = model.capabilities, model.name
        if isinstance(request, EmbedRequest):
            caps.require_embeds(name)
            for head in sorted(request.heads):
                caps.require_head(name, head)
        elif isinstance(request, RerankRequest):
            caps.require_reranks(name)
            if request.instruction is not None:
                caps.require_instruction(name)
        elif isinstance(request, ClassifyRequest):
            caps.require_classifies(name)
        elif isinstance(request, ZeroShotRequest):
            caps.require_zero_shot(name)
        elif isinstance(request, SimilarityRequest):
            caps.require_embeds(name)
        return model

    def lookup(self, name: str | None, roles: Sequence[ModelKind] = ()) -> ServedModel:
        """The model called ``name``, or the first model of the first of ``roles`` that has
        one."""
        if name:
            return self.registry.get(name)
        by_role = self.registry.names_by_kind()
        for role in roles:
            if by_role[role]:
                return self.registry.get(by_role[role][0])
        wanted = " or ".join(role.value for role in roles) or "any"
        raise ModelNotFound(f"<default {wanted} model>", (m.name for m in self.registry))

    def _image_model(self, request: ImageTextEmbedRequest | ImageZeroShotRequest) -> ServedModel:
        """The model named, else the first with an image tower; checked to take images (or,
        for texts alone, to embed)."""
        if request.model:
            model = self.registry.get(request.model)
        else:
            found = next((m for m in self.registry if m.capabilities.embeds_images), None)
            if found is None:
                raise ModelNotFound("<default image-text model>", (m.name for m in self.registry))
            model = found
        if isinstance(request, ImageTextEmbedRequest) and not request.images:
            model.capabilities.require_embeds(model.name)
        else:
            model.capabilities.require_embeds_images(model.name)
        return model

    def check_items(self, count: int, part: Part = Part.INPUTS) -> None:
        """Refuse a request of more items than the server takes in one request."""
        limit = self.server.max_client_batch_size
        if count > limit:
            raise TooManyInputs(count, limit, part=part)

    # -- running ----------------------------------------------------------------------------

    @overload
    async def run(self, model: ServedModel, request: EmbedRequest) -> Embeddings: ...
    @overload
    async def run(self, model: ServedModel, request: RerankRequest) -> Ranking: ...
    @overload
    async def run(self, model: ServedModel, request: ClassifyRequest) -> Classification: ...
    @overload
    async def run(self, model: ServedModel, request: ZeroShotRequest) -> ZeroShotScores: ...
    @overload
    async def run(self, model: ServedModel, request: SimilarityRequest) -> Similarities: ...
    @overload
    async def run(self, model: ServedModel, request: TokenizeRequest) -> Tokens: ...
    @overload
    async def run(
        self, model: ServedModel, request: ImageTextEmbedRequest
    ) -> ImageTextEmbeddings: ...
    @overload
    async def run(self, model: ServedModel, request: ImageZeroShotRequest) -> ZeroShotScores: ...
    @overload
    async def run(self, model: ServedModel, request: Request) -> Result: ...

    async def run(self, model: ServedModel, request: Request) -> Result:
        """``request`` on ``model`` (as :meth:`model` returned it), counted in
        :attr:`stats`."""
        start = time.perf_counter()
        try:
            result = await self._run(model, request)
        except Exception:
            tower: Tower = (
                "image"
                if isinstance(request, ImageZeroShotRequest)
                or (isinstance(request, ImageTextEmbedRequest) and request.images)
                else "text"
            )
            self.stats.failed(model.name, tower, time.perf_counter() - start)
            raise
        # Requests with images count each tower's part themselves.
        if not isinstance(result, Tokens) and not isinstance(
            request, ImageTextEmbedRequest | ImageZeroShotRequest
        ):
            self.stats.answered(model.name, "text", result.timings)
        return result

    async def _run(self, model: ServedModel, request: Request) -> Result:
        if isinstance(request, ImageTextEmbedRequest):
            return await self._image_text_embed(model, request)
        if isinstance(request, ImageZeroShotRequest):
            return await self._image_zero_shot(model, request)
        if isinstance(request, EmbedRequest):
            return await self._embed(model, request)
        if isinstance(request, RerankRequest):
            return await self._rerank(model, request)
        if isinstance(request, ClassifyRequest):
            return await self._classify(model, request)
        if isinstance(request, ZeroShotRequest):
            return await self._zero_shot(model, request)
        if isinstance(request, SimilarityRequest):
            return await self._similarity(model, request)
        return await self._tokenize(model, request)

    async def _embed(self, model: ServedModel, request: EmbedRequest) -> Embeddings:
        self.check_items(len(request.inputs))
        prompt = Prompt(
            model.capabilities.prompt(
                model.name,
                prompt_name=request.prompt_name,
                prompt=request.prompt,
                input_type=request.input_type,
            ),
            asked=request.prompt is not None or request.prompt_name is not None,
            part=Part.PROMPT if request.prompt is not None else Part.PROMPT_NAME,
        )
        inputs = request.inputs
        if request.max_tokens is not None:
            texts = [x for x in inputs if isinstance(x, str)]
            if len(texts) == len(inputs):
                inputs = await model.clip(texts, request.max_tokens)
        result = await model.embed(
            inputs,
            normalize=request.normalize,
            dimensions=request.dimensions,
            truncate=request.truncate,
            direction=request.direction,
            heads=request.heads,
            prompt=prompt,
        )
        quantized = {
            kind: await model.quantize(
                result.vectors, kind, normalize=request.normalize, dimensions=request.dimensions
            )
            for kind in request.quantized
        }
        found = result.heads
        sparse = _typed(found.get("sparse"), SparseVector)
        sparse_tokens = None
        if sparse is not None and request.sparse_tokens:
            strings = model.runtime.tokenizer.token_strings
            sparse_tokens = [strings(vector.ids.tolist()) for vector in sparse]
        return Embeddings(
            model.name,
            result.vectors,
            result.tokens,
            result.timings,
            sparse=sparse,
            sparse_tokens=sparse_tokens,
            colbert=_typed(found.get("colbert"), np.ndarray),
            token_vectors=_typed(found.get("tokens"), np.ndarray),
            quantized=quantized,
        )

    async def _rerank(self, model: ServedModel, request: RerankRequest) -> Ranking:
        self.check_items(len(request.documents), Part.DOCUMENTS)
        result = await model.rerank(
            request.query,
            request.documents,
            raw_scores=request.raw_scores,
            truncate=request.truncate,
            max_tokens_per_doc=request.max_tokens_per_doc,
            instruction=request.instruction,
        )
        order = best_first(result.scores, request.top_n)
        return Ranking(model.name, result.scores, order, result.tokens, result.timings)

    async def _classify(self, model: ServedModel, request: ClassifyRequest) -> Classification:
        self.check_items(len(request.inputs), request.part)
        if not request.inputs:
            raise EmptyInput(request.part)
        result = await model.classify(
            request.inputs, truncate=request.truncate, direction=request.direction
        )
        logits = result.logits.astype(np.float64)
        activation = request.activation
        if activation == "auto":
            activation = "sigmoid" if logits.shape[-1] == 1 else "softmax"
        if activation == "sigmoid":
            scores = heads.sigmoid(logits)
        elif activation == "softmax":
            scores = heads.softmax(logits)
        else:
            scores = logits
        return Classification(
            model.name, result.logits, scores, result.labels, result.tokens, result.timings
        )

    async def _zero_shot(self, model: ServedModel, request: ZeroShotRequest) -> ZeroShotScores:
        self.check_items(len(request.texts) * max(1, len(request.labels)), Part.TEXTS)
        if not request.texts:
            raise EmptyInput(Part.TEXTS)
        result = await model.zero_shot(
            request.texts,
            request.labels,
            hypothesis_template=request.template,
            multi_label=request.multi_label,
            truncate=request.truncate,
        )
        order = [best_first(row) for row in result.scores]
        return ZeroShotScores(model.name, result.scores, order, result.tokens, result.timings)

    async def _similarity(self, model: ServedModel, request: SimilarityRequest) -> Similarities:
        texts = [request.source, *request.sentences]
        self.check_items(len(texts))
        # Both sides as an embedding request that names no prompt: the model's default.
        default = Prompt(model.capabilities.prompt(model.name))
        result = await model.embed(texts, normalize=True, prompt=default)
        vectors = result.vectors.astype(np.float64)
        scores = vectors[1:] @ vectors[0]
        return Similarities(model.name, scores, result.tokens, result.timings)

    async def _image_text_embed(
        self, model: ServedModel, request: ImageTextEmbedRequest
    ) -> ImageTextEmbeddings:
        self.check_items(len(request.texts) + len(request.images))
        start = time.perf_counter()
        (
            texts,
            images,
            tokens,
            text_timings,
            image_timings,
        ) = await image_text.embed_texts_and_images(
            model,
            request.texts,
            request.images,
            self.fetcher,
            text_positions=request.text_positions,
            image_positions=request.image_positions,
            normalize=request.normalize,
            dimensions=request.dimensions,
            truncate=request.truncate,
        )
        if request.texts:
            self.stats.answered(model.name, "text", text_timings)
        if request.images:
            self.stats.answered(model.name, "image", image_timings)
        timings = image_text.merged_timings(
            text_timings, image_timings, total_s=time.perf_counter() - start
        )
        return ImageTextEmbeddings(
            model.name,
            texts,
            images,
            tokens,
            timings,
            text_positions=request.text_positions,
            image_positions=request.image_positions,
        )

    async def _image_zero_shot(
        self, model: ServedModel, request: ImageZeroShotRequest
    ) -> ZeroShotScores:
        self.check_items(len(request.images), Part.IMAGES)
        self.check_items(len(request.labels), Part.LABELS)
        start = time.perf_counter()
        scores, tokens, text_timings, image_timings = await image_text.zero_shot_images(
            model, request.images, request.labels, self.fetcher, template=request.template
        )
        self.stats.answered(model.name, "text", text_timings)
        self.stats.answered(model.name, "image", image_timings)
        timings = image_text.merged_timings(
            text_timings, image_timings, total_s=time.perf_counter() - start
        )
        order = [best_first(row) for row in scores]
        return ZeroShotScores(model.name, scores, order, tokens, timings)

    async def _tokenize(self, model: ServedModel, request: TokenizeRequest) -> Tokens:
        self.check_items(len(request.texts))
        # What the model reads: with the prompt /embed would put before the texts.
        prompt = model.capabilities.prompt(model.name, prompt_name=request.prompt_name)
        rows = await model.tokenize(
            request.texts, add_special_tokens=request.add_special_tokens, prompt=prompt
        )
        return Tokens(model.name, rows)


def _typed(values: list[object] | None, kind: type[T]) -> list[T] | None:
    """A head's per-item values as the type its reducer makes (checked, not cast)."""
    if values is None:
        return None
    out = [v for v in values if isinstance(v, kind)]
    if len(out) != len(values):
        raise TypeError(f"a head gave values that are not {kind.__name__}")
    return out
