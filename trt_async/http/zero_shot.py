"""Zero-shot classification with an NLI model: ``POST /v1/zero-shot``.

Computed as transformers' ``zero-shot-classification`` pipeline: each (text, "This example
is {label}.") pair is scored; single-label takes a softmax of entailment across labels,
multi-label a softmax over [contradiction, entailment] per label. Labels come back sorted by
score per text, as the pipeline returns them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Router
from msgspec import Meta

from trt_async.core.errors import InvalidInput
from trt_async.core.requests import ZeroShotRequest as CoreZeroShot
from trt_async.core.requests import ZeroShotScores
from trt_async.http.common import Truncate
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.routes import Call, Translation, inference_route


class ZeroShotRequest(msgspec.Struct, kw_only=True):
    """Score candidate labels for a text (or texts) with an NLI model."""

    candidate_labels: Annotated[list[str], Meta(description="The labels to choose from.")]
    text: Annotated[str | None, Meta(description="One text (or send `texts`).")] = None
    texts: Annotated[list[str] | None, Meta(description="Several texts (or send `text`).")] = None
    model: Annotated[
        str | None, Meta(description="A served NLI model (default: the first one).")
    ] = None
    hypothesis_template: Annotated[
        str, Meta(description="The hypothesis for each label; `{}` is the label.")
    ] = "This example is {}."
    multi_label: Annotated[
        bool,
        Meta(description="Score each label on its own instead of a softmax across labels."),
    ] = False
    truncate: Truncate = None


class ZeroShotClassification(msgspec.Struct):
    """One text's labels, sorted by score, highest first."""

    index: int
    sequence: str
    labels: list[str]
    scores: list[float]


class ZeroShotUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class ZeroShotResponse(msgspec.Struct):
    model: str
    data: list[ZeroShotClassification]
    usage: ZeroShotUsage
    object: str = "list"


def _to_request(data: ZeroShotRequest, call: Call[ZeroShotRequest]) -> CoreZeroShot:
    if (data.text is None) == (data.texts is None):
        raise InvalidInput("send exactly one of text and texts", field="text")
    texts = [data.text] if data.text is not None else list(data.texts or [])
    return CoreZeroShot(
        texts=texts,
        labels=data.candidate_labels,
        model=data.model,
        template=data.hypothesis_template,
        multi_label=data.multi_label,
        truncate=data.truncate,
    )


def _to_answer(result: ZeroShotScores, data: ZeroShotRequest) -> ZeroShotResponse:
    texts = [data.text] if data.text is not None else list(data.texts or [])
    labels = data.candidate_labels
    out = [
        ZeroShotClassification(
            index=i,
            sequence=text,
            labels=[labels[j] for j in order],
            scores=[float(row[j]) for j in order],
        )
        for i, (text, row, order) in enumerate(zip(texts, result.scores, result.order, strict=True))
    ]
    return ZeroShotResponse(result.model, out, ZeroShotUsage(result.tokens, result.tokens))


def router() -> Router:
    """Zero-shot classification, answering errors in OpenAI's shape."""
    zero_shot = inference_route(
        "/v1/zero-shot",
        body=ZeroShotRequest,
        translation=Translation(_to_request, _to_answer),
        dialect=Dialect.OPENAI,
        answers=ZeroShotResponse,
        summary="Zero-shot classification with an NLI model",
    )
    return Router(
        "/",
        route_handlers=[zero_shot],
        tags=["zero-shot"],
        exception_handlers=dialect_handlers(Dialect.OPENAI),
    )
