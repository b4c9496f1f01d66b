"""Request mixes: seeded lists of ready-to-send HTTP requests.

A mix is pre-generated (bounded count) and encoded once, so the load generator spends its
CPU on sending, not on building bodies, and two targets given the same seed receive
byte-identical request streams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from trt_async.bench.corpus import Corpus

#: Every mix the generator knows, with what one request carries.
MIXES: dict[str, str] = {
    "short": "one short text (one sentence) per /v1/embeddings request",
    "long": "one long text (250-400 words) per /v1/embeddings request",
    "realistic": "one text per /v1/embeddings request, log-normal length (median ~25 words)",
    "docs32": "32 texts of realistic length per /v1/embeddings request",
    "rerank": "one query and 10-100 documents per /v1/rerank request (Cohere shape)",
    "nli": "8 (premise, hypothesis) pairs per /infer/{model} request (seed NLI shape)",
}

_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One HTTP request: method POST, JSON ``body`` to ``path``, carrying ``items`` inputs."""

    path: str
    body: bytes
    items: int
    mix: str
    texts: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Targets:
    """Model names per task on the server under test."""

    embedding: str
    rerank: str | None = None
    nli: str | None = None


def embeddings_request(
    model: str, texts: list[str], mix: str, encoding_format: str = "float"
) -> RequestSpec:
    body = {"model": model, "input": texts if len(texts) != 1 else texts[0]}
    if encoding_format != "float":
        body["encoding_format"] = encoding_format
    return RequestSpec("/v1/embeddings", _ENCODER.encode(body), len(texts), mix, tuple(texts))


def rerank_request(model: str, query: str, documents: list[str]) -> RequestSpec:
    body = {"model": model, "query": query, "documents": documents}
    return RequestSpec(
        "/v1/rerank", _ENCODER.encode(body), len(documents), "rerank", (query, *documents)
    )


def nli_request(model: str, premises: list[str], hypotheses: list[str]) -> RequestSpec:
    body = {"premises": premises, "hypotheses": hypotheses}
    return RequestSpec(
        f"/infer/{model}", _ENCODER.encode(body), len(premises), "nli", (*premises, *hypotheses)
    )


def build_requests(
    mix: str,
    targets: Targets,
    count: int,
    seed: int,
    corpus: Corpus | None = None,
    *,
    encoding_format: str = "float",
) -> list[RequestSpec]:
    """``count`` requests of ``mix`` for the models in ``targets``, deterministic by ``seed``."""
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; choose from {', '.join(MIXES)}")
    src = (corpus or Corpus()).source(seed)
    model = targets.embedding

    def single(draw: Callable[[], str]) -> Callable[[], RequestSpec]:
        return lambda: embeddings_request(model, [draw()], mix, encoding_format)

    make: Callable[[], RequestSpec]
    if mix == "short":
        make = single(src.short)
    elif mix == "long":
        make = single(src.long)
    elif mix == "realistic":
        make = single(src.realistic)
    elif mix == "docs32":

        def make() -> RequestSpec:
            texts = [src.realistic() for _ in range(32)]
            return embeddings_request(model, texts, mix, encoding_format)

    elif mix == "rerank":
        if targets.rerank is None:
            raise ValueError("the rerank mix needs a reranking model (--rerank-model)")
        rerank_model = targets.rerank

        def make() -> RequestSpec:
            n = src.rng.randint(10, 100)
            return rerank_request(rerank_model, src.query(), [src.realistic() for _ in range(n)])

    else:
        if targets.nli is None:
            raise ValueError("the nli mix needs an NLI model (--nli-model)")
        nli_model = targets.nli

        def make() -> RequestSpec:
            premises = [src.realistic() for _ in range(8)]
            return nli_request(nli_model, premises, [src.short() for _ in range(8)])

    return [make() for _ in range(count)]


def retarget(requests: list[RequestSpec], model: str) -> list[RequestSpec]:
    """The same request stream sent to another model name (for A/B comparisons)."""
    out: list[RequestSpec] = []
    for r in requests:
        body = msgspec.json.decode(r.body)
        if r.path.startswith("/infer/"):
            out.append(RequestSpec(f"/infer/{model}", r.body, r.items, r.mix, r.texts))
            continue
        body["model"] = model
        out.append(RequestSpec(r.path, _ENCODER.encode(body), r.items, r.mix, r.texts))
    return out
