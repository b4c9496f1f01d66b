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
from itertools import chain

from tokenizers import Encoding as RustEncoding
from tokenizers import Tokenizer

from trt_async.backends.modelfiles import PairTemplate
from trt_async.core.errors import EmptyInput, InputTooLong, Part
from trt_async.core.templates import (
    PairIds,
    PromptTooLong,
    instruction_for,
    join_pair,
    pair_budget,
    pair_texts,
)
from trt_async.core.tokenizer import Direction, Encoding, TextTokenizer


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
) -> list[Encoding]:
    """``prompt + text`` for each text, tokenised with the model's special tokens (an EOS
    the tokenizer appends stays last). Over ``max_length`` tokens a text is cut from
    ``direction`` when truncating (the prompt is kept whole), else refused with
    :class:`InputTooLong`; a prompt that leaves no room for any text is refused with
    :class:`PromptTooLong` whatever the texts."""
    if not prompt:
        return tok.encode(texts, truncate=truncate, direction=direction)
    for i, text in enumerate(texts):
        if not text:
            raise EmptyInput(Part.INPUTS, i)
    max_length = tok.max_length
    alone = prompt_length(tok, prompt)
    if alone >= max_length:
        raise PromptTooLong(Part.PROMPT_NAME, alone, max_length)
    rust = tok.untruncated
    encoded: list[RustEncoding] = rust.encode_batch(
        [prompt + text for text in texts], add_special_tokens=True
    )
    trail = len(tok.suffix_ids)
    out: list[Encoding] = []
    for i, enc in enumerate(encoded):
        ids, types = list(enc.ids), list(enc.type_ids)
        if len(ids) > max_length:
            if not truncate:
                raise InputTooLong(i, len(ids), max_length)
            if direction == "right":
                # As the tokenizer's own truncation: the text's last tokens go, the special
                # tokens at both ends (an appended EOS) stay.
                ids = ids[: max_length - trail] + ids[len(ids) - trail :]
                types = types[: max_length - trail] + types[len(types) - trail :]
            else:
                cut = _cut_start(rust, prompt, texts[i], max_length)
                ids, types = list(cut.ids), list(cut.type_ids)
        out.append(Encoding(ids, types if tok.with_type_ids else None))
    return out


def _cut_start(rust: Tokenizer, prompt: str, text: str, max_length: int) -> RustEncoding:
    """``prompt`` with the end of ``text``: as many of its last tokens as fit. The text is
    cut at a token's first character and tokenised again with the prompt (so the ids are
    those of the string sent), dropping more tokens while the result is too long."""
    pieces = rust.encode(text, add_special_tokens=False)
    joined = rust.encode(prompt + text, add_special_tokens=True)
    drop = len(joined.ids) - max_length
    while drop < len(pieces.ids):
        enc = rust.encode(prompt + text[pieces.offsets[drop][0] :], add_special_tokens=True)
        if len(enc.ids) <= max_length:
            return enc
        drop += len(enc.ids) - max_length
    raise PromptTooLong(Part.PROMPT_NAME, len(rust.encode(prompt).ids), max_length)


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
    fixed = [*texts.before, *texts.between, *texts.after, texts.query_frame, texts.query]
    pieces = [e.ids for e in rust.encode_batch(fixed, add_special_tokens=False)]
    n_before, n_between = len(texts.before), len(texts.between)
    n_fixed = n_before + n_between + len(texts.after)
    ids = PairIds(
        before=list(chain.from_iterable(pieces[:n_before])),
        between=list(chain.from_iterable(pieces[n_before : n_before + n_between])),
        after=list(chain.from_iterable(pieces[n_before + n_between : n_fixed])),
        query_frame=pieces[n_fixed],
    )
    pair_budget(ids, tok.max_length)  # the template and instruction must leave room
    query_ids = pieces[n_fixed + 1]
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
