"""A task's examples as batches: one pass (`iterate_batches`), shuffled epochs that resume exactly
(`TaskBatches`, the training stream), and a model's logits for every example (`predict_logits`).

Each takes the examples' token ids as a `TokenTable` (tokens.py: tokenized once, cached as Arrow
by the pipeline), or tokenizes them in memory when given none; a batch is its rows padded to the
longest, as `Tokenizer.encode` pads.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from .tasks import DataError, Examples
from .tokenizer import Batch, Tokenizer
from .tokens import TokenTable, tokenize_in_memory


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def _table(examples: Examples, tokenizer: Tokenizer, max_length: int, tokens: TokenTable | None) -> TokenTable:
    if tokens is None:
        return tokenize_in_memory(examples, tokenizer, max_length)
    if len(tokens) != len(examples) or tokens.max_length != max_length:
        raise DataError(f"token ids of {len(tokens)} examples at max length {tokens.max_length} given for "
                        f"{len(examples)} examples at max length {max_length}")
    return tokens


def iterate_batches(examples: Examples, tokenizer: Tokenizer, batch_size: int, max_length: int,
                    rng: np.random.Generator | None = None, start: int = 0,
                    tokens: TokenTable | None = None) -> Iterator[tuple[Batch, np.ndarray]]:
    """(Batch, labels) over one pass; shuffled by `rng.permutation` when given. `start` skips that many
    batches: resuming mid-epoch with the rng in its state at the epoch's start gives the same batches.
    `tokens`: the examples' token ids (default: tokenized here)."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    n = len(examples)
    total = num_batches(n, batch_size)
    if not 0 <= start <= total:
        raise DataError(f"start={start} is outside 0..{total} (batches in one pass over {n} examples)")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    tokens = _table(examples, tokenizer, max_length, tokens) if start < total else tokens
    for b in range(start, total):
        index = order[b * batch_size:(b + 1) * batch_size]
        yield tokens.batch(index), examples.labels[index]


class TaskBatches:
    """Shuffled epochs over a task's examples, epoch e in the order drawn from (seed, e).

    A batch stream for the training loop: `state_dict()` taken between batches is the position
    (epoch, batch index), and `load_state_dict` of it gives the batches an uninterrupted stream
    would have given. `tokens`: the examples' token ids (default: tokenized here)."""

    def __init__(self, examples: Examples, tokenizer: Tokenizer, batch_size: int, max_length: int, seed: int,
                 tokens: TokenTable | None = None):
        if len(examples) == 0:
            raise DataError(f"no examples to train on ({examples.source or examples.task.name})")
        self.examples, self.tokenizer = examples, tokenizer
        self.tokens = _table(examples, tokenizer, max_length, tokens)
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self.epoch, self.index = 0, 0
        self._it = None

    def __iter__(self) -> "TaskBatches":
        return self

    def __next__(self) -> tuple[Batch, np.ndarray]:
        if self._it is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._it = iterate_batches(self.examples, self.tokenizer, self.batch_size, self.max_length, rng=rng,
                                       start=self.index, tokens=self.tokens)
        try:
            item = next(self._it)
        except StopIteration:
            self.epoch, self.index, self._it = self.epoch + 1, 0, None
            return next(self)
        self.index += 1
        return item

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, index = int(state["epoch"]), int(state["index"])
        except (TypeError, KeyError, ValueError):
            raise DataError(f"not a TaskBatches state (expected epoch and index): {state!r:.200}") from None
        if epoch < 0 or not 0 <= index <= self.per_epoch:
            raise DataError(f"TaskBatches state: epoch {epoch}, batch {index} is outside the {self.per_epoch} "
                            f"batches of an epoch")
        self.epoch, self.index, self._it = epoch, index, None


def predict_logits(model, examples: Examples, tokenizer: Tokenizer, max_length: int,
                   batch_size: int = 64, tokens: TokenTable | None = None) -> np.ndarray:
    """Eval-mode logits (N, num_labels) of a `Bert` for every example, in order (batched by length:
    less padding). `tokens`: the examples' token ids (default: tokenized here)."""
    tokens = _table(examples, tokenizer, max_length, tokens)
    order = np.argsort([len(t) + (len(examples.pairs[i]) if examples.pairs else 0)
                        for i, t in enumerate(examples.texts)], kind="stable")
    out = np.zeros((len(examples), model.config.num_labels), np.float32)
    for lo in range(0, len(order), batch_size):
        index = order[lo:lo + batch_size]
        batch = tokens.batch(index)
        out[index] = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
    return out
