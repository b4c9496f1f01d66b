"""Rerank in Cohere/Jina's dialect (``/v1/rerank``, ``/rerank``, Cohere v2 ``/v2/rerank``)
and TEI's (``/rerank`` with ``texts``: a bare array).

Results are sorted by score, highest first, and cut to ``top_n``. A cross-encoder's score
is the sigmoid of its logit (unless ``raw_scores``); an embedding model scores the cosine
of query and document vectors.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
import numpy as np
from litestar import Controller, Response, post
from msgspec import UNSET, Meta, UnsetType

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.tasks import ScoreResult
from trt_async.http.common import (
    DirectionName,
    JsonBody,
    Models,
    ModelsDep,
    Truncate,
    error_responses,
    require_kind,
    timing_headers,
)
from trt_async.http.errors import RERANK_HANDLERS, Dialect, dialect_handlers
from trt_async.http.strict import check_rerank_body

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
ModelField = Annotated[
    str | None,
    Meta(description="A served reranker or embedding model (default: the first reranker)."),
]
TopN = Annotated[
    PositiveInt | None, Meta(description="Return only the n best results (default: all).")
]
ReturnDocuments = Annotated[bool, Meta(description="Return each document's text with its score.")]
MaxTokensPerDoc = Annotated[
    PositiveInt | None,
    Meta(description="Cohere v2: cut each document to this many tokens before scoring."),
]
RawScores = Annotated[
    bool,
    Meta(description="Return a cross-encoder's raw logits instead of their sigmoid."),
]
_KINDS = (ModelKind.RERANKER, ModelKind.EMBEDDING)
_HINT = "rerank takes a reranker or an embedding model"


class RerankDocument(msgspec.Struct):
    """A document as Cohere's API writes it."""

    text: str


Query = Annotated[str, Meta(description="The text to rank the documents against.")]
Documents = Annotated[
    list[str | RerankDocument], Meta(description='Texts, or `{"text": ...}` objects.')
]


class _RerankFields(msgspec.Struct, kw_only=True):
    """The fields every rerank body shares (Cohere v1 and v2, Jina, Voyage, TEI)."""

    query: Query
    model: ModelField = None
    top_n: TopN = None
    return_documents: ReturnDocuments = False
    max_tokens_per_doc: MaxTokensPerDoc = None
    raw_scores: RawScores = False
    truncate: Truncate = None


class RerankRequest(_RerankFields, kw_only=True):
    """Cohere/Jina rerank (Voyage's with ``top_k`` or ``truncation``). Results come sorted
    by score, highest first."""

    documents: Documents
    top_k: Annotated[
        PositiveInt | UnsetType | None,
        Meta(
            description="Voyage: return only the k best results. A body with `top_k` or "
            "`truncation` gets Voyage's answer (results under `data`)."
        ),
    ] = UNSET
    truncation: Annotated[
        bool | UnsetType,
        Meta(description="Voyage: truncate over-long pairs (`false` refuses them)."),
    ] = UNSET

    @property
    def voyage(self) -> bool:
        """Whether the body is Voyage's: only its client sends these two fields."""
        return self.top_k is not UNSET or self.truncation is not UNSET


class AnyRerankRequest(_RerankFields, kw_only=True):
    """``/rerank``: Cohere/Jina's body (``documents``) or TEI's (``texts``)."""

    documents: Annotated[
        list[str | RerankDocument] | None,
        Meta(description='Cohere/Jina\'s field: texts or `{"text": ...}` objects.'),
    ] = None
    texts: Annotated[
        list[str] | None, Meta(description="TEI's field; the answer is then TEI's bare array.")
    ] = None
    return_text: Annotated[bool, Meta(description="TEI: return each text with its score.")] = False
    truncation_direction: Annotated[
        DirectionName,
        Meta(description="Accepted for TEI clients; pairs are cut from the document's end."),
    ] = "right"


class RerankUsage(msgspec.Struct):
    """Tokens the model ran, special tokens included."""

    total_tokens: int


class RerankResult(msgspec.Struct, omit_defaults=True):
    """One document's score; ``index`` is its position in the request."""

    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(msgspec.Struct):
    """Cohere v1 / Jina's answer: results sorted by score, highest first."""

    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class ApiVersion(msgspec.Struct):
    version: str


class BilledUnits(msgspec.Struct):
    search_units: int


class RerankMeta(msgspec.Struct):
    api_version: ApiVersion
    billed_units: BilledUnits


class VoyageResult(msgspec.Struct, omit_defaults=True):
    """One document's score in Voyage's answer; ``index`` is its position in the request."""

    relevance_score: float
    index: int
    document: str | None = None


class VoyageRerankResponse(msgspec.Struct):
    """Voyage's rerank answer: results under ``data``, sorted by score, highest first."""

    data: list[VoyageResult]
    model: str
    usage: RerankUsage
    object: str = "list"


class RerankV2Response(msgspec.Struct):
    """Cohere v2's answer: results sorted by score, highest first."""

    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


class TEIRank(msgspec.Struct, omit_defaults=True):
    """TEI's rank entry; the answer is a bare array of them, sorted by score."""

    index: int
    score: float
    text: str | None = None


def _texts(documents: list[str | RerankDocument]) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


def _order(scores: np.ndarray, top_n: int | None) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]


