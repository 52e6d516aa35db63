"""A task's examples as batches: one pass (`iterate_batches`), shuffled epochs that resume exactly
(`TaskBatches`, the training stream), and a model's logits for every example (`predict_logits`).

A batch is padded to its longest row, so random batches of short and long sentences compute
mostly padding: one SST-2 epoch at max length 64 holds 0.90M real tokens, and random batches of
32 compute 2.70M. `TaskBatches` groups by length instead, as most trainers do: each epoch's
random permutation is cut into windows of `window` batches, each window is sorted by length and
cut into batches, and the order of all the epoch's batches is shuffled (0.92M computed, 1.02x).
A batch then holds sentences of nearly one length, but which lengths come when stays random.

Each takes the examples' token ids as a `TokenTable` (tokens.py: tokenized once, kept as Arrow by
the pipeline), or tokenizes them in memory when given none: a batch is its rows padded to the
longest, as `Tokenizer.encode` pads, and the table's lengths are what grouping sorts by.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numba
import numpy as np

from ..engine.process import single_threaded_blas
from ..engine.progress import progress_bar
from .tasks import DataError, Examples
from .token_cache import TokenTable, tokenize_in_memory
from .tokenizer import Batch, Tokenizer

DEFAULT_WINDOW = 100     # batches per sorting window: the SST-2 ratio is 1.02 from about 50 on


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def token_ids(examples: Examples, tokenizer: Tokenizer, max_length: int, tokens: TokenTable | None = None
              ) -> TokenTable:
    """The examples' token ids: `tokens` (checked to be theirs), else tokenized in memory."""
    if tokens is None:
        return tokenize_in_memory(examples, tokenizer, max_length)
    if len(tokens) != len(examples) or tokens.max_length != max_length:
        raise DataError(f"token ids of {len(tokens)} examples at max length {tokens.max_length} given for "
                        f"{len(examples)} examples at max length {max_length}")
    return tokens


def grouped_batches(lengths: np.ndarray, batch_size: int, window: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches (arrays of example indices) grouped by length: a random permutation,
    sorted by length within windows of `window` batches, cut into batches, the batches shuffled.
    Every example is in exactly one batch; only the last window can end in a short batch."""
    order = rng.permutation(len(lengths))
    span = window * batch_size
    batches = []
    for lo in range(0, len(order), span):
        chunk = order[lo:lo + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def random_batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """One epoch of batches in permutation order (in file order without `rng`)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[b:b + batch_size] for b in range(0, n, batch_size)]


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
    batches = random_batches(n, batch_size, rng)[start:]
    tokens = token_ids(examples, tokenizer, max_length, tokens) if batches else tokens
    for index in batches:
        yield tokens.batch(index), examples.labels[index]


