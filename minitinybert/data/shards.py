"""Shards of a global batch: which rows each worker thread and process computes.

A global batch is cut into ranks x workers near-equal shards of contiguous rows; shard i belongs
to one thread of one process wherever it runs. Data streams (corpus.py) read only their process's
shards; training/parallel.py runs them and sums their gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class Shards:
    """Which shards of every global batch this process computes: global shard indices
    first .. first + count - 1 of `total` (ranks x their threads). A run's results depend on
    `total` (each shard has its own dropout stream and, for the corpus, its own documents),
    not on how the shards are spread over processes."""

    def __init__(self, first: int, count: int, total: int):
        if not (0 <= first and 1 <= count and first + count <= total):
            raise ValueError(f"shards {first}..{first + count - 1} do not fit in {total}")
        self.first, self.count, self.total = first, count, total

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.count)

    def __eq__(self, other):
        return isinstance(other, Shards) and (self.first, self.count, self.total) == (other.first, other.count,
                                                                                     other.total)

    def __repr__(self):
        return f"Shards(first={self.first}, count={self.count}, total={self.total})"


def shard_rows(n_rows: int, workers: int) -> list[tuple[int, int]]:
    """Near-equal contiguous row ranges, none empty: (10, 3) -> [(0, 4), (4, 7), (7, 10)]."""
    n = max(1, min(workers, n_rows))
    bounds = np.linspace(0, n_rows, n + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


@dataclass
class Rows:
    """Rows lo:hi of a global batch of n_rows: the part of it that one process holds (a batch stream
    that reads only this process's shards yields these; a plain batch is the whole global batch)."""
    item: object
    lo: int
    hi: int
    n_rows: int


def rows_of(shards: Shards, n_rows: int) -> tuple[int, int]:
    """The rows lo:hi that `shards` cover in a global batch of n_rows (lo == hi: none)."""
    parts = shard_rows(n_rows, shards.total)
    mine = [parts[i] for i in shards.indices if i < len(parts)]
    return (mine[0][0], mine[-1][1]) if mine else (n_rows, n_rows)
