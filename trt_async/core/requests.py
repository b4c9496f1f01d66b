"""What a client can ask of a served model, in the core's own terms, and what it gets back.

Every API dialect translates its request bodies into one of the request structs below and
the matching result back into its answer (see :class:`~trt_async.core.inference.Inference`,
which runs them); nothing here knows an API field name. A request names its model, or
leaves it to the task's default model.

Results hold numpy arrays, finished as the request asked (normalised, cut, activated,
ranked): encoding them is the dialect's only work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np

from trt_async.core import heads
from trt_async.core.errors import Part
from trt_async.core.multivector import Head, SparseVector
from trt_async.core.tokenizer import Direction, TokenInfo

#: Cohere's quantised embedding types (see :mod:`trt_async.core.quantize`).
QuantizedType = Literal["int8", "uint8", "binary", "ubinary"]
#: How classification logits become scores: ``auto`` is a softmax over the labels, or a
#: sigmoid for a one-label model (TEI's ``/predict``); ``none`` keeps the logits.
Activation = Literal["auto", "softmax", "sigmoid", "none"]


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds spent per stage of one request (reported in ``x-*-time`` headers)."""

    tokenize_s: float
    queue_s: float
    inference_s: float
    total_s: float


# -- requests ------------------------------------------------------------------------------------


class EmbedRequest(msgspec.Struct, kw_only=True):
    """Vectors for texts (or for this model's own token-id lists)."""

    inputs: Sequence[str] | Sequence[Sequence[int]]
    model: str | None = None
    #: None: the model's ``normalize`` setting.
    normalize: bool | None = None
    #: Keep the first n components (Matryoshka), before normalising.
    dimensions: int | None = None
    #: None: the model's ``truncate`` setting.
    truncate: bool | None = None
    direction: Direction = "right"
    #: Cut each text to its first n tokens first (Cohere v2's ``max_tokens``).
    max_tokens: int | None = None
    #: Token-level results wanted from the same forward pass.
    heads: frozenset[Head] = frozenset()
    #: Quantised copies of the vectors wanted besides the floats.
    quantized: tuple[QuantizedType, ...] = ()
    #: One of the model's named prompts, put before each text (None: the model's default).
    prompt_name: str | None = None
    #: A prompt's own text, put before each text instead of a named one.
    prompt: str | None = None
    #: Cohere's ``input_type`` (``search_query``...): the model's prompt for that use, if
    #: it has one (see :data:`~trt_async.core.templates.COHERE_INPUT_TYPES`).
    input_type: str | None = None
    #: Also give each sparse weight's token text (FlagEmbedding's ``convert_id_to_token``).
    sparse_tokens: bool = False


class RerankRequest(msgspec.Struct, kw_only=True):
    """The relevance of each document to a query, ranked."""

    query: str
    documents: Sequence[str]
    model: str | None = None
    #: A cross-encoder's logits instead of their sigmoid.
    raw_scores: bool = False
    truncate: bool | None = None
    #: Cut each document to its first n tokens first (Cohere v2).
    max_tokens_per_doc: int | None = None
    #: Rank only the n best (default: all).
    top_n: int | None = None
    #: An LLM reranker's instruction (None: the model's configured one, else its template's).
    instruction: str | None = None


class ClassifyRequest(msgspec.Struct, kw_only=True):
    """Label scores for texts or (premise, hypothesis) pairs."""

    inputs: Sequence[str | tuple[str, str]]
    model: str | None = None
    #: What the items are (texts, or premises paired with hypotheses).
    part: Part = Part.INPUTS
    activation: Activation = "auto"
    truncate: bool | None = None
    direction: Direction = "right"


class ZeroShotRequest(msgspec.Struct, kw_only=True):
    """Each candidate label's score for each text, from an NLI model."""

    texts: Sequence[str]
    labels: Sequence[str]
    model: str | None = None
    template: str = "This example is {}."
    multi_label: bool = False
    truncate: bool | None = None


class SimilarityRequest(msgspec.Struct, kw_only=True):
    """The cosine of each sentence's vector to a source sentence's."""

    source: str
    sentences: Sequence[str]
    model: str | None = None


class TokenizeRequest(msgspec.Struct, kw_only=True):
    """Tokens with offsets, as the model's tokenizer makes them."""

    texts: Sequence[str]
    model: str | None = None
    add_special_tokens: bool = True
    #: One of the model's named prompts, put before each text as an embedding would.
    prompt_name: str | None = None


