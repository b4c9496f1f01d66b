"""Deterministic texts for load tests, built from the files in ``corpus/`` beside this module.

A :class:`Corpus` holds the hand-written sentences and word lists of each language; a
:class:`TextSource` draws texts from it with a seeded :class:`random.Random`, so a seed
always yields the same stream of texts.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

#: Share of texts drawn in each language.
DEFAULT_LANGUAGES: dict[str, float] = {"en": 0.8, "zh": 0.2}


def corpus_dir() -> Path:
    """The shipped corpus folder (package data of ``trt_async.bench``)."""
    return Path(str(resources.files("trt_async.bench") / "corpus"))


@dataclass(frozen=True)
class Language:
    name: str
    sentences: tuple[str, ...]
    words: dict[str, tuple[str, ...]]

    @property
    def separator(self) -> str:
        return "" if self.name == "zh" else " "


class Corpus:
    """Sentences and word lists by language."""

    def __init__(self, root: Path | None = None) -> None:
        root = root or corpus_dir()
        words = json.loads((root / "words.json").read_text(encoding="utf-8"))
        self.languages: dict[str, Language] = {}
        for name in ("en", "zh"):
            lines = (root / f"{name}.txt").read_text(encoding="utf-8").splitlines()
            sentences = tuple(line.strip() for line in lines if line.strip())
            self.languages[name] = Language(
                name, sentences, {k: tuple(v) for k, v in words[name].items()}
            )

    def source(self, seed: int, languages: dict[str, float] | None = None) -> TextSource:
        return TextSource(self, seed, languages or DEFAULT_LANGUAGES)


def word_count(text: str) -> int:
    """Words of an English text; for Chinese, characters count as words (roughly a token)."""
    n = 0
    for chunk in text.split():
        cjk = sum(1 for ch in chunk if "\u4e00" <= ch <= "\u9fff")
        n += cjk if cjk else 1
    return n


class TextSource:
    """A seeded stream of texts of chosen lengths."""

    def __init__(self, corpus: Corpus, seed: int, languages: dict[str, float]) -> None:
        self.corpus = corpus
        self.rng = random.Random(seed)
        self._names = list(languages)
        self._weights = [languages[n] for n in self._names]

    def _language(self) -> Language:
        return self.corpus.languages[self.rng.choices(self._names, self._weights)[0]]

    def sentence(self, lang: Language | None = None) -> str:
        """A line of the corpus or, half of the time, a template sentence from word lists."""
        lang = lang or self._language()
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice(lang.sentences)
        w = lang.words
        if lang.name == "zh":
            return (
                f"{rng.choice(w['subject'])}{rng.choice(w['place'])}{rng.choice(w['verb'])}"
                f"那個{rng.choice(w['adjective'])}{rng.choice(w['object'])}，"
                f"{rng.choice(w['clause'])}。"
            )
        subject = rng.choice(w["subject"])
        return (
            f"{subject[0].upper()}{subject[1:]} {rng.choice(w['verb'])} the "
            f"{rng.choice(w['adjective'])} {rng.choice(w['object'])} {rng.choice(w['place'])}, "
            f"{rng.choice(w['clause'])}."
        )

    def text(self, words: int) -> str:
        """Sentences of one language until about ``words`` words (at least one sentence)."""
        lang = self._language()
        parts: list[str] = []
        total = 0
        while not parts or total < words:
            s = self.sentence(lang)
            parts.append(s)
            total += word_count(s)
        text = lang.separator.join(parts)
        if total > words * 1.3 and len(parts) > 1:
            # Trim the last sentence so long targets are met closely.
            cut = text.split()
            if lang.name != "zh" and len(cut) > words:
                text = " ".join(cut[:words])
        return text

    def short(self) -> str:
        """One sentence (about 8 to 20 words)."""
        return self.sentence()

    def long(self) -> str:
        """A long passage, 250 to 400 words (truncated by a 256-token model)."""
        return self.text(self.rng.randint(250, 400))

    def realistic(self) -> str:
        """A log-normal length: median about 25 words, a long tail, clipped to 3..400."""
        words = round(math.exp(self.rng.gauss(math.log(25), 0.8)))
        return self.text(min(max(words, 3), 400))

    def query(self) -> str:
        """A short search-style query."""
        return self.text(self.rng.randint(4, 12))
