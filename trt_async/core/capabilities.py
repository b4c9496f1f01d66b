"""What a served model can do: one value, built when the model is loaded.

Three things used to decide it in three places: the config section a model is served from
(its *role*: embedding, reranking or NLI), the export manifest's task, and whether the
graph's output is a hidden state or logits. They meet here, once; the core enforces the
result for every task, and the HTTP layer reads it (to list models, to describe them).
What is put around a request's texts is decided here too: an embedder's prompts (its
sentence-transformers prompts and the config's) and an LLM reranker's pair template and
instruction.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from msgspec import UNSET

from trt_async.backends.modelfiles import ExportManifest, ModelDirError, ModelFiles, PairTemplate
from trt_async.core import heads, templates
from trt_async.core.config import ConfigError, ModelConfig, ModelKind
from trt_async.core.errors import MissingHead, Part, WrongModelKind
from trt_async.core.multivector import Head
from trt_async.core.templates import InstructionNotTaken, PromptsNotTaken

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
    #: Embedders: prompts by name, and the one put before texts when a request names none.
    prompts: Mapping[str, str] = msgspec.field(default_factory=dict)
    default_prompt_name: str | None = None
    #: LLM rerankers: how a (query, document) pair is laid out; such a model scores pairs
    #: and nothing else.
    pair_template: PairTemplate | None = None
    #: The instruction its pairs are read with when a request gives none (the config's).
    instruction: str | None = None
    #: An image-text model (CLIP, SigLIP): it embeds images into the space of its texts,
    #: and so classifies images zero-shot against candidate labels.
    embeds_images: bool = False

    @classmethod
    def of(
        cls,
        role: ModelKind,
        *,
        gives_vectors: bool,
        heads_available: frozenset[Head],
        labels: Mapping[int, str],
        prompts: Mapping[str, str] | None = None,
        default_prompt_name: str | None = None,
        pair_template: PairTemplate | None = None,
        instruction: str | None = None,
        embeds_images: bool = False,
    ) -> Capabilities:
        """From the role, whether the graph gives vectors (else logits), the heads its
        outputs allow, its label map, what goes around its inputs (an embedder's prompts,
        an LLM reranker's template), and whether an image tower sits beside it."""
        template = None if gives_vectors else pair_template
        return cls(
            role=role,
            embeds=gives_vectors,
            classifies=not gives_vectors and template is None,
            heads=heads_available if gives_vectors else frozenset(),
            entails=(
                not gives_vectors
                and template is None
                and heads.label_index(labels, "entail") is not None
            ),
            labels=dict(labels),
            prompts=dict(prompts or {}) if gives_vectors else {},
            default_prompt_name=default_prompt_name if gives_vectors else None,
            pair_template=template,
            instruction=instruction if template is not None else None,
            embeds_images=embeds_images and gives_vectors,
        )

    @property
    def reranks(self) -> bool:
        """An embedder ranks by cosine, a cross-encoder or an LLM reranker by its pair
        score; an NLI model's logits are not a relevance."""
        return (
            self.embeds
            or self.pair_template is not None
            or (self.classifies and self.role is not ModelKind.NLI)
        )

    @property
    def takes_prompts(self) -> bool:
        """Requests may name a prompt or send one (only embedders with prompts)."""
        return self.embeds and bool(self.prompts)

    @property
    def takes_instruction(self) -> bool:
        """Rerank requests may give an instruction (LLM rerankers whose template has room)."""
        return self.pair_template is not None and templates.takes_instruction(self.pair_template)

    # -- what goes around a request's texts ---------------------------------------------------

    def prompt(
        self,
        name: str,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        input_type: str | None = None,
    ) -> str:
        """The text put before each input of an embedding request ("" for none): the
        prompt's own text, else the named prompt, else the prompt for Cohere's
        ``input_type`` (none when the model has none for it), else the model's default.

        A prompt named or sent for a model without prompts is refused, never dropped."""
        if prompt is not None or prompt_name is not None:
            part = Part.PROMPT if prompt is not None else Part.PROMPT_NAME
            if not self.takes_prompts:
                raise PromptsNotTaken(name, part, embeds=self.embeds)
        elif input_type is not None:
            prompt_name = templates.prompt_name_for_input_type(self.prompts, input_type)
            if prompt_name is None:
                return ""
        return templates.prompt_text(
            self.prompts, self.default_prompt_name, prompt_name=prompt_name, prompt=prompt
        )

    def prompt_for(self, input_type: str) -> str:
        """The prompt for texts of a Cohere ``input_type`` (``search_query``...): the
        model's prompt for that use, else none."""
        name = templates.prompt_name_for_input_type(self.prompts, input_type)
        return self.prompts[name] if name is not None else ""

    def require_instruction(self, name: str) -> None:
        if not self.takes_instruction:
            raise InstructionNotTaken(name)

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
        if self.pair_template is not None:
            raise WrongModelKind(name, self.role.value, self._pairs_only())
        if not self.classifies:
            raise WrongModelKind(
                name, self.role.value, "it gives embeddings; use an embedding route"
            )

    def require_embeds_images(self, name: str) -> None:
        if not self.embeds_images:
            raise WrongModelKind(
                name,
                self.role.value,
                "it has no image tower; images need an image-text model (a CLIP or SigLIP "
                "folder made by trt-async export)",
            )

    def require_zero_shot(self, name: str) -> None:
        if self.pair_template is not None:
            raise WrongModelKind(name, self.role.value, self._pairs_only())
        if self.embeds_images:
            raise WrongModelKind(
                name,
                self.role.value,
                "it classifies images zero-shot, not texts: send the images (texts need "
                "an NLI model)",
            )
        if not self.classifies:
            raise WrongModelKind(name, self.role.value, "zero-shot needs an NLI model")
        if not self.entails:
            raise WrongModelKind(
                name,
                self.role.value,
                f"its labels {sorted(self.labels.values())} have no entailment label",
            )

    def _pairs_only(self) -> str:
        assert self.pair_template is not None
        return (
            f"it is an LLM reranker (template {self.pair_template.name}) and only scores "
            "(query, document) pairs in its template; use a rerank route"
        )


def model_prompts(
    label: str, config: ModelConfig, manifest: ExportManifest | None
) -> tuple[dict[str, str], str | None]:
    """An embedder's prompts and default prompt name: its sentence-transformers ones (from
    the export manifest) with the config's over them; a default that names no prompt is a
    :class:`ConfigError`."""
    prompts = dict((manifest.prompts if manifest is not None else None) or {})
    prompts.update(config.prompts or {})
    default = manifest.default_prompt_name if manifest is not None else None
    if config.default_prompt_name is not UNSET:
        default = config.default_prompt_name
    if default is not None and default not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise ConfigError(
            f"{label}: default_prompt_name {default!r} is not one of the model's prompts "
            f"({known}); name one of them, or add it under `prompts`"
        )
    return prompts, default


class DeclaredInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What a configured model's folder says goes around its inputs, read without loading
    it (for the API docs' examples)."""

    prompt_names: list[str] = msgspec.field(default_factory=list)
    default_prompt_name: str | None = None
    pair_template: str | None = None


def declared_inputs(config: ModelConfig) -> DeclaredInputs:
    """The prompt names and the pair template ``config``'s model will have; nothing when
    its folder cannot be read (loading it reports why)."""
    try:
        files = ModelFiles.resolve(config.model_path, config.tokenizer_path)
        prompts, default = model_prompts("", config, files.manifest)
    except (ModelDirError, ConfigError, OSError):
        return DeclaredInputs()
    manifest = files.manifest
    if manifest is not None and manifest.pair_template is not None:
        return DeclaredInputs(pair_template=manifest.pair_template.name)
    return DeclaredInputs(prompt_names=sorted(prompts), default_prompt_name=default)