async def _score(
    models: Models,
    model_name: str | None,
    query: str,
    documents: list[str],
    *,
    raw_scores: bool,
    truncate: bool | None,
    route: str,
    max_tokens_per_doc: int | None = None,
) -> tuple[str, ScoreResult]:
    models.check_batch(len(documents), "documents")
    model = models.pick(model_name, _KINDS, route)
    require_kind(model, _KINDS, _HINT)
    result = await model.rerank(
        query,
        documents,
        raw_scores=raw_scores,
        truncate=truncate,
        max_tokens_per_doc=max_tokens_per_doc,
    )
    return model.name, result


def _results(
    scores: np.ndarray, documents: list[str], top_n: int | None, return_documents: bool
) -> list[RerankResult]:
    return [
        RerankResult(
            i, float(scores[i]), RerankDocument(documents[i]) if return_documents else None
        )
        for i in _order(scores, top_n)
    ]


class RerankController(Controller):
    tags = ["rerank"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.RERANK)

    async def _cohere(
        self, models: Models, data: RerankRequest | AnyRerankRequest, route: str
    ) -> tuple[str, ScoreResult, list[RerankResult]]:
        documents = _texts(data.documents or [])
        name, result = await _score(
            models,
            data.model,
            data.query,
            documents,
            raw_scores=data.raw_scores,
            truncate=data.truncate,
            route=route,
            max_tokens_per_doc=data.max_tokens_per_doc,
        )
        return name, result, _results(result.scores, documents, data.top_n, data.return_documents)

    @post(
        "/v1/rerank",
        status_code=200,
        summary="Rerank documents (Cohere v1 / Jina)",
        responses=error_responses(Dialect.RERANK),
    )
    async def rerank_v1(
        self, models: ModelsDep, data: JsonBody[RerankRequest]
    ) -> Response[RerankResponse | VoyageRerankResponse]:
        if data.voyage:
            return await self._voyage(models, data)
        body, headers = await self._cohere_v1(models, data, "/v1/rerank")
        return Response(body, headers=headers)

    async def _voyage(
        self, models: Models, data: RerankRequest
    ) -> Response[RerankResponse | VoyageRerankResponse]:
        if data.truncate is None and isinstance(data.truncation, bool):
            data.truncate = data.truncation
        if isinstance(data.top_k, int):
            data.top_n = data.top_k
        name, result, ranked = await self._cohere(models, data, "/v1/rerank")
        results = [
            VoyageResult(r.relevance_score, r.index, r.document.text if r.document else None)
            for r in ranked
        ]
        body = VoyageRerankResponse(results, name, RerankUsage(result.tokens))
        return Response(body, headers=timing_headers(result.timings, result.tokens))

    @post(
        "/v2/rerank",
        status_code=200,
        summary="Rerank documents (Cohere v2)",
        responses=error_responses(Dialect.RERANK),
    )
    async def rerank_v2(
        self, models: ModelsDep, data: JsonBody[RerankRequest]
    ) -> Response[RerankV2Response]:
        name, result, results = await self._cohere(models, data, "/v2/rerank")
        meta = RerankMeta(ApiVersion("2"), BilledUnits(1))
        body = RerankV2Response(uuid.uuid4().hex, name, results, RerankUsage(result.tokens), meta)
        return Response(body, headers=timing_headers(result.timings, result.tokens))

    @post(
        "/rerank",
        status_code=200,
        summary="Rerank documents (Cohere/Jina with `documents`, TEI with `texts`)",
        description=(
            "With `documents` the answer is Cohere/Jina's object; with `texts` (TEI's "
            "dialect) it is TEI's bare array `[{index, score, text?}]`, sorted by score."
        ),
        responses=error_responses(Dialect.RERANK),
        # The one route whose dialect its body decides: TEI's with `texts`, else Cohere's.
        before_request=check_rerank_body,
        exception_handlers=RERANK_HANDLERS,
    )
    async def rerank_any(
        self, models: ModelsDep, data: JsonBody[AnyRerankRequest]
    ) -> Response[RerankResponse | list[TEIRank]]:
        body: RerankResponse | list[TEIRank]
        if data.texts is not None and data.documents is None:
            body, result = await tei_rerank(models, data)
            return Response(body, headers=timing_headers(result.timings, result.tokens))
        if data.documents is None:
            raise InvalidInput("documents is required", field="documents")
        cohere, headers = await self._cohere_v1(models, data, "/rerank")
        return Response(cohere, headers=headers)

    async def _cohere_v1(
        self, models: Models, data: RerankRequest | AnyRerankRequest, route: str
    ) -> tuple[RerankResponse, dict[str, str]]:
        name, result, results = await self._cohere(models, data, route)
        body = RerankResponse(uuid.uuid4().hex, name, results, RerankUsage(result.tokens))
        return body, timing_headers(result.timings, result.tokens)


async def tei_rerank(models: Models, data: AnyRerankRequest) -> tuple[list[TEIRank], ScoreResult]:
    """TEI's rerank: a bare array of ``{index, score, text?}`` sorted by score."""
    texts = data.texts or []
    _, result = await _score(
        models,
        data.model,
        data.query,
        texts,
        raw_scores=data.raw_scores,
        truncate=data.truncate,
        route="/rerank",
    )
    ranks = [
        TEIRank(i, float(result.scores[i]), texts[i] if data.return_text else None)
        for i in _order(result.scores, data.top_n)
    ]
    return ranks, result