class TaskBatches:
    """Shuffled epochs over a task's examples, epoch e's batches drawn from (seed, e): grouped by
    length within windows of `window` batches (see the module's docstring), or random batches
    with `window=0`. Yields (Batch, labels), followed by the batch's rows of each array in
    `extras` (arrays with one row per example, such as the teacher's logits). `tokens`: the
    examples' token ids (default: tokenized here).

    A batch stream for the training loop: `state_dict()` taken between batches is the position
    (epoch, batch index), and `load_state_dict` of it gives the batches an uninterrupted stream
    would have given."""

    def __init__(self, examples: Examples, tokenizer: Tokenizer, batch_size: int, max_length: int, seed: int,
                 window: int = DEFAULT_WINDOW, extras: tuple[np.ndarray, ...] = (),
                 tokens: TokenTable | None = None):
        if len(examples) == 0:
            raise DataError(f"no examples to train on ({examples.source or examples.task.name})")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if window < 0:
            raise DataError(f"the length-grouping window must be >= 0 batches, got {window}")
        self.examples, self.tokenizer = examples, tokenizer
        self.attach(*extras)
        self.batch_size, self.max_length, self.seed, self.window = batch_size, max_length, seed, int(window)
        self.tokens = token_ids(examples, tokenizer, max_length, tokens)
        self.lengths = self.tokens.lengths if self.window else None
        self.per_epoch = math.ceil(len(examples) / batch_size)
        self.epoch, self.index = 0, 0
        self._epoch_batches: list[np.ndarray] | None = None

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Epoch `epoch`'s batches, as arrays of example indices."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.window:
            return grouped_batches(self.lengths, self.batch_size, self.window, rng)
        return random_batches(len(self.examples), self.batch_size, rng)

    def attach(self, *extras: np.ndarray) -> None:
        """The arrays (one row per example) whose batch rows follow each batch from now on."""
        for extra in extras:
            if len(extra) != len(self.examples):
                raise DataError(f"an array given with the batches has {len(extra)} rows for "
                                f"{len(self.examples)} examples")
        self.extras = tuple(extras)

    def first_steps(self, steps: int) -> np.ndarray:
        """The sorted indices of the examples that the first `steps` batches hold (from epoch 0)."""
        drawn, epoch = [], 0
        while steps > 0:
            batches = self.epoch_batches(epoch)[:steps]
            drawn += batches
            steps, epoch = steps - len(batches), epoch + 1
        return np.unique(np.concatenate(drawn)) if drawn else np.zeros(0, np.int64)

    def __iter__(self) -> "TaskBatches":
        return self

    def __next__(self) -> tuple:
        if self.index == self.per_epoch:
            self.epoch, self.index, self._epoch_batches = self.epoch + 1, 0, None
        if self._epoch_batches is None:
            self._epoch_batches = self.epoch_batches(self.epoch)
        index = self._epoch_batches[self.index]
        self.index += 1
        batch = self.tokens.batch(index)
        return (batch, self.examples.labels[index], *(extra[index] for extra in self.extras))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "window": self.window}

    def load_state_dict(self, state: dict) -> None:
        try:
            epoch, index = int(state["epoch"]), int(state["index"])
            window = int(state.get("window", 0))      # states saved before grouping had random batches
        except (TypeError, KeyError, ValueError, AttributeError):
            raise DataError(f"not a TaskBatches state (expected epoch and index): {state!r:.200}") from None
        if epoch < 0 or not 0 <= index <= self.per_epoch:
            raise DataError(f"TaskBatches state: epoch {epoch}, batch {index} is outside the {self.per_epoch} "
                            f"batches of an epoch")
        if window != self.window:
            raise DataError(f"this run's batches were drawn with a length-grouping window of {window} batches, "
                            f"not {self.window}: resume with --length-window {window}")
        self.epoch, self.index, self._epoch_batches = epoch, index, None


def predict_logits(model, examples: Examples, tokenizer: Tokenizer, max_length: int,
                   batch_size: int = 64, tokens: TokenTable | None = None, progress: str | None = None,
                   rows: np.ndarray | None = None, workers: int | None = 1) -> np.ndarray:
    """Eval-mode logits (N, num_labels) of a `Bert` for every example, in order, or (len(rows),
    num_labels) for the examples of index `rows`, in their order. Batches of examples sorted by token
    length: almost no padding. `tokens`: the examples' token ids (default: tokenized here); `progress`:
    a progress bar's title (long passes), or None; `workers`: threads, each running whole batches on
    single-threaded BLAS and Numba (as training's data parallelism does: the serial gaps of one
    overlap the work of the other); None: the thread count, as --workers."""
    workers = max(1, int(workers or numba.get_num_threads()))
    tokens = token_ids(examples, tokenizer, max_length, tokens)
    rows = np.arange(len(examples)) if rows is None else np.asarray(rows, dtype=np.int64)
    order = np.argsort(tokens.lengths[rows], kind="stable")      # positions in `rows`
    out = np.zeros((len(rows), model.config.num_labels), np.float32)
    bar = progress_bar(len(rows), progress, enabled=progress is not None)

    def run(lo: int) -> None:
        index = order[lo:lo + batch_size]
        batch = tokens.batch(rows[index])
        out[index] = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
        if bar is not None:
            bar.update(len(index))

    starts = range(0, len(order), batch_size)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(workers, initializer=numba.set_num_threads, initargs=(1,)) as pool, \
                single_threaded_blas():
            list(pool.map(run, starts))
    else:
        for lo in starts:
            run(lo)
    if bar is not None:
        bar.close()
    return out
