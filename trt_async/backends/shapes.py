"""Shapes every backend is prepared for: the (batch size, padded length) grid.

A backend builds one executable per bucket (a CUDA graph on the GPU, preallocated
buffers on the CPU); the scheduler only ever hands it batches of exactly those shapes.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Bucket:
    """One executable shape: ``batch`` rows padded to ``length`` tokens."""

    batch: int
    length: int

    @property
    def tokens(self) -> int:
        return self.batch * self.length


class BucketGrid:
    """Sorted batch sizes and padded lengths, bounded by ``max_batch_tokens`` and, if set,
    by ``max_batch_attention``: the most rows x length² in one batch, which is what
    attention's (rows, heads, length, length) scores grow with. Past a few thousand tokens
    those scores, not the tokens, are a batch's memory; one item always fits."""

    __slots__ = ("batch_sizes", "lengths", "max_batch_attention", "max_batch_tokens")

    def __init__(
        self,
        batch_sizes: Sequence[int],
        lengths: Sequence[int],
        max_batch_tokens: int,
        max_batch_attention: int | None = None,
    ) -> None:
        if not batch_sizes or not lengths:
            raise ValueError("a bucket grid needs at least one batch size and one length")
        if min(batch_sizes) < 1 or min(lengths) < 1:
            raise ValueError("batch sizes and lengths must be positive")
        self.batch_sizes: tuple[int, ...] = tuple(sorted(set(batch_sizes)))
        self.lengths: tuple[int, ...] = tuple(sorted(set(lengths)))
        if self.batch_sizes[0] != 1:
            # A lone request must run without waiting for company.
            raise ValueError("batch sizes must include 1")
        if max_batch_tokens < self.lengths[-1]:
            raise ValueError(
                f"max_batch_tokens ({max_batch_tokens}) must be at least the longest "
                f"padded length ({self.lengths[-1]})"
            )
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_attention = max_batch_attention

    @property
    def max_length(self) -> int:
        return self.lengths[-1]

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def length_for(self, n_tokens: int) -> int:
        """The smallest padded length that holds ``n_tokens``."""
        i = bisect.bisect_left(self.lengths, n_tokens)
        if i == len(self.lengths):
            raise ValueError(
                f"{n_tokens} tokens exceed the grid's longest length {self.max_length}"
            )
        return self.lengths[i]

    def batch_for(self, n_items: int) -> int:
        """The smallest batch size that holds ``n_items`` (rows beyond are padding)."""
        i = bisect.bisect_left(self.batch_sizes, n_items)
        if i == len(self.batch_sizes):
            raise ValueError(f"{n_items} items exceed the grid's largest batch {self.max_batch}")
        return self.batch_sizes[i]

    def capacity(self, length: int) -> int:
        """The most items one batch of padded ``length`` may carry under ``max_batch_tokens``
        (and ``max_batch_attention``); at least one."""
        limit = self.max_batch_tokens // length
        if self.max_batch_attention is not None:
            limit = min(limit, self.max_batch_attention // (length * length))
        i = bisect.bisect_right(self.batch_sizes, limit)
        return self.batch_sizes[max(i - 1, 0)]

    def buckets(self) -> Iterator[Bucket]:
        """Every bucket a batch can land in (batch sizes above a length's capacity are skipped)."""
        for length in self.lengths:
            cap = self.capacity(length)
            for batch in self.batch_sizes:
                if batch <= cap:
                    yield Bucket(batch, length)

    def __repr__(self) -> str:
        return (
            f"BucketGrid(batch_sizes={list(self.batch_sizes)}, lengths={list(self.lengths)}, "
            f"max_batch_tokens={self.max_batch_tokens}, "
            f"max_batch_attention={self.max_batch_attention})"
        )
