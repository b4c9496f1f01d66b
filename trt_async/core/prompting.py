"""Tokenising prompted texts and LLM reranker pairs for a model's tokenizer.

The texts come from :mod:`~trt_async.core.templates`; this module turns them into the
:class:`~trt_async.core.tokenizer.Encoding` items the scheduler runs. Like the tokenizer's
own methods these block: run them off the event loop.

A prompt is tokenised together with its text, as sentence-transformers does (it prepends
the prompt's string), so the ids are its ids even where the prompt's last token and the
text's first would merge (Qwen3-Embedding's ``...Query:`` before a word does). Truncation
then cuts the text, never the prompt, from either end; the prompt's tokens count in an
item's length like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

from msgspec import UNSET
from tokenizers import Encoding as RustEncoding
from tokenizers import Tokenizer

from trt_async.backends.modelfiles import PairTemplate
from trt_async.core.capabilities import Capabilities
from trt_async.core.config import ConfigError, ModelConfig
from trt_async.core.errors import EmptyInput, InputTooLong, InvalidInput, Part
from trt_async.core.templates import (
    PairIds,
    PairTexts,
    PromptTooLong,
    instruction_for,
    join_pair,
    pair_budget,
    pair_texts,
)
from trt_async.core.tokenizer import Direction, Encoding, TextRequest, TextTokenizer


@dataclass(frozen=True, slots=True)
class PromptedRequest:
    """One request's texts with the prompt put before each (see :func:`encode_each`)."""

    texts: Sequence[str]
    prompt: str
    truncate: bool
    direction: Direction = "right"
    #: Where the prompt came from (a name or its text), for the error when it is too long.
    part: Part = Part.PROMPT_NAME


def prompt_length(tok: TextTokenizer, prompt: str) -> int:
    """Tokens the prompt takes alone, with the model's special tokens (what
    sentence-transformers counts as a prompt's length)."""
    return len(tok.untruncated.encode(prompt, add_special_tokens=True).ids)


def encode_prompted(
    tok: TextTokenizer,
    texts: Sequence[str],
    prompt: str,
    *,
    truncate: bool,
    direction: Direction = "right",
    part: Part = Part.PROMPT_NAME,
) -> list[Encoding]:
    """``prompt + text`` for each text, tokenised with the model's special tokens (an EOS
    the tokenizer appends stays last). Over ``max_length`` tokens a text is cut from
    ``direction`` when truncating (the prompt is kept whole), else refused with
    :class:`InputTooLong`; a prompt that leaves no room for any text is refused with
    :class:`PromptTooLong` (about ``part``) whatever the texts."""
    if not prompt:
        return tok.encode(texts, truncate=truncate, direction=direction)
    (result,) = encode_prompted_each(
        tok, [PromptedRequest(texts, prompt, truncate, direction, part)]
    )
    if isinstance(result, InvalidInput):
        raise result
    return result


def encode_prompted_each(
    tok: TextTokenizer, requests: Sequence[PromptedRequest]
) -> list[list[Encoding] | InvalidInput]:
    """Several prompted requests with one tokenizer call for all their texts: each gets its
    encodings (as :func:`encode_prompted` makes them), or the error it would have raised,
    without failing the others."""
    out: list[list[Encoding] | InvalidInput] = [[] for _ in requests]
    max_length = tok.max_length
    lengths: dict[str, int] = {}
    live: list[int] = []
    for k, request in enumerate(requests):
        empty = next((i for i, text in enumerate(request.texts) if not text), None)
        if empty is not None:
            out[k] = EmptyInput(Part.INPUTS, empty)
            continue
        prompt = request.prompt
        if prompt not in lengths:
            lengths[prompt] = prompt_length(tok, prompt)
        if lengths[prompt] >= max_length:
            out[k] = PromptTooLong(request.part, lengths[prompt], max_length)
            continue
        live.append(k)
    if not live:
        return out
    rust = tok.untruncated
    # Offsets are not needed here (only a cut from the left reads them, from its own call).
    encode_batch = getattr(rust, "encode_batch_fast", None) or rust.encode_batch
    joined = [requests[k].prompt + text for k in live for text in requests[k].texts]
    encoded: list[RustEncoding] = encode_batch(joined, add_special_tokens=True)
    start = 0
    for k in live:
        request = requests[k]
        mine = encoded[start : start + len(request.texts)]
        start += len(request.texts)
        try:
            out[k] = [_fit(tok, request, i, enc) for i, enc in enumerate(mine)]
        except InvalidInput as exc:
            out[k] = exc
    return out


