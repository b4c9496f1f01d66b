"""OpenAI's embeddings API: ``POST /v1/embeddings`` and ``GET /v1/models``.

``encoding_format="base64"`` (what the official SDK sends by default) is little-endian
float32. A body with an extra ``query`` field, or one naming a reranker, is the seed's rerank
route: ``data[i]`` then carries the raw score of document ``i`` as a one-element embedding.
Extra body fields (the SDK's ``extra_body``) take an embedding prompt (``prompt_name``, as
TEI names it, or ``prompt``) and, for the rerank form, an LLM reranker's ``instruction``.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal, cast

import msgspec
import numpy as np
from litestar import Router, get
from litestar.params import FromPath
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput, Part
from trt_async.core.requests import (
    Embeddings,
    EmbedRequest,
    ImageTextEmbeddings,
    ImageTextEmbedRequest,
    Ranking,
    RerankRequest,
)
from trt_async.core.templates import NotTakenBy
from trt_async.http.common import (
    Instruction,
    PromptName,
    PromptText,
    RegistryDep,
    Truncate,
    error_responses,
)
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.image_requests import (
    ChatMessage,
    InputObject,
    Items,
    image_list,
    jina_items,
    message_items,
)
from trt_async.http.routes import Call, Translation, inference_route, vector_rows

#: A text, a list of texts, one token-id list, or a list of token-id lists. msgspec allows a
#: single array type in a union, so lists are checked for consistency after decoding.
EmbeddingInput = str | list[str | int | list[int]]
#: OpenAI's route also takes Jina's image objects among the texts (see image_requests).
OpenAIInput = str | list[str | int | list[int] | InputObject]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """OpenAI's embeddings request."""

    input: Annotated[
        OpenAIInput | None,
        Meta(
            description="A text, a list of texts, or token ids made by this model's own "
            "tokenizer (one list, or a list of lists). Image-text models (CLIP, SigLIP) also "
            'take `{"text": ...}` and `{"image": ...}` objects (Jina), or images with '
            "`modality: image` (infinity). Required unless `messages` is sent."
        ),
    ] = None
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
    prompt_name: PromptName = None
    prompt: PromptText = None
    instruction: Instruction = None
    modality: Annotated[
        Literal["text", "image"],
        Meta(description="infinity's switch: `image` makes every `input` an image."),
    ] = "text"
    messages: Annotated[
        list[ChatMessage] | None,
        Meta(
            description="vLLM's chat form instead of `input`: one text or image_url part, "
            "embedded as one vector."
        ),
    ] = None


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


class _WireEmbedding(msgspec.Struct):
    """:class:`Embedding` as written: the vector already JSON (see ``vector_rows``)."""

    embedding: msgspec.Raw
    index: int
    object: str = "embedding"


class _WireResponse(msgspec.Struct):
    data: list[_WireEmbedding]
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


def split_input(value: EmbeddingInput) -> list[str] | list[list[int]]:
    """Texts or token-id lists; mixing them is refused, as OpenAI does."""
    if isinstance(value, str):
        return [value]
    if not value:
        return []
    # The items' types in one pass in C; the list itself is passed on as it is.
    kinds = {type(x) for x in value}
    if kinds == {str}:
        return cast("list[str]", value)
    if kinds == {int}:
        return [cast("list[int]", value)]
    if kinds == {list}:
        return cast("list[list[int]]", value)
    raise InvalidInput(
        "input must be a string, a list of strings, a list of token ids or a list of "
        "token-id lists; this list mixes them",
        field="input",
    )


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[msgspec.Raw]:
    """Each row as JSON: an array of floats, or a base64 string of its little-endian float32
    bytes."""
    if encoding_format == "base64":
        rows = vectors.astype("<f4", copy=False)
        return [msgspec.Raw(b'"' + base64.b64encode(row.tobytes()) + b'"') for row in rows]
    return vector_rows(vectors)


def embedding_answer(
    rows: np.ndarray, model: str, tokens: int, encoding_format: str
) -> _WireResponse:
    encoded = encode_vectors(rows, encoding_format)
    return _WireResponse(
        data=[_WireEmbedding(row, i) for i, row in enumerate(encoded)],
        model=model,
        usage=Usage(tokens, tokens),
    )


