"""Data parallelism over threads for one training step.

On a few cores, splitting every operation of a step over the cores (multi-threaded BLAS, parallel
Numba kernels) leaves them idle in every serial gap: small products, layer norms, reshapes, the
Python between calls. Measured on 2 cores, a distillation step scaled only 1.3x from 1 to 2 threads.
Splitting the *batch* instead runs the whole step on each half in its own thread, each with
single-threaded BLAS and Numba (NumPy and BLAS release the GIL), so the gaps of one overlap the
work of the other. Each shard writes its own gradient buffer, weighted by its share of the batch
(every loss is a mean over rows of equal length, so the shard means weighted by rows/B sum to the
full-batch mean), and the buffers are summed into `model.grads`: the same gradient as the whole
batch at once, to float rounding. Dropout draws one child generator per shard from the step's
generator: a run is exactly reproducible for a given number of workers.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, is_dataclass, replace

import numba
import numpy as np

from . import kernels
from .params import ParamSet
from .training import StepResult


@contextlib.contextmanager
def single_threaded_blas():
    """OpenBLAS at one thread for the duration (process-wide: the shards call it concurrently)."""
    control = kernels.blas_thread_control()
    if not control:
        yield
        return
    set_threads, get_threads = control
    saved = get_threads()
    set_threads(1)
    try:
        yield
    finally:
        set_threads(saved)


def shard_rows(n_rows: int, workers: int) -> list[tuple[int, int]]:
    """Near-equal contiguous row ranges, none empty: (10, 3) -> [(0, 4), (4, 7), (7, 10)]."""
    n = max(1, min(workers, n_rows))
    bounds = np.linspace(0, n_rows, n + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _take(item, lo: int, hi: int):
    """Rows lo:hi of a batch: an array, a dataclass of arrays (tokenizer.Batch), or a tuple of them."""
    if item is None:
        return None
    if isinstance(item, np.ndarray):
        return item[lo:hi]
    if is_dataclass(item):
        return replace(item, **{f.name: _take(getattr(item, f.name), lo, hi) for f in fields(item)})
    if isinstance(item, tuple):
        return type(item)(_take(x, lo, hi) for x in item)
    raise TypeError(f"cannot split a {type(item).__name__} by rows")


class DataParallel:
    """Runs `step(batch, rng, grads=..., share=...)` on row shards of the batch in `workers` threads
    and leaves the summed gradient in `model.grads`. With one worker it calls `step` directly.

    `step` must write its gradient into the given ParamSet, scaled by `share` (the shard's fraction of
    the batch), and return a StepResult whose losses are the shard's own means."""

    def __init__(self, model, workers: int | None = None):
        self.model = model
        self.workers = max(1, int(workers or numba.get_num_threads()))
        self._buffers: list[ParamSet] = []
        self._pool = None
        self._local = threading.local()

    def _buffer(self, i: int) -> ParamSet:
        if self.model.grads is None or self.model.grads.dtype != self.model.params.dtype:
            self.model.grads = self.model.params.zeros_like()
        if i == 0:
            return self.model.grads           # shard 0 writes the model's own buffer: no copy
        while len(self._buffers) < i:
            self._buffers.append(self.model.params.zeros_like())
        return self._buffers[i - 1]

    def _init_worker(self):
        numba.set_num_threads(1)              # thread-local: the main thread keeps its setting

    def __call__(self, step, batch, rng) -> StepResult:
        n_rows = len(batch[0]) if isinstance(batch, tuple) else len(batch)
        parts = shard_rows(n_rows, self.workers)
        if len(parts) == 1:
            return step(batch, rng, grads=self._buffer(0), share=1.0)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="minitinybert-shard",
                                            initializer=self._init_worker)
        seeds = None if rng is None else rng.integers(2**63, size=len(parts))
        buffers = [self._buffer(i) for i in range(len(parts))]

        def run(i):
            lo, hi = parts[i]
            child = None if seeds is None else np.random.default_rng(int(seeds[i]))
            return step(_take(batch, lo, hi), child, grads=buffers[i], share=(hi - lo) / n_rows)

        with single_threaded_blas():
            results = list(self._pool.map(run, range(len(parts))))
        # the sum of the shards' gradients, itself split over the threads: a serial pass over the
        # whole buffer (tens of MB) was a measurable share of the step
        total = buffers[0].data
        bounds = np.linspace(0, total.size, len(parts) + 1).astype(int)

        def add(i):
            lo, hi = bounds[i], bounds[i + 1]
            for extra in buffers[1:]:
                total[lo:hi] += extra.data[lo:hi]

        list(self._pool.map(add, range(len(parts))))
        shares = [(hi - lo) / n_rows for lo, hi in parts]
        losses = {key: sum(s * r.losses[key] for s, r in zip(shares, results)) for key in results[0].losses}
        return StepResult(losses, sum(r.sequences for r in results), sum(r.tokens for r in results),
                          sum(r.padded_tokens for r in results))

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
