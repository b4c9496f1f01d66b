"""Images in the peers' request shapes, translated into the core's one request.

What each dialect sends for an image-text model (CLIP, SigLIP), every image a URL, a
``data:`` URI or base64:

* Jina (``POST /v1/embeddings``): ``input: [{"text": ...}, {"image": ...}, "a text"]``;
  the answer keeps that order.
* infinity: ``input`` with ``"modality": "image"`` (``POST /v1/embeddings`` or
  ``/embeddings``, the OpenAI SDK's ``extra_body``), and its older
  ``POST /embeddings_image`` with ``input``.
* vLLM: ``messages`` in the chat shape instead of ``input``, each message's content a
  text or a list of ``{"type": "text", "text"}`` / ``{"type": "image_url", "image_url":
  {"url"}}`` parts; vLLM answers one embedding for the whole conversation, so a model
  that embeds one item at a time takes exactly one part.
* Cohere v2 (``POST /v2/embed``): ``images`` (with ``input_type: "image"``), or
  ``inputs: [{"content": [parts]}]``; each input one text or one image part.

A body with images becomes one :class:`~trt_async.core.requests.ImageTextEmbedRequest`
with each item's position in the body, so errors name the item as the client numbered it;
a body of texts only stays an ordinary embedding request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from trt_async.core.errors import InvalidInput, Part
from trt_async.core.requests import EmbedRequest, ImageTextEmbedRequest
from trt_async.core.templates import PromptsNotTaken


class ImageUrl(msgspec.Struct, kw_only=True):
    url: Annotated[str, Meta(description="An http(s) URL, a data: URI or base64.")]


class ContentPart(msgspec.Struct, kw_only=True):
    """One part of a chat message's (or a Cohere input's) content: a text or an image."""

    type: Literal["text", "image_url"]
    text: str | None = None
    #: OpenAI's ``{"url": ...}``; Cohere also documents the bare string.
    image_url: ImageUrl | str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    """A chat message, as vLLM takes them on its embeddings route."""

    role: str
    content: str | list[ContentPart]


class InputObject(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Jina's input item: ``{"text": ...}`` or ``{"image": ...}``."""

    text: str | None = None
    image: Annotated[str | None, Meta(description="An http(s) URL, a data: URI or base64.")] = None


class Items:
    """A request's texts and images in the order sent, with each one's position."""

    __slots__ = ("image_positions", "images", "text_positions", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.text_positions: list[int] = []
        self.images: list[str] = []
        self.image_positions: list[int] = []

    def __len__(self) -> int:
        return len(self.texts) + len(self.images)

    def text(self, value: str) -> None:
        self.text_positions.append(len(self))
        self.texts.append(value)

    def image(self, value: str) -> None:
        self.image_positions.append(len(self))
        self.images.append(value)

    def part(self, part: ContentPart, where: str) -> None:
        """A content part: its text, or its image's URL."""
        if part.type == "text":
            if part.text is None:
                raise InvalidInput(f"{where} is a text part without `text`", field=where)
            self.text(part.text)
            return
        url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
        if url is None:
            raise InvalidInput(f"{where} is an image_url part without `image_url`", field=where)
        self.image(url)

    def request(
        self,
        model: str | None,
        *,
        dimensions: int | None = None,
        truncate: bool | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> EmbedRequest | ImageTextEmbedRequest:
        """Texts alone: an ordinary embedding request; with images: one for both towers
        (image-text models take no prompts: one sent is refused)."""
        if not self.images:
            return EmbedRequest(
                inputs=self.texts,
                model=model,
                dimensions=dimensions,
                truncate=truncate,
                prompt_name=prompt_name,
                prompt=prompt,
            )
        if prompt_name is not None or prompt is not None:
            part = Part.PROMPT_NAME if prompt_name is not None else Part.PROMPT
            raise PromptsNotTaken(model or "<default image-text model>", part, embeds=True)
        return ImageTextEmbedRequest(
            texts=self.texts,
            images=self.images,
            text_positions=self.text_positions,
            image_positions=self.image_positions,
            model=model,
            dimensions=dimensions,
            truncate=truncate,
        )


def jina_items(values: Sequence[object]) -> Items:
    """Jina's ``input`` list: strings are texts, objects a text or an image each."""
    items = Items()
    for i, value in enumerate(values):
        if isinstance(value, str):
            items.text(value)
        elif isinstance(value, InputObject):
            if (value.text is None) == (value.image is None):
                raise InvalidInput(
                    f"input[{i}] must have exactly one of `text` and `image`", field="input"
                )
            if value.text is not None:
                items.text(value.text)
            else:
                assert value.image is not None
                items.image(value.image)
        else:
            raise InvalidInput(
                f"input[{i}]: a list with image objects takes texts and "
                '{"text": ...} / {"image": ...} objects, not token ids',
                field="input",
            )
    return items


def image_list(value: str | Sequence[object], field: str) -> Items:
    """infinity's image ``input``: one image or a list of them."""
    items = Items()
    values = [value] if isinstance(value, str) else value
    for i, ref in enumerate(values):
        if not isinstance(ref, str):
            raise InvalidInput(
                f"{field}[{i}]: with modality image every input is an image (a URL, data: "
                "URI or base64 string)",
                field=field,
            )
        items.image(ref)
    return items


def message_items(messages: Sequence[ChatMessage]) -> Items:
    """vLLM's ``messages``: the one text or image part they hold (one embedding each)."""
    items = Items()
    for m, message in enumerate(messages):
        if isinstance(message.content, str):
            items.text(message.content)
            continue
        for p, part in enumerate(message.content):
            items.part(part, f"messages[{m}].content[{p}]")
    if len(items) != 1:
        raise InvalidInput(
            f"messages hold {len(items)} text and image parts; an embedding of a "
            "conversation takes exactly one here (a text or an image): send several items "
            "as `input` instead",
            field="messages",
        )
    return items


def cohere_items(
    images: Sequence[str] | None, inputs: Sequence[CohereInput] | None
) -> Items | None:
    """Cohere v2's ``images`` or ``inputs`` (None when the body has neither)."""
    if images is not None:
        items = Items()
        for ref in images:
            items.image(ref)
        return items
    if inputs is None:
        return None
    items = Items()
    for i, one in enumerate(inputs):
        if len(one.content) != 1:
            raise InvalidInput(
                f"inputs[{i}] has {len(one.content)} content parts; this model embeds one "
                "text or one image per input",
                field="inputs",
            )
        items.part(one.content[0], f"inputs[{i}].content[0]")
    return items


class CohereInput(msgspec.Struct, kw_only=True):
    """One of Cohere v2's ``inputs``: its content parts."""

    content: list[ContentPart]
