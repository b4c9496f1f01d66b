"""OpenAI's embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models``.

``encoding_format="base64"`` (what the official SDK sends by default) is little-endian
float32. A body with an extra ``query`` field is the seed's rerank route: ``data[i]`` then
carries the score of document ``i`` as a one-element embedding.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import msgspec
import numpy as np
from litestar import Controller, Response, get, post
from litestar.params import FromPath
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput, WrongModelKind
from trt_async.core.tasks import ServedModel
from trt_async.http.common import (
    JsonBody,
    ModelsDep,
    RegistryDep,
    Truncate,
    error_responses,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers

#: A text, a list of texts, one token-id list, or a list of token-id lists. msgspec allows a
#: single array type in a union, so lists are checked for consistency after decoding.
EmbeddingInput = str | list[str | int | list[int]]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """OpenAI's embeddings request."""

    input: Annotated[
        EmbeddingInput,
        Meta(
            description="A text, a list of texts, or token ids made by this model's own "
            "tokenizer (one list, or a list of lists)."
        ),
    ]
    model: Annotated[str, Meta(description="A served model's name (`GET /v1/models`).")]
    encoding_format: Annotated[
        Literal["float", "base64"],
        Meta(description="`base64`: each vector as little-endian float32 bytes."),
    ] = "float"
    dimensions: (
        Annotated[
            int,
            Meta(ge=1, description="Keep the first n components and re-normalise (Matryoshka)."),
        ]
        | None
    ) = None
    user: Annotated[str | None, Meta(description="Accepted and ignored.")] = None
    query: Annotated[
        str | None,
        Meta(
            description="The seed server's rerank route: score each `input` document against "
            "this query; `data[i].embedding` is then `[score]`. Leave it out to embed."
        ),
    ] = None
    truncate: Truncate = None


class Embedding(msgspec.Struct):
    """One vector (or, for the rerank route, one score) and the index of its input."""

    embedding: list[float] | str
    index: int
    object: str = "embedding"


class Usage(msgspec.Struct):
    """Tokens the model ran, special tokens included."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(msgspec.Struct):
    """OpenAI's embeddings answer: one entry per input, in input order."""

    data: list[Embedding]
    model: str
    usage: Usage
    object: str = "list"


class ModelCard(msgspec.Struct):
    """A served model as OpenAI lists it; ``created`` is when it was loaded."""

    id: str
    created: int
    owned_by: str = "trt_async"
    object: str = "model"


class ModelList(msgspec.Struct):
    """Every served model, in load order."""

    data: list[ModelCard]
    object: str = "list"


def split_input(value: EmbeddingInput, field: str = "input") -> list[str] | list[list[int]]:
    """Texts or token-id lists; mixing them is refused, as OpenAI does."""
    if isinstance(value, str):
        return [value]
    if not value:
        return []
    if all(isinstance(x, str) for x in value):
        return [x for x in value if isinstance(x, str)]
    if all(isinstance(x, int) for x in value):
        return [[x for x in value if isinstance(x, int)]]
    if all(isinstance(x, list) for x in value):
        return [x for x in value if isinstance(x, list)]
    raise InvalidInput(
        "input must be a string, a list of strings, a list of token ids or a list of "
        "token-id lists; this list mixes them",
        field=field,
    )


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[list[float] | str]:
    """Rows as float lists (one ``tolist`` for the whole matrix) or base64 little-endian f32."""
    if encoding_format == "base64":
        rows = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    out: list[list[float] | str] = vectors.tolist()
    return out


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.OPENAI)

    @post(
        "/embeddings",
        status_code=200,
        summary="Create embeddings (OpenAI)",
        description=(
            "Embeddings of `input` with the named model. With an extra `query` field, each "
            "`data[i].embedding` is instead `[score]` of document `input[i]` (the seed's "
            "rerank route)."
        ),
        responses=error_responses(Dialect.OPENAI),
    )
    async def embeddings(
        self, models: ModelsDep, data: JsonBody[EmbeddingRequest]
    ) -> Response[EmbeddingResponse]:
        model = models.get(data.model)
        inputs = split_input(data.input)
        models.check_batch(len(inputs))
        if data.query is not None or model.kind is ModelKind.RERANKER:
            return await self._rerank(model, data, inputs)
        if model.kind is ModelKind.NLI:
            raise WrongModelKind(
                model.name, model.kind.value, "use /infer/{model}, /predict or /v1/zero-shot"
            )
        result = await model.embed(inputs, dimensions=data.dimensions, truncate=data.truncate)
        fmt = data.encoding_format
        body = EmbeddingResponse(
            data=[Embedding(v, i) for i, v in enumerate(encode_vectors(result.vectors, fmt))],
            model=model.name,
            usage=Usage(result.tokens, result.tokens),
        )
        return Response(body, headers=timing_headers(result.timings, result.tokens))

    async def _rerank(
        self,
        model: ServedModel,
        data: EmbeddingRequest,
        inputs: list[str] | list[list[int]],
    ) -> Response[EmbeddingResponse]:
        if data.query is None:
            raise InvalidInput(
                f"model {model.name!r} is a reranker: send the query in a `query` field "
                "and the documents as `input`",
                field="query",
            )
        documents = [x for x in inputs if isinstance(x, str)]
        if len(documents) != len(inputs):
            raise InvalidInput("reranking takes documents as text, not token ids", field="input")
        if model.kind is ModelKind.NLI:
            raise WrongModelKind(model.name, model.kind.value, "it cannot rerank")
        # Raw logits, as the seed answers; an embedder gives cosine similarities.
        result = await model.rerank(data.query, documents, raw_scores=True, truncate=data.truncate)
        scores = result.scores.astype(np.float32).reshape(-1, 1)
        fmt = data.encoding_format
        body = EmbeddingResponse(
            data=[Embedding(s, i) for i, s in enumerate(encode_vectors(scores, fmt))],
            model=model.name,
            usage=Usage(result.tokens, result.tokens),
        )
        return Response(body, headers=timing_headers(result.timings, result.tokens))

    @get("/models", summary="List served models (OpenAI)")
    async def list_models(self, registry: RegistryDep) -> ModelList:
        return ModelList([ModelCard(m.name, m.created) for m in registry])

    @get(
        "/models/{model_id:str}",
        summary="Describe one served model (OpenAI)",
        responses=error_responses(Dialect.OPENAI, 404),
    )
    async def get_model(self, registry: RegistryDep, model_id: FromPath[str]) -> ModelCard:
        model = registry.get(model_id)
        return ModelCard(model.name, model.created)
