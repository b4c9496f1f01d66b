"""What is put around a request's texts: embedding prompts and LLM reranker templates.

Pure functions of text and token ids: no tokenizer, no model. :mod:`~trt_async.core.prompting`
tokenises what they give; the request path calls both. Three things are decided here:

* which prompt an embedding request gets (a name from the model's sentence-transformers
  ``prompts``, a prompt's own text, Cohere's ``input_type``, or the model's default);
* the texts an LLM reranker reads for one (query, document) pair, laid out as each model's
  reference code lays them out (:data:`RERANKERS`);
* how the token ids of those texts are joined and cut to the model's length, keeping
  every fixed part of the template and cutting the document (then the query).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trt_async.backends.modelfiles import PairTemplate, ScoreFormula
from trt_async.core.errors import InputTooLong, InvalidInput, Naming, Part

# -- errors ------------------------------------------------------------------------------------


class UnknownPrompt(InvalidInput):
    """A prompt name the model does not have (``known`` lists those it has, maybe none)."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(part=Part.PROMPT_NAME)
        self.name = name
        self.known = sorted(known)

    def describe(self, name: Naming) -> str:
        field = name(Part.PROMPT_NAME)
        if not self.known:
            return (
                f"{field} {self.name!r}: this model has no named prompts (its "
                "config_sentence_transformers.json and config name none); leave it out or "
                "send the prompt's text"
            )
        return f"{field} {self.name!r} is not one of this model's prompts: {', '.join(self.known)}"


class ConflictingPrompts(InvalidInput):
    """A prompt named and a prompt's text given in one request."""

    def __init__(self) -> None:
        super().__init__(part=Part.PROMPT_NAME)

    def describe(self, name: Naming) -> str:
        return f"send either {name(Part.PROMPT_NAME)} or a prompt's text, not both"


class PromptTooLong(InvalidInput):
    """A prompt or an LLM reranker's instruction (with its template) that leaves no room
    for the text itself within the model's ``max_length`` tokens."""

    def __init__(self, part: Part, tokens: int, max_length: int) -> None:
        super().__init__(part=part)
        self.tokens = tokens
        self.max_length = max_length

    def describe(self, name: Naming) -> str:
        if self.part is Part.INSTRUCTION:
            what = f"{name(Part.INSTRUCTION)} with the model's template"
        elif self.part is Part.PROMPT:
            what = f"{name(Part.PROMPT)} (the prompt's text)"
        else:
            what = f"the prompt named by {name(Part.PROMPT_NAME)}"
        return (
            f"{what} takes {self.tokens} tokens, leaving no room for the text in this "
            f"model's {self.max_length}; send a shorter one"
        )


class InstructionNotTaken(InvalidInput):
    """An instruction for a model whose input has no place for one."""

    def __init__(self, model: str) -> None:
        super().__init__(part=Part.INSTRUCTION)
        self.model = model

    def describe(self, name: Naming) -> str:
        return (
            f"model {self.model!r} takes no {name(Part.INSTRUCTION)} (only LLM rerankers "
            "exported with a template do); leave it out"
        )


class PromptsNotTaken(InvalidInput):
    """A prompt (named, or its text) for a model that has none: one that does not embed,
    or an embedder whose export and config name no prompts."""

    def __init__(self, model: str, part: Part, *, embeds: bool = True) -> None:
        super().__init__(part=part)
        self.model = model
        self.embeds = embeds

    def describe(self, name: Naming) -> str:
        field = name(self.part) if self.part is not None else "prompt"
        if not self.embeds:
            return (
                f"model {self.model!r} takes no {field}: prompts go before texts to embed, "
                "and it does not embed; leave it out"
            )
        return (
            f"model {self.model!r} has no prompts, so it takes no {field}; leave it out (a "
            "server can give a model prompts with `prompts` in its config)"
        )


class PromptWithTokenIds(InvalidInput):
    """A prompt asked for with inputs sent as token ids, which are a model's whole input."""

    def __init__(self, part: Part) -> None:
        super().__init__(part=part)

    def describe(self, name: Naming) -> str:
        return (
            f"{name(self.part or Part.PROMPT_NAME)} cannot go before token ids: token ids are "
            f"the model's whole input. Send the {name(Part.INPUTS)} as text, or tokenise the "
            "prompt with the text yourself"
        )


