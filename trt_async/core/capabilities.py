"""What a served model can do: one value, built when the model is loaded.

Three things used to decide it in three places: the config section a model is served from
(its *role*: embedding, reranking or NLI), the export manifest's task, and whether the
graph's output is a hidden state or logits. They meet here, once; the core enforces the
result for every task, and the HTTP layer reads it (to list models, to describe them).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from trt_async.core import heads
from trt_async.core.config import ModelKind
from trt_async.core.errors import MissingHead, WrongModelKind
from trt_async.core.multivector import Head

_HEAD_HINTS: dict[Head, str] = {
    "sparse": "sparse weights need a bge-m3 export (trt-async export --task embed of a folder "
    "with FlagEmbedding's sparse_linear.pt and colbert_linear.pt)",
    "colbert": "ColBERT vectors need a bge-m3 export (trt-async export --task embed of a "
    "folder with FlagEmbedding's sparse_linear.pt and colbert_linear.pt)",
    "tokens": "token vectors need a graph with a last_hidden_state output (export without "
    "--pool-in-graph)",
}


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """The tasks a model serves, from its role and its graph."""

    #: The config section it is served from: decides which routes take it by default.
    role: ModelKind
    #: Its graph gives a vector per text (a hidden state or a pooled embedding).
    embeds: bool
    #: Its graph gives logits per text or pair: it classifies, and scores (query, document)
    #: pairs as a cross-encoder.
    classifies: bool
    #: Token-level results its graph gives besides the pooled row.
    heads: frozenset[Head] = frozenset()
    #: Its labels have an entailment label, so it can classify zero-shot.
    entails: bool = False
    #: Label names by class index (logits models).
    labels: Mapping[int, str] = msgspec.field(default_factory=dict)

    @classmethod
    def of(
        cls,
        role: ModelKind,
        *,
        gives_vectors: bool,
        heads_available: frozenset[Head],
        labels: Mapping[int, str],
    ) -> Capabilities:
        """From the role, whether the graph gives vectors (else logits), the heads its
        outputs allow, and its label map."""
        return cls(
            role=role,
            embeds=gives_vectors,
            classifies=not gives_vectors,
            heads=heads_available if gives_vectors else frozenset(),
            entails=not gives_vectors and heads.label_index(labels, "entail") is not None,
            labels=dict(labels),
        )

    @property
    def reranks(self) -> bool:
        """An embedder ranks by cosine, a cross-encoder by its pair score; an NLI model's
        logits are not a relevance."""
        return self.embeds or (self.classifies and self.role is not ModelKind.NLI)

    # -- checks the core makes before running a task ------------------------------------------

    def require_embeds(self, name: str) -> None:
        if not self.embeds:
            raise WrongModelKind(
                name,
                self.role.value,
                "it gives logits, not vectors; use a rerank, classification or zero-shot route",
            )

    def require_head(self, name: str, head: Head) -> None:
        self.require_embeds(name)
        if head not in self.heads:
            raise MissingHead(name, self.role.value, head, _HEAD_HINTS[head])

    def require_reranks(self, name: str) -> None:
        if not self.reranks:
            raise WrongModelKind(
                name, self.role.value, "rerank takes a reranker or an embedding model"
            )

    def require_classifies(self, name: str) -> None:
        if not self.classifies:
            raise WrongModelKind(
                name, self.role.value, "it gives embeddings; use an embedding route"
            )

    def require_zero_shot(self, name: str) -> None:
        if not self.classifies:
            raise WrongModelKind(name, self.role.value, "zero-shot needs an NLI model")
        if not self.entails:
            raise WrongModelKind(
                name,
                self.role.value,
                f"its labels {sorted(self.labels.values())} have no entailment label",
            )
