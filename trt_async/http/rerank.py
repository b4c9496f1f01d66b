"""Rerank in Cohere/Jina's dialect (``/v1/rerank``, ``/rerank``, Cohere v2 ``/v2/rerank``)
and TEI's (``/rerank`` with ``texts``: a bare array).

Results are sorted by score, highest first, and cut to ``top_n``. A cross-encoder's score
is the sigmoid of its logit (unless ``raw_scores``); an embedding model scores the cosine
of query and document vectors.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
import numpy as np
from litestar import Controller, Response, post

from trt_async.core.config import ModelKind
from trt_async.core.errors import InvalidInput
from trt_async.core.model import ScoreResult
from trt_async.http.common import (
    AnyRequest,
    JsonBody,
    check_batch,
    error_responses,
    pick_model,
    require_kind,
    set_dialect,
    timing_headers,
)
from trt_async.http.errors import Dialect

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
_KINDS = (ModelKind.RERANKER, ModelKind.EMBEDDING)
_HINT = "rerank takes a reranker or an embedding model"


class RerankDocument(msgspec.Struct):
    text: str


class RerankRequest(msgspec.Struct, kw_only=True):
    """Cohere/Jina rerank. ``model`` defaults to the first reranker served."""

    query: str
    documents: list[str | RerankDocument]
    model: str | None = None
    top_n: PositiveInt | None = None
    return_documents: bool = False
    #: Cohere v2: each document is cut to this many tokens before scoring.
    max_tokens_per_doc: PositiveInt | None = None
    #: Extensions: logits instead of sigmoid scores; refuse over-long inputs.
    raw_scores: bool = False
    truncate: bool | None = None


class AnyRerankRequest(msgspec.Struct, kw_only=True):
    """``/rerank``: Cohere/Jina's body (``documents``) or TEI's (``texts``)."""

    query: str
    documents: list[str | RerankDocument] | None = None
    texts: list[str] | None = None
    model: str | None = None
    top_n: PositiveInt | None = None
    return_documents: bool = False
    max_tokens_per_doc: PositiveInt | None = None
    raw_scores: bool = False
    truncate: bool | None = None
    #: TEI only.
    return_text: bool = False
    #: Accepted for TEI clients; pairs are truncated from the document's end.
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"


class RerankUsage(msgspec.Struct):
    total_tokens: int


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(msgspec.Struct):
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


class RerankV2Response(msgspec.Struct):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


class TEIRank(msgspec.Struct, omit_defaults=True):
    index: int
    score: float
    text: str | None = None


def _texts(documents: list[str | RerankDocument]) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


def _order(scores: np.ndarray, top_n: int | None) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]


async def _score(
    request: AnyRequest,
    model_name: str | None,
    query: str,
    documents: list[str],
    *,
    raw_scores: bool,
    truncate: bool | None,
    route: str,
    max_tokens_per_doc: int | None = None,
) -> tuple[str, ScoreResult]:
    check_batch(request, len(documents), "documents")
    model = pick_model(request, model_name, _KINDS, route)
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

    async def _cohere(
        self, request: AnyRequest, data: RerankRequest | AnyRerankRequest, route: str
    ) -> tuple[str, ScoreResult, list[RerankResult]]:
        documents = _texts(data.documents or [])
        name, result = await _score(
            request,
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
        responses=error_responses(Dialect.OPENAI),
        opt={"dialect": Dialect.OPENAI},
    )
    async def rerank_v1(
        self, request: AnyRequest, data: JsonBody[RerankRequest]
    ) -> Response[RerankResponse]:
        body, headers = await self._cohere_v1(request, data, "/v1/rerank")
        return Response(body, headers=headers)

    @post(
        "/v2/rerank",
        status_code=200,
        summary="Rerank documents (Cohere v2)",
        responses=error_responses(Dialect.OPENAI),
        opt={"dialect": Dialect.OPENAI},
    )
    async def rerank_v2(
        self, request: AnyRequest, data: JsonBody[RerankRequest]
    ) -> Response[RerankV2Response]:
        name, result, results = await self._cohere(request, data, "/v2/rerank")
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
        responses=error_responses(Dialect.OPENAI),
    )
    async def rerank_any(
        self, request: AnyRequest, data: JsonBody[AnyRerankRequest]
    ) -> Response[RerankResponse | list[TEIRank]]:
        body: RerankResponse | list[TEIRank]
        if data.texts is not None and data.documents is None:
            body, result = await self._tei(request, data)
            return Response(body, headers=timing_headers(result.timings, result.tokens))
        set_dialect(request, Dialect.OPENAI)
        if data.documents is None:
            raise InvalidInput("documents is required", param="documents")
        cohere, headers = await self._cohere_v1(request, data, "/rerank")
        return Response(cohere, headers=headers)

    async def _cohere_v1(
        self, request: AnyRequest, data: RerankRequest | AnyRerankRequest, route: str
    ) -> tuple[RerankResponse, dict[str, str]]:
        name, result, results = await self._cohere(request, data, route)
        body = RerankResponse(uuid.uuid4().hex, name, results, RerankUsage(result.tokens))
        return body, timing_headers(result.timings, result.tokens)

    async def _tei(
        self, request: AnyRequest, data: AnyRerankRequest
    ) -> tuple[list[TEIRank], ScoreResult]:
        set_dialect(request, Dialect.TEI)
        texts = data.texts or []
        _, result = await _score(
            request,
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