def _fit(tok: TextTokenizer, request: PromptedRequest, i: int, enc: RustEncoding) -> Encoding:
    """Item ``i`` of ``request`` (``enc``: its prompt and text) within ``max_length``."""
    max_length = tok.max_length
    ids = enc.ids
    types = enc.type_ids if tok.with_type_ids else None
    if len(ids) > max_length:
        if not request.truncate:
            raise InputTooLong(i, len(ids), max_length)
        if request.direction == "right":
            # As the tokenizer's own truncation: the text's last tokens go, the special
            # tokens at both ends (an appended EOS) stay.
            keep, trail = max_length - len(tok.suffix_ids), len(ids) - len(tok.suffix_ids)
            ids = ids[:keep] + ids[trail:]
            types = types[:keep] + types[trail:] if types is not None else None
        else:
            cut = _cut_start(tok.untruncated, request, request.texts[i], max_length)
            ids = cut.ids
            types = cut.type_ids if types is not None else None
    return Encoding(ids, types)


def _cut_start(
    rust: Tokenizer, request: PromptedRequest, text: str, max_length: int
) -> RustEncoding:
    """The prompt with the end of ``text``: as many of its last tokens as fit. The text is
    cut at a token's first character and tokenised again with the prompt (so the ids are
    those of the string sent), dropping more tokens while the result is too long."""
    prompt = request.prompt
    pieces = rust.encode(text, add_special_tokens=False)
    joined = rust.encode(prompt + text, add_special_tokens=True)
    drop = len(joined.ids) - max_length
    while drop < len(pieces.ids):
        enc = rust.encode(prompt + text[pieces.offsets[drop][0] :], add_special_tokens=True)
        if len(enc.ids) <= max_length:
            return enc
        drop += len(enc.ids) - max_length
    raise PromptTooLong(request.part, len(rust.encode(prompt).ids), max_length)


def encode_each(
    tok: TextTokenizer, requests: Sequence[TextRequest | PromptedRequest]
) -> list[list[Encoding] | InvalidInput]:
    """Requests with and without prompts, each kind tokenised together (see
    :meth:`TextTokenizer.encode_each` and :func:`encode_prompted_each`); each request gets
    its encodings or its error."""
    out: list[list[Encoding] | InvalidInput] = [[] for _ in requests]
    plain = [k for k, r in enumerate(requests) if isinstance(r, TextRequest)]
    prompted = [k for k, r in enumerate(requests) if isinstance(r, PromptedRequest)]
    if plain:
        texts = [r for r in requests if isinstance(r, TextRequest)]
        for k, result in zip(plain, tok.encode_each(texts), strict=True):
            out[k] = result
    if prompted:
        with_prompts = [r for r in requests if isinstance(r, PromptedRequest)]
        for k, result in zip(prompted, encode_prompted_each(tok, with_prompts), strict=True):
            out[k] = result
    return out


# -- LLM reranker pairs ------------------------------------------------------------------------


def _template_ids(rust: Tokenizer, texts: PairTexts) -> tuple[PairIds, list[int]]:
    """The ids of a template's fixed parts (with one instruction), and of its query part."""
    fixed = [*texts.before, *texts.between, *texts.after, texts.query_frame, texts.query]
    pieces = [list(e.ids) for e in rust.encode_batch(fixed, add_special_tokens=False)]
    n_before, n_between = len(texts.before), len(texts.between)
    n_fixed = n_before + n_between + len(texts.after)
    ids = PairIds(
        before=list(chain.from_iterable(pieces[:n_before])),
        between=list(chain.from_iterable(pieces[n_before : n_before + n_between])),
        after=list(chain.from_iterable(pieces[n_before + n_between : n_fixed])),
        query_frame=pieces[n_fixed],
    )
    return ids, pieces[n_fixed + 1]