class NotTakenBy(InvalidInput):
    """A part of a request that the task it asks for has no use for: an embedding prompt
    with a rerank, an instruction with an embedding."""

    def __init__(self, part: Part, task: str, use: str) -> None:
        super().__init__(part=part)
        self.task = task
        self.use = use

    def describe(self, name: Naming) -> str:
        assert self.part is not None
        return f"{name(self.part)} is not taken when {self.task}: it applies to {self.use}"


# -- embedding prompts -------------------------------------------------------------------------

#: Cohere's ``input_type`` values, and the prompt names they map to in order of preference
#: (sentence-transformers models name them "query" and "document" or "passage").
COHERE_INPUT_TYPES: Mapping[str, tuple[str, ...]] = {
    "search_query": ("query", "search_query"),
    "search_document": ("document", "passage", "search_document", "doc"),
    "classification": ("classification",),
    "clustering": ("clustering",),
}


def prompt_text(
    prompts: Mapping[str, str] | None,
    default_prompt_name: str | None,
    *,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> str:
    """The text put before each input of one request ("" for none), as sentence-transformers'
    ``encode(prompt_name=..., prompt=...)`` chooses it: a prompt's own text, else the named
    prompt, else the model's default prompt. Unlike sentence-transformers, a name and a text
    together are refused rather than one silently dropped."""
    if prompt is not None and prompt_name is not None:
        raise ConflictingPrompts()
    if prompt is not None:
        return prompt
    known = prompts or {}
    name = prompt_name if prompt_name is not None else default_prompt_name
    if name is None:
        return ""
    if name not in known:
        raise UnknownPrompt(name, list(known))
    return known[name]


def prompt_name_for_input_type(prompts: Mapping[str, str] | None, input_type: str) -> str | None:
    """The model's prompt for Cohere's ``input_type`` (``search_query`` -> ``query``...), or
    None when the model has none for it (its inputs then go as they are, which is what a
    model without a document prompt, such as Qwen3-Embedding, expects of documents)."""
    for name in COHERE_INPUT_TYPES.get(input_type, ()):
        if prompts and name in prompts:
            return name
    return None


# -- LLM rerankers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmReranker:
    """A causal LM read as a reranker: its pair template and the tokens of its score."""

    template: PairTemplate
    formula: ScoreFormula
    #: ``softmax``: the false token, then the true one; ``logit``: the one token.
    tokens: tuple[str, ...]


#: Where the tokenizer's BOS token goes in a template (filled in when the model is exported).
BOS = "{bos}"

# Qwen3-Reranker's model card: the system turn, the user turn with the instruction, query
# and document (tokenised as one text there; split after the query's newline here, which
# no pre-tokenizer merges across), and the assistant turn with an empty think block.
QWEN3_RERANKER = LlmReranker(
    PairTemplate(
        name="qwen3-reranker",
        before=(
            "<|im_start|>system\nJudge whether the Document meets the requirements based on "
            'the Query and the Instruct provided. Note that the answer can only be "yes" or '
            '"no".<|im_end|>\n<|im_start|>user\n',
        ),
        query="<Instruct>: {instruction}\n<Query>: {query}\n",
        document="<Document>: {document}",
        after=("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",),
        default_instruction=(
            "Given a web search query, retrieve relevant passages that answer the query"
        ),
    ),
    "softmax",
    ("no", "yes"),
)

# FlagEmbedding's FlagLLMReranker: BOS, "A: query", "\n", "B: passage", "\n", then its
# prompt, which its ``prompt`` argument replaces (the instruction here).
BGE_RERANKER_V2_GEMMA = LlmReranker(
    PairTemplate(
        name="bge-reranker-v2-gemma",
        before=(BOS,),
        query="A: {query}",
        between=("\n",),
        document="B: {document}",
        after=("\n", "{instruction}"),
        default_instruction=(
            "Given a query A and a passage B, determine whether the passage contains an "
            "answer to the query by providing a prediction of either 'Yes' or 'No'."
        ),
    ),
    "logit",
    ("Yes",),
)

# mixedbread's mxbai-rerank v2 (its MxbaiRerankV2): Qwen2's chat turns around the query,
# "\n", the document, "\n" and its task prompt; an instruction goes before the query.
MXBAI_RERANK_V2 = LlmReranker(
    PairTemplate(
        name="mxbai-rerank-v2",
        before=(
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\n",
        ),
        query="query: {query}",
        query_with_instruction="instruction: {instruction}\nquery: {query}",
        between=("\n",),
        document="document: {document}",
        after=(
            "\n",
            "You are a search relevance expert who evaluates how well documents match search "
            "queries. For each query-document pair, carefully analyze the semantic "
            "relationship between them, then provide your binary relevance judgment (0 for "
            "not relevant, 1 for relevant).\nRelevance:",
            "<|im_end|>\n<|im_start|>assistant\n",
        ),
    ),
    "softmax",
    ("0", "1"),
)

RERANKERS: Mapping[str, LlmReranker] = {
    r.template.name: r for r in (QWEN3_RERANKER, BGE_RERANKER_V2_GEMMA, MXBAI_RERANK_V2)
}


def takes_instruction(template: PairTemplate) -> bool:
    texts = (template.query, template.query_with_instruction or "", *template.after)
    return template.query_with_instruction is not None or any(
        "{instruction}" in t for t in (*texts, *template.before, *template.between)
    )


def instruction_for(
    template: PairTemplate, requested: str | None, configured: str | None = None
) -> str | None:
    """The instruction a pair is read with: the request's, else the model's configured one,
    else the template's default (None: the template's instruction-free form)."""
    if requested is not None:
        return requested
    if configured is not None:
        return configured
    return template.default_instruction


def _fill(text: str, instruction: str | None) -> str:
    return text.replace("{instruction}", instruction or "")


@dataclass(frozen=True)
class PairTexts:
    """The texts of one query's pairs: the fixed parts (tokenised once per model and
    instruction), the query part, and how to make each document's part."""

    before: tuple[str, ...]
    query: str
    between: tuple[str, ...]
    after: tuple[str, ...]
    #: The query part with an empty query: what the template and instruction take of it.
    query_frame: str
    document_format: str

    def document(self, text: str) -> str:
        return self.document_format.replace("{document}", text)


def pair_texts(template: PairTemplate, query: str, instruction: str | None) -> PairTexts:
    """The texts a reranker reads for ``query`` (with ``instruction``, see
    :func:`instruction_for`); each document's part comes from :meth:`PairTexts.document`.

    Only ``{query}``, ``{document}`` and ``{instruction}`` are replaced (no ``str.format``):
    braces in a query, a document or the template's own text stay as they are.
    """
    form = (
        template.query_with_instruction
        if instruction and template.query_with_instruction is not None
        else template.query
    )
    form = _fill(form, instruction)
    return PairTexts(
        before=tuple(_fill(t, instruction) for t in template.before),
        query=form.replace("{query}", query),
        between=tuple(_fill(t, instruction) for t in template.between),
        after=tuple(_fill(t, instruction) for t in template.after),
        query_frame=form.replace("{query}", ""),
        document_format=template.document,
    )


@dataclass(frozen=True)
class PairIds:
    """Token ids of the fixed parts of a template (with one instruction)."""

    before: Sequence[int]
    between: Sequence[int]
    after: Sequence[int]
    #: Ids of the query part with an empty query (the template's and instruction's share).
    query_frame: Sequence[int]

    @property
    def fixed(self) -> int:
        return len(self.before) + len(self.between) + len(self.after)


def pair_budget(ids: PairIds, max_length: int) -> int:
    """Tokens left for the query and document parts; raise :class:`PromptTooLong` when the
    template with its instruction leaves fewer than two (one for each)."""
    budget = max_length - ids.fixed
    if budget - len(ids.query_frame) < 2:
        raise PromptTooLong(Part.INSTRUCTION, ids.fixed + len(ids.query_frame), max_length)
    return budget


def join_pair(
    ids: PairIds,
    query: Sequence[int],
    document: Sequence[int],
    *,
    max_length: int,
    truncate: bool,
    query_share: float,
    index: int = 0,
) -> list[int]:
    """The ids of one pair: fixed parts, query part and document part, at most
    ``max_length`` of them. Over it, truncation cuts the end of the query part to
    ``query_share`` of the budget when it is longer than that, then the end of the document
    part; without truncation :class:`InputTooLong` names document ``index``."""
    budget = pair_budget(ids, max_length)
    total = ids.fixed + len(query) + len(document)
    if total > max_length:
        if not truncate:
            raise InputTooLong(
                index,
                total,
                max_length,
                part=Part.DOCUMENTS,
                what=f"the query with document {index}",
            )
        keep_query = min(len(query), max(int(budget * query_share), budget - len(document)))
        # The query part's own frame (the instruction) stays, with one token of the query.
        keep_query = max(keep_query, min(len(query), len(ids.query_frame) + 1))
        query = query[:keep_query]
        document = document[: max(budget - keep_query, 0)]
    return [*ids.before, *query, *ids.between, *document, *ids.after]
