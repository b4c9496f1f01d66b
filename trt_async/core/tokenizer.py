"""Rust ``tokenizers`` behind one small class: texts, pairs and pre-tokenised ids.

Three tokenizer instances are kept (truncate right, truncate left, no truncation) because
truncation is state on a ``Tokenizer`` and requests choose it; sharing one and toggling it
would race between worker threads. The caller runs :meth:`TextTokenizer.encode` off the
event loop: ``encode_batch`` releases the GIL and parallelises in Rust.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tokenizers import Encoding as _RustEncoding
from tokenizers import Tokenizer

from trt_async.backends.modelfiles import ModelDirError
from trt_async.core.errors import EmptyInput, ForeignTokenIds, InputTooLong, InvalidInput, Part

TextInput = str | tuple[str, str]
Direction = Literal["right", "left"]


@dataclass(frozen=True, slots=True)
class TextRequest:
    """One request's texts and how to cut them (see :meth:`TextTokenizer.encode_each`)."""

    texts: Sequence[TextInput]
    truncate: bool
    direction: Direction = "right"


def _encode_fast(tok: Tokenizer, texts: list[TextInput]) -> list[_RustEncoding]:
    fast = getattr(tok, "encode_batch_fast", None)  # tokenizers >= 0.20.2 has it
    encoded: list[_RustEncoding] = (fast or tok.encode_batch)(texts, add_special_tokens=True)
    return encoded


