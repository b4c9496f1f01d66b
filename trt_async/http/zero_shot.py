"""Zero-shot classification: ``POST /v1/zero-shot``.

Texts, with an NLI model, as transformers' ``zero-shot-classification`` pipeline: each
(text, "This example is {label}.") pair is scored; single-label takes a softmax of
entailment across labels, multi-label a softmax over [contradiction, entailment] per label.
Images, with an image-text model (CLIP, SigLIP), as its ``zero-shot-image-classification``
pipeline: the image's vector against each "This is a photo of {label}." vector (see
:func:`~trt_async.core.image_text.zero_shot_images`). Labels come back sorted by score per
item, as the pipelines return them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Router
from msgspec import Meta

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.requests import ImageZeroShotRequest, ZeroShotScores
from trt_async.core.requests import ZeroShotRequest as CoreZeroShot
from trt_async.http.common import Truncate
from trt_async.http.errors import Dialect, dialect_handlers
from trt_async.http.routes import Call, Translation, inference_route

#: transformers' zero-shot-classification default hypothesis.
NLI_TEMPLATE = "This example is {}."


class ZeroShotRequest(msgspec.Struct, kw_only=True):
    """Score candidate labels for a text (or texts) with an NLI model, or for an image (or
    images) with an image-text model (CLIP, SigLIP)."""

    candidate_labels: Annotated[list[str], Meta(description="The labels to choose from.")]
    text: Annotated[str | None, Meta(description="One text (or send `texts`).")] = None
    texts: Annotated[list[str] | None, Meta(description="Several texts (or send `text`).")] = None
    image: Annotated[
        str | None,
        Meta(description="One image: an http(s) URL, a data: URI or base64 (or send `images`)."),
    ] = None
    images: Annotated[list[str] | None, Meta(description="Several images (or send `image`).")] = (
        None
    )
    model: Annotated[
        str | None,
        Meta(
            description="A served NLI model, or an image-text model for images (default: "
            "the first of its kind)."
        ),
    ] = None
    hypothesis_template: Annotated[
        str | None,
        Meta(
            description="The hypothesis for each label; `{}` is the label. Default: "
            '"This example is {}." for texts, "This is a photo of {}." for images.'
        ),
    ] = None
    multi_label: Annotated[
        bool,
        Meta(description="Score each label on its own instead of a softmax across labels."),
    ] = False
    truncate: Truncate = None


class ZeroShotClassification(msgspec.Struct, omit_defaults=True):
    """One text's (or image's) labels, sorted by score, highest first; ``sequence`` is the
    text (images are not echoed)."""

    index: int
    labels: list[str]
    scores: list[float]
    sequence: str | None = None


class ZeroShotUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class ZeroShotResponse(msgspec.Struct):
    model: str
    data: list[ZeroShotClassification]
    usage: ZeroShotUsage
    object: str = "list"


def _to_request(
    data: ZeroShotRequest, call: Call[ZeroShotRequest]
) -> CoreZeroShot | ImageZeroShotRequest:
    given = [f for f in ("text", "texts", "image", "images") if getattr(data, f) is not None]
    if len(given) != 1:
        raise InvalidInput("send exactly one of text, texts, image and images", field="text")
    if data.image is not None or data.images is not None:
        if data.multi_label:
            raise InvalidInput(
                "multi_label is for NLI models; an image's labels are scored as the model "
                "was trained (softmax for CLIP, a sigmoid per label for SigLIP)",
                field="multi_label",
            )
        return ImageZeroShotRequest(
            images=[data.image] if data.image is not None else list(data.images or []),
            labels=data.candidate_labels,
            model=data.model,
            template=data.hypothesis_template,
        )
    texts = [data.text] if data.text is not None else list(data.texts or [])
    template = data.hypothesis_template
    return CoreZeroShot(
        texts=texts,
        labels=data.candidate_labels,
        model=data.model,
        template=template if template is not None else NLI_TEMPLATE,
        multi_label=data.multi_label,
        truncate=data.truncate,
    )


def _to_answer(result: ZeroShotScores, data: ZeroShotRequest) -> ZeroShotResponse:
    texts: list[str | None]
    if data.text is not None or data.texts is not None:
        texts = [data.text] if data.text is not None else list(data.texts or [])
    else:
        texts = [None] * len(result.scores)
    labels = data.candidate_labels
    out = [
        ZeroShotClassification(
            index=i,
            labels=[labels[j] for j in order],
            scores=[float(row[j]) for j in order],
            sequence=text,
        )
        for i, (text, row, order) in enumerate(zip(texts, result.scores, result.order, strict=True))
    ]
    return ZeroShotResponse(result.model, out, ZeroShotUsage(result.tokens, result.tokens))


_FIELDS = {Part.IMAGES: "images"}


def router() -> Router:
    """Zero-shot classification, answering errors in OpenAI's shape."""
    zero_shot = inference_route(
        "/v1/zero-shot",
        body=ZeroShotRequest,
        translation=Translation(_to_request, _to_answer, field_names=_FIELDS),
        dialect=Dialect.OPENAI,
        answers=ZeroShotResponse,
        summary="Zero-shot classification of texts (NLI model) or images (CLIP, SigLIP)",
    )
    return Router(
        "/",
        route_handlers=[zero_shot],
        tags=["zero-shot"],
        exception_handlers=dialect_handlers(Dialect.OPENAI),
    )