def _to_request(
    data: EmbeddingRequest, call: Call[EmbeddingRequest]
) -> EmbedRequest | RerankRequest | ImageTextEmbedRequest:
    items = _image_items(data)
    inputs: list[str] | list[list[int]] = []
    if items is None:
        if data.input is None:
            raise InvalidInput("send `input` (or vLLM's `messages`)", field="input")
        try:
            inputs = split_input(cast("EmbeddingInput", data.input))
        except InvalidInput:
            if not isinstance(data.input, list) or not any(
                isinstance(x, InputObject) for x in data.input
            ):
                raise
            # Jina's image objects among the texts.
            items = jina_items(data.input)
    if items is not None:
        if data.query is not None:
            raise InvalidInput("rerank (`query`) takes texts as `input`", field="query")
        if data.instruction is not None:
            raise NotTakenBy(Part.INSTRUCTION, "embedding", "reranking (send a `query`)")
        return items.request(
            data.model,
            dimensions=data.dimensions,
            truncate=data.truncate,
            prompt_name=data.prompt_name,
            prompt=data.prompt,
        )
    model = call.inference.lookup(data.model)
    if data.query is None and model.capabilities.role is not ModelKind.RERANKER:
        if data.instruction is not None:
            raise NotTakenBy(Part.INSTRUCTION, "embedding", "reranking (send a `query`)")
        return EmbedRequest(
            inputs=inputs,
            model=data.model,
            dimensions=data.dimensions,
            truncate=data.truncate,
            prompt_name=data.prompt_name,
            prompt=data.prompt,
        )
    if data.query is None:
        raise InvalidInput(
            f"model {model.name!r} is a reranker: send the query in a `query` field "
            "and the documents as `input`",
            field="query",
        )
    refuse_prompts(data.prompt_name, data.prompt, "reranking")
    documents = [x for x in inputs if isinstance(x, str)]
    if len(documents) != len(inputs):
        raise InvalidInput("reranking takes documents as text, not token ids", field="input")
    # Raw logits, as the seed answers; an embedder gives cosine similarities.
    return RerankRequest(
        query=data.query,
        documents=documents,
        model=data.model,
        raw_scores=True,
        truncate=data.truncate,
        instruction=data.instruction,
    )


def _image_items(data: EmbeddingRequest) -> Items | None:
    """The body's items when it holds images or messages (infinity's modality, vLLM's
    messages); None for texts and token ids (Jina's objects are found when the plain
    forms do not decode, see ``_to_request``)."""
    if data.messages is not None:
        if data.input is not None:
            raise InvalidInput("send `input` or `messages`, not both", field="messages")
        return message_items(data.messages)
    if data.modality == "image" and data.input is not None:
        return image_list(data.input, "input")
    return None


def refuse_prompts(prompt_name: str | None, prompt: str | None, task: str) -> None:
    """Refuse an embedding prompt on a request that embeds nothing."""
    if prompt_name is not None or prompt is not None:
        part = Part.PROMPT_NAME if prompt_name is not None else Part.PROMPT
        raise NotTakenBy(part, task, "embedding (leave out `query`)")


def _to_answer(
    result: Embeddings | Ranking | ImageTextEmbeddings, data: EmbeddingRequest
) -> _WireResponse:
    if isinstance(result, Ranking):
        rows = result.scores.astype(np.float32).reshape(-1, 1)
    elif isinstance(result, ImageTextEmbeddings):
        rows = result.in_order()
    else:
        rows = result.vectors
    return embedding_answer(rows, result.model, result.tokens, data.encoding_format)


@get("/v1/models", summary="List served models (OpenAI)")
async def list_models(registry: RegistryDep) -> ModelList:
    return ModelList([ModelCard(m.name, m.created) for m in registry])


@get(
    "/v1/models/{model_id:str}",
    summary="Describe one served model (OpenAI)",
    responses=error_responses(Dialect.OPENAI, 404),
)
async def get_model(registry: RegistryDep, model_id: FromPath[str]) -> ModelCard:
    model = registry.get(model_id)
    return ModelCard(model.name, model.created)


def router() -> Router:
    """OpenAI's routes, answering errors in OpenAI's shape."""
    embeddings = inference_route(
        # Without /v1 as well: infinity's and TEI's path for the same route.
        ["/v1/embeddings", "/embeddings"],
        body=EmbeddingRequest,
        translation=Translation(_to_request, _to_answer, field_names={Part.IMAGES: "input"}),
        dialect=Dialect.OPENAI,
        answers=EmbeddingResponse,
        summary="Create embeddings (OpenAI)",
        description=(
            "Embeddings of `input` with the named model. With an extra `query` field, each "
            "`data[i].embedding` is instead `[score]` of document `input[i]` (the seed's "
            "rerank route)."
        ),
    )
    return Router(
        "/",
        route_handlers=[embeddings, list_models, get_model],
        tags=["openai"],
        exception_handlers=dialect_handlers(Dialect.OPENAI),
    )