@dataclass(frozen=True, slots=True)
class Encoding:
    """One item ready for the scheduler: token ids and, if the model takes them, type ids."""

    ids: Sequence[int]
    type_ids: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One token as TEI's ``/tokenize`` reports it (offsets are character offsets)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TextTokenizer:
    """Encodes texts, (query, document) pairs and raw id lists for one model."""

    def __init__(self, path: Path, max_length: int, *, with_type_ids: bool) -> None:
        self.max_length = max_length
        self.with_type_ids = with_type_ids
        self._right = self._load(path)
        self._right.enable_truncation(max_length, strategy="longest_first", direction="right")
        self._left = self._load(path)
        self._left.enable_truncation(max_length, strategy="longest_first", direction="left")
        self._full = self._load(path)
        self.vocab_size = self._full.get_vocab_size(with_added_tokens=True)
        self.pad_id = self._pad_id(self._full)
        self.prefix_ids, self.suffix_ids = self._framing(self._full)

    @property
    def untruncated(self) -> Tokenizer:
        """The Rust tokenizer without truncation or padding, for callers that assemble ids
        themselves (:mod:`~trt_async.core.prompting`); shared, so never change its settings."""
        return self._full

    @staticmethod
    def _load(path: Path) -> Tokenizer:
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for any bad file
            raise ModelDirError(
                f"{path}: not a tokenizer.json the tokenizers library can load ({exc}); copy "
                "the model's own tokenizer.json there"
            ) from None
        # Some tokenizer.json files (all-MiniLM-L6-v2's among them) pad every text to a fixed
        # length; the scheduler pads per bucket, so padding here would only cost compute.
        tok.no_padding()
        tok.no_truncation()
        return tok

    @staticmethod
    def _pad_id(tok: Tokenizer) -> int:
        for name in ("[PAD]", "<pad>", "<|padding|>"):
            token_id = tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return 0

    @staticmethod
    def _framing(tok: Tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The special tokens this tokenizer puts before and after a single text
        (``[CLS]`` / ``[SEP]`` for BERT, ``<s>`` / ``</s>`` for XLM-R; none for some)."""
        enc = tok.encode("a", add_special_tokens=True)
        mask = enc.special_tokens_mask
        lead = next((i for i, special in enumerate(mask) if not special), len(mask))
        trail = next((i for i, special in enumerate(reversed(mask)) if not special), 0)
        ids = list(enc.ids)
        return tuple(ids[:lead]), tuple(ids[len(ids) - trail :])

    def encode(
        self,
        inputs: Sequence[TextInput],
        *,
        truncate: bool,
        direction: Direction = "right",
    ) -> list[Encoding]:
        """Tokenise with special tokens; raise :class:`InputTooLong` if not truncating."""
        for i, text in enumerate(inputs):
            parts = text if isinstance(text, tuple) else (text,)
            if any(not p for p in parts):
                raise EmptyInput(Part.INPUTS, i)
        tok = (self._right if direction == "right" else self._left) if truncate else self._full
        encoded: list[_RustEncoding] = tok.encode_batch(list(inputs), add_special_tokens=True)
        if not truncate:
            for i, enc in enumerate(encoded):
                if len(enc.ids) > self.max_length:
                    raise InputTooLong(i, len(enc.ids), self.max_length)
        if self.with_type_ids:
            return [Encoding(enc.ids, enc.type_ids) for enc in encoded]
        return [Encoding(enc.ids) for enc in encoded]

    def encode_each(self, requests: Sequence[TextRequest]) -> list[list[Encoding] | InvalidInput]:
        """Several requests' texts, tokenised with one call per truncation setting: each
        request gets its encodings, or the error :meth:`encode` would have raised for it
        (an empty text, a text too long), without failing the others.

        Offsets are not computed (``encode_batch_fast``): nothing the scheduler runs reads
        them.
        """
        out: list[list[Encoding] | InvalidInput] = [[] for _ in requests]
        groups: dict[tuple[bool, Direction], list[int]] = {}
        for k, request in enumerate(requests):
            empty = next(
                (
                    i
                    for i, text in enumerate(request.texts)
                    if not text or (isinstance(text, tuple) and not all(text))
                ),
                None,
            )
            if empty is not None:
                out[k] = EmptyInput(Part.INPUTS, empty)
                continue
            groups.setdefault((request.truncate, request.direction), []).append(k)
        for (truncate, direction), members in groups.items():
            tok = (self._right if direction == "right" else self._left) if truncate else self._full
            texts = [text for k in members for text in requests[k].texts]
            encoded = _encode_fast(tok, texts)
            start = 0
            for k in members:
                n = len(requests[k].texts)
                mine = encoded[start : start + n]
                start += n
                too_long = (
                    None
                    if truncate
                    else next((i for i, e in enumerate(mine) if len(e.ids) > self.max_length), None)
                )
                if too_long is not None:
                    out[k] = InputTooLong(too_long, len(mine[too_long].ids), self.max_length)
                elif self.with_type_ids:
                    out[k] = [Encoding(e.ids, e.type_ids) for e in mine]
                else:
                    out[k] = [Encoding(e.ids) for e in mine]
        return out

    def encode_pairs(
        self,
        firsts: Sequence[str],
        seconds: Sequence[str],
        pairs: Sequence[tuple[int, int]],
        *,
        truncate: bool,
        parts: tuple[Part, Part] = (Part.INPUTS, Part.INPUTS),
    ) -> list[Encoding]:
        """``(firsts[i], seconds[j])`` for each ``(i, j)`` of ``pairs``, each text tokenised once
        (truncated from the right, as pairs are).

        A rerank query or a zero-shot text appears in every pair: tokenising it per pair
        costs its length times the pairs (and the tokenizer's truncation keeps every cut
        piece). Each text is tokenised alone, cut to what any pair could keep of it, and
        joined with the tokenizer's own post-processor (special tokens, type ids,
        ``longest_first`` truncation): the same ids as tokenising each pair's text.
        """
        for part, texts in zip(parts, (firsts, seconds), strict=True):
            for i, text in enumerate(texts):
                if not text:
                    raise EmptyInput(part, i)
        tok = self._right if truncate else self._full
        a = self._full.encode_batch(list(firsts), add_special_tokens=False)
        b = self._full.encode_batch(list(seconds), add_special_tokens=False)
        if truncate:
            # The tokenizer's ``longest_first`` keeps at most ``budget`` tokens of either text
            # and splits by which one is longer (tokenizers' utils/truncation.rs), so a text
            # cut to ``budget + 1`` (first) or to ``budget`` / ``budget + 2`` (second: shorter
            # / not shorter than its first) ends the same way as the whole text.
            budget = self.max_length - tok.num_special_tokens_to_add(is_pair=True)
            n1 = [len(e.ids) for e in a]
            n2 = [len(e.ids) for e in b]
            a = self._cut(firsts, a, [budget + 1] * len(a))
            seconds_cut: dict[tuple[int, int], _RustEncoding] = {}
        out: list[Encoding] = []
        for k, (i, j) in enumerate(pairs):
            second = b[j]
            if truncate and n2[j] > budget:
                keep = budget + 2 if n2[j] >= n1[i] else budget
                if (j, keep) not in seconds_cut:
                    seconds_cut[(j, keep)] = self._cut([seconds[j]], [b[j]], [keep])[0]
                second = seconds_cut[(j, keep)]
            enc = tok.post_process(a[i], second, add_special_tokens=True)
            if not truncate and len(enc.ids) > self.max_length:
                raise InputTooLong(k, len(enc.ids), self.max_length)
            out.append(Encoding(enc.ids, enc.type_ids if self.with_type_ids else None))
        return out

    def _cut(
        self, texts: Sequence[str], encoded: list[_RustEncoding], keep: Sequence[int]
    ) -> list[_RustEncoding]:
        """Each encoding longer than its ``keep`` re-tokenised from its text cut at that
        token's character offset: no cut-off piece is kept (the post-processor would pair
        every such piece with its partner, which is what makes long shared texts costly)."""
        cut: dict[int, str] = {}
        for i, enc in enumerate(encoded):
            n = keep[i]
            if len(enc.ids) > n:
                cut[i] = texts[i][: enc.offsets[n - 1][1]]
        out = list(encoded)
        if cut:
            again = self._full.encode_batch(list(cut.values()), add_special_tokens=False)
            for i, enc in zip(cut, again, strict=True):
                out[i] = enc
        return out

    def _refuse_over_max(self, index: int, text: str, add_special_tokens: bool) -> None:
        """Raise :class:`InputTooLong` when ``text`` has more than ``max_length`` tokens.

        Prefixes of doubling length are tokenised until one has too many tokens or the whole
        text has been read: the work stays within twice what the answer needs."""
        size = 8 * (self.max_length + 1)
        while True:
            piece = text[:size]
            n = len(self._full.encode(piece, add_special_tokens=add_special_tokens).ids)
            if n > self.max_length:
                raise InputTooLong(
                    index, n, self.max_length, at_least=len(piece) < len(text), truncatable=False
                )
            if len(piece) == len(text):
                return
            size *= 2

    def encode_ids(
        self,
        inputs: Sequence[Sequence[int]],
        *,
        truncate: bool,
        direction: Direction = "right",
    ) -> list[Encoding]:
        """Pre-tokenised ids (OpenAI allows them), taken as the whole sequence with specials."""
        out: list[Encoding] = []
        for i, ids in enumerate(inputs):
            if len(ids) == 0:
                raise EmptyInput(Part.INPUTS, i, token_list=True)
            bad = (
                None
                if min(ids) >= 0 and max(ids) < self.vocab_size
                else next(t for t in ids if not 0 <= t < self.vocab_size)
            )
            if bad is not None:
                reason = f"it holds token id {bad}, outside this model's vocabulary"
                raise ForeignTokenIds(i, f"{reason} [0, {self.vocab_size})")
            # This tokenizer frames every text with its special tokens; a list that lacks
            # them was made by another tokenizer (or without them) and would embed as noise.
            head, tail = self.prefix_ids, self.suffix_ids
            if (head and tuple(ids[: len(head)]) != head) or (
                tail and tuple(ids[len(ids) - len(tail) :]) != tail
            ):
                reason = (
                    f"such a list starts with {list(head)} and ends with {list(tail)} (the "
                    "model's special tokens)"
                )
                raise ForeignTokenIds(i, reason)
            if len(ids) > self.max_length:
                if not truncate:
                    raise InputTooLong(i, len(ids), self.max_length)
                ids = ids[: self.max_length] if direction == "right" else ids[-self.max_length :]
            ids = list(ids)
            out.append(Encoding(ids, [0] * len(ids) if self.with_type_ids else None))
        return out

    def clip(self, texts: Sequence[str], max_tokens: int) -> list[str]:
        """Each text cut after its first ``max_tokens`` tokens (special tokens not counted),
        at a character offset so the cut text tokenises the same way (Cohere's
        ``max_tokens_per_doc``)."""
        out = list(texts)
        for i, enc in enumerate(self._full.encode_batch(out, add_special_tokens=False)):
            if len(enc.ids) > max_tokens:
                out[i] = out[i][: enc.offsets[max_tokens - 1][1]]
        return out

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary entry of each id (as FlagEmbedding's ``convert_id_to_token``)."""
        return [self._full.id_to_token(i) or "" for i in ids]

    def tokens(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[TokenInfo]]:
        """Tokens with offsets for TEI's ``/tokenize`` (not truncated: it reports what was
        sent). A text over ``max_length`` tokens is refused, as TEI does, after tokenising
        no more of it than it takes to know (so a huge text costs little)."""
        for i, text in enumerate(texts):
            self._refuse_over_max(i, text, add_special_tokens)
        result: list[list[TokenInfo]] = []
        for enc in self._full.encode_batch(list(texts), add_special_tokens=add_special_tokens):
            row = []
            for tid, text, special, (start, stop) in zip(
                enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets, strict=True
            ):
                row.append(
                    TokenInfo(
                        id=tid,
                        text=text,
                        special=bool(special),
                        start=None if special else start,
                        stop=None if special else stop,
                    )
                )
            result.append(row)
        return result
