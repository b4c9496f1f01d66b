"""Zero-shot classification with an NLI model: ``POST /v1/zero-shot``.

Computed as transformers' ``zero-shot-classification`` pipeline: each (text, "This example
is {label}.") pair is scored; single-label takes a softmax of entailment across labels,
multi-label a softmax over [contradiction, entailment] per label. Labels come back sorted by
score per text, as the pipeline returns them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
from litestar import Controller, Response, post
from msgspec import Meta

from trt_async.core.config import ModelKind
from trt_async.core.errors import EmptyInput, InvalidInput, Part
from trt_async.http.common import (
    JsonBody,
    ModelsDep,
    Truncate,
    error_responses,
    require_kind,
    timing_headers,
)
from trt_async.http.errors import Dialect, dialect_handlers


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


class ZeroShotController(Controller):
    tags = ["zero-shot"]  # noqa: RUF012 - Litestar reads class attributes
    exception_handlers = dialect_handlers(Dialect.OPENAI)

    @post(
        "/v1/zero-shot",
        status_code=200,
        summary="Zero-shot classification with an NLI model",
        responses=error_responses(Dialect.OPENAI),
    )
    async def zero_shot(
        self, models: ModelsDep, data: JsonBody[ZeroShotRequest]
    ) -> Response[ZeroShotResponse]:
        if (data.text is None) == (data.texts is None):
            raise InvalidInput("send exactly one of text and texts", field="text")
        texts = [data.text] if data.text is not None else list(data.texts or [])
        models.check_batch(len(texts) * max(1, len(data.candidate_labels)), "texts")
        model = models.pick(data.model, (ModelKind.NLI,), "/v1/zero-shot")
        require_kind(model, (ModelKind.NLI,), "zero-shot needs an NLI model")
        if not texts:
            raise EmptyInput(Part.TEXTS, field="texts")
        result = await model.zero_shot(
            texts,
            data.candidate_labels,
            hypothesis_template=data.hypothesis_template,
            multi_label=data.multi_label,
            truncate=data.truncate,
        )
        out: list[ZeroShotClassification] = []
        for i, (text, row) in enumerate(zip(texts, result.scores, strict=True)):
            order = np.argsort(-row, kind="stable")
            out.append(
                ZeroShotClassification(
                    index=i,
                    sequence=text,
                    labels=[data.candidate_labels[j] for j in order],
                    scores=[float(row[j]) for j in order],
                )
            )
        body = ZeroShotResponse(model.name, out, ZeroShotUsage(result.tokens, result.tokens))
        return Response(body, headers=timing_headers(result.timings, result.tokens))