def check_instruction(tok: TextTokenizer, template: PairTemplate, instruction: str | None) -> None:
    """Raise :class:`PromptTooLong` when ``template`` with ``instruction`` (else its
    default) leaves no room for a query and a document in ``max_length`` tokens."""
    texts = pair_texts(template, "", instruction_for(template, None, instruction))
    ids, _ = _template_ids(tok.untruncated, texts)
    pair_budget(ids, tok.max_length)


def encode_llm_pairs(
    tok: TextTokenizer,
    template: PairTemplate,
    query: str,
    documents: Sequence[str],
    *,
    instruction: str | None,
    truncate: bool,
    configured_instruction: str | None = None,
) -> list[Encoding]:
    """One item per document: ``query`` and that document in ``template``'s layout, read
    with the request's ``instruction``, else the model's configured one, else the
    template's default (:func:`~trt_async.core.templates.instruction_for`), each part
    tokenised on its own as the model's reference code does. The query and every fixed
    part are tokenised once for all documents."""
    if not query:
        raise EmptyInput(Part.QUERY)
    if not documents:
        raise EmptyInput(Part.DOCUMENTS)
    for i, document in enumerate(documents):
        if not document:
            raise EmptyInput(Part.DOCUMENTS, i)
    texts = pair_texts(
        template, query, instruction_for(template, instruction, configured_instruction)
    )
    rust = tok.untruncated
    ids, query_ids = _template_ids(rust, texts)
    pair_budget(ids, tok.max_length)  # the template and instruction must leave room
    docs = rust.encode_batch([texts.document(d) for d in documents], add_special_tokens=False)
    return [
        Encoding(
            join_pair(
                ids,
                query_ids,
                doc.ids,
                max_length=tok.max_length,
                truncate=truncate,
                query_share=template.query_share,
                index=i,
            ),
            None,
        )
        for i, doc in enumerate(docs)
    ]


# -- checks at load time -----------------------------------------------------------------------


def check_configured(
    label: str, caps: Capabilities, config: ModelConfig, tok: TextTokenizer
) -> None:
    """Refuse, with a :class:`ConfigError`, a model config whose prompts or instruction
    the model cannot take: prompts for a model that does not embed, an instruction for
    one without a template that has room for it, and a prompt or an instruction that
    leaves no room for the text in ``max_length`` tokens."""
    if (config.prompts is not None or config.default_prompt_name is not UNSET) and not caps.embeds:
        raise ConfigError(
            f"{label}: prompts and default_prompt_name are for embedding models; this model "
            "gives logits (use instruction for an LLM reranker)"
        )
    if config.instruction is not None and not caps.takes_instruction:
        raise ConfigError(
            f"{label}: instruction is for LLM rerankers exported with a template "
            "(trt-async export --task rerank --template ...); this model has none"
        )
    # The default prompt goes before every text, and the config's are the operator's own;
    # a model's other prompts too long for a small max_length refuse only their requests.
    checked = {*(config.prompts or {}), *filter(None, [caps.default_prompt_name])}
    for name in sorted(checked & caps.prompts.keys()):
        text = caps.prompts[name]
        length = prompt_length(tok, text) if text else 0
        if length >= tok.max_length:
            raise ConfigError(
                f"{label}: prompt {name!r} takes {length} tokens, leaving no room for the "
                f"text in max_length {tok.max_length}; shorten it or raise max_length"
            )
    if caps.pair_template is not None:
        try:
            check_instruction(tok, caps.pair_template, caps.instruction)
        except PromptTooLong as exc:
            what = "its instruction" if caps.instruction is not None else "its default instruction"
            raise ConfigError(
                f"{label}: the template with {what} takes {exc.tokens} tokens, leaving no "
                f"room for a query and a document in max_length {tok.max_length}; shorten "
                "the instruction or raise max_length"
            ) from None
