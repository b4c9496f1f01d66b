"""Rerank in Cohere/Jina's dialect (``/v1/rerank``, ``/rerank``, Cohere v2 ``/v2/rerank``)
and TEI's (``/rerank`` with ``texts``: a bare array).

Results are sorted by score, highest first, and cut to ``top_n``. A cross-encoder's score
is the sigmoid of its logit (unless ``raw_scores``); an LLM reranker lays each pair out in
its template (with the body's ``instruction``, else the model's) and scores it as its
model card does; an embedding model scores the cosine of query and document vectors.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from litestar import Router
from msgspec import UNSET, Meta, UnsetType

from trt_async.core.errors import InvalidInput
from trt_async.core.requests import Ranking
from trt_async.core.requests import RerankRequest as CoreRerank
from trt_async.http.common import DirectionName, Instruction, Truncate
from trt_async.http.errors import DIALECT_STATE_KEY, Dialect, dialect_handlers
from trt_async.http.routes import Call, Translation, inference_route

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
    instruction: Instruction = None


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


def _cohere_request(data: RerankRequest | AnyRerankRequest) -> CoreRerank:
    return CoreRerank(
        query=data.query,
        documents=_texts(data.documents or []),
        model=data.model,
        raw_scores=data.raw_scores,
        truncate=data.truncate,
        max_tokens_per_doc=data.max_tokens_per_doc,
        top_n=data.top_n,
        instruction=data.instruction,
    )


def _results(ranking: Ranking, documents: list[str], return_documents: bool) -> list[RerankResult]:
    scores = ranking.scores
    return [
        RerankResult(
            i, float(scores[i]), RerankDocument(documents[i]) if return_documents else None
        )
        for i in ranking.order
    ]


def _v1_request(data: RerankRequest, call: Call[RerankRequest]) -> CoreRerank:
    request = _cohere_request(data)
    if data.voyage:
        # Voyage's names for the same two settings.
        if data.truncate is None and isinstance(data.truncation, bool):
            request.truncate = data.truncation
        if isinstance(data.top_k, int):
            request.top_n = data.top_k
    return request


def _v1_answer(ranking: Ranking, data: RerankRequest) -> RerankResponse | VoyageRerankResponse:
    documents = _texts(data.documents)
    if data.voyage:
        scores = ranking.scores
        return VoyageRerankResponse(
            [
                VoyageResult(float(scores[i]), i, documents[i] if data.return_documents else None)
                for i in ranking.order
            ],
            ranking.model,
            RerankUsage(ranking.tokens),
        )
    return RerankResponse(
        uuid.uuid4().hex,
        ranking.model,
        _results(ranking, documents, data.return_documents),
        RerankUsage(ranking.tokens),
    )


def _v2_answer(ranking: Ranking, data: RerankRequest) -> RerankV2Response:
    meta = RerankMeta(ApiVersion("2"), BilledUnits(1))
    results = _results(ranking, _texts(data.documents), data.return_documents)
    return RerankV2Response(
        uuid.uuid4().hex, ranking.model, results, RerankUsage(ranking.tokens), meta
    )


def _is_tei(data: AnyRerankRequest) -> bool:
    return data.texts is not None and data.documents is None


def _any_request(data: AnyRerankRequest, call: Call[AnyRerankRequest]) -> CoreRerank:
    if _is_tei(data):
        call.request.state[DIALECT_STATE_KEY] = Dialect.TEI
        return tei_rerank_request(data)
    if data.documents is None:
        raise InvalidInput("documents is required", field="documents")
    return _cohere_request(data)


def _any_answer(ranking: Ranking, data: AnyRerankRequest) -> RerankResponse | list[TEIRank]:
    if _is_tei(data):
        return tei_rerank_answer(ranking, data)
    documents = _texts(data.documents or [])
    return RerankResponse(
        uuid.uuid4().hex,
        ranking.model,
        _results(ranking, documents, data.return_documents),
        RerankUsage(ranking.tokens),
    )


def tei_rerank_request(data: AnyRerankRequest) -> CoreRerank:
    """TEI's rerank: ``query`` and ``texts``."""
    return CoreRerank(
        query=data.query,
        documents=data.texts or [],
        model=data.model,
        raw_scores=data.raw_scores,
        truncate=data.truncate,
        top_n=data.top_n,
        instruction=data.instruction,
    )


def tei_rerank_answer(ranking: Ranking, data: AnyRerankRequest) -> list[TEIRank]:
    """TEI's answer: a bare array of ``{index, score, text?}`` sorted by score."""
    texts = data.texts or []
    scores = ranking.scores
    return [
        TEIRank(i, float(scores[i]), texts[i] if data.return_text else None) for i in ranking.order
    ]


def tei_body_in(body: bytes) -> bool:
    """Whether a ``/rerank`` body that did not decode is TEI's (``texts`` without
    ``documents``), so that its error takes TEI's shape. Only bodies that parse as JSON
    can say; the rest are answered in the rerank routes' shape."""
    try:
        parsed = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(parsed, dict) and "texts" in parsed and "documents" not in parsed


def router() -> Router:
    """Cohere / Jina / Voyage rerank, and ``/rerank`` (Cohere's or TEI's)."""
    v1 = inference_route(
        "/v1/rerank",
        body=RerankRequest,
        translation=Translation(_v1_request, _v1_answer),
        dialect=Dialect.RERANK,
        answers=RerankResponse | VoyageRerankResponse,
        summary="Rerank documents (Cohere v1 / Jina)",
    )
    v2 = inference_route(
        "/v2/rerank",
        body=RerankRequest,
        translation=Translation(_cohere_request_v2, _v2_answer),
        dialect=Dialect.RERANK,
        answers=RerankV2Response,
        summary="Rerank documents (Cohere v2)",
    )
    any_ = inference_route(
        "/rerank",
        body=AnyRerankRequest,
        translation=Translation(_any_request, _any_answer, invalid_body=_tei_error_dialect),
        dialect=Dialect.RERANK,
        answers=RerankResponse | list[TEIRank],
        summary="Rerank documents (Cohere/Jina with `documents`, TEI with `texts`)",
        description=(
            "With `documents` the answer is Cohere/Jina's object; with `texts` (TEI's "
            "dialect) it is TEI's bare array `[{index, score, text?}]`, sorted by score."
        ),
    )
    return Router(
        "/",
        route_handlers=[v1, v2, any_],
        tags=["rerank"],
        exception_handlers=dialect_handlers(Dialect.RERANK),
    )


def _cohere_request_v2(data: RerankRequest, call: Call[RerankRequest]) -> CoreRerank:
    return _cohere_request(data)


def _tei_error_dialect(body: bytes) -> Dialect | None:
    return Dialect.TEI if tei_body_in(body) else None