class ImageTextEmbedRequest(msgspec.Struct, kw_only=True):
    """Vectors for texts and images in one space (an image-text model: CLIP, SigLIP).

    Each image is an http(s) URL, a ``data:`` URI or base64 (see
    :func:`~trt_async.core.image_inputs.load_images`).
    """

    texts: Sequence[str] = ()
    images: Sequence[str] = ()
    #: Where each text and each image sits among the request's items as sent: errors name
    #: that index, and :meth:`ImageTextEmbeddings.in_order` puts each vector there. None:
    #: the item's index in its own list (texts and images sent apart).
    text_positions: Sequence[int] | None = None
    image_positions: Sequence[int] | None = None
    model: str | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    truncate: bool | None = None


class ImageZeroShotRequest(msgspec.Struct, kw_only=True):
    """Each candidate label's score for each image, from an image-text model, as
    transformers' zero-shot-image-classification pipeline scores them."""

    images: Sequence[str]
    labels: Sequence[str]
    model: str | None = None
    #: The text for each label (``{}`` is the label); None: the model's, transformers'
    #: "This is a photo of {}.".
    template: str | None = None


Request = (
    EmbedRequest
    | RerankRequest
    | ClassifyRequest
    | ZeroShotRequest
    | SimilarityRequest
    | TokenizeRequest
    | ImageTextEmbedRequest
    | ImageZeroShotRequest
)


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors in input order, and the token-level results asked for."""

    model: str
    #: ``(inputs, dimensions)`` float32, finished (cut, normalised) as asked.
    vectors: np.ndarray
    tokens: int
    timings: Timings
    sparse: list[SparseVector] | None = None
    #: With ``sparse_tokens``: per input, the token text of each sparse weight.
    sparse_tokens: list[list[str]] | None = None
    #: One ``(tokens, dim)`` array per input.
    colbert: list[np.ndarray] | None = None
    #: One ``(tokens, hidden)`` array per input: every token's vector.
    token_vectors: list[np.ndarray] | None = None
    #: Per quantised type asked for, one row per input.
    quantized: Mapping[QuantizedType, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ranking:
    """Scores in document order, and the documents' indices best first (cut to top n)."""

    model: str
    scores: np.ndarray
    order: list[int]
    tokens: int
    timings: Timings


@dataclass(frozen=True, slots=True)
class Classification:
    """Per input: logits, activated scores, and labels ranked by score."""

    model: str
    logits: np.ndarray
    scores: np.ndarray
    #: Label names by class index.
    labels: Mapping[int, str]
    tokens: int
    timings: Timings

    def ranked(self) -> list[list[tuple[str, float]]]:
        """Per input, (label, score) pairs, best first."""
        return heads.top_labels(self.scores, self.labels)

    def predictions(self) -> list[str]:
        """Per input, the label of the largest logit."""
        return heads.predictions(self.logits, self.labels)


@dataclass(frozen=True, slots=True)
class ZeroShotScores:
    """Per text, the candidate labels' indices best first and their scores."""

    model: str
    #: ``(texts, labels)``: each candidate label's score for each text.
    scores: np.ndarray
    #: Per text, label indices sorted by score, highest first.
    order: list[list[int]]
    tokens: int
    timings: Timings


@dataclass(frozen=True, slots=True)
class Similarities:
    """The cosine of each sentence to the source, in sentence order."""

    model: str
    scores: np.ndarray
    tokens: int
    timings: Timings


@dataclass(frozen=True, slots=True)
class Tokens:
    """Each text's tokens."""

    model: str
    tokens: list[list[TokenInfo]]


@dataclass(frozen=True, slots=True)
class ImageTextEmbeddings:
    """Text and image vectors of one request, in one space."""

    model: str
    #: ``(texts, dimensions)`` and ``(images, dimensions)`` float32, finished as asked.
    texts: np.ndarray
    images: np.ndarray
    #: Tokens of the texts.
    tokens: int
    timings: Timings
    text_positions: Sequence[int] | None = None
    image_positions: Sequence[int] | None = None

    def in_order(self) -> np.ndarray:
        """Every vector at its item's position in the request (texts first, then images,
        where the request gave no positions)."""
        n_texts, n_images = len(self.texts), len(self.images)
        dim = (self.texts if n_texts else self.images).shape[-1] if n_texts + n_images else 0
        out = np.empty((n_texts + n_images, dim), dtype=np.float32)
        texts_at = self.text_positions if self.text_positions is not None else range(n_texts)
        images_at = (
            self.image_positions
            if self.image_positions is not None
            else range(n_texts, n_texts + n_images)
        )
        out[list(texts_at)] = self.texts
        out[list(images_at)] = self.images
        return out


Result = (
    Embeddings
    | Ranking
    | Classification
    | ZeroShotScores
    | Similarities
    | Tokens
    | ImageTextEmbeddings
)
