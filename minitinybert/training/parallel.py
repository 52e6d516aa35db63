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

Across processes (world.py, under mpiexec) the same scheme runs one level up: the global batch is
cut into ranks x workers shards, each rank computes its own shards in its threads, and one in-place
Allreduce sums the ranks' gradient buffers. Shard i draws the i-th dropout seed and weighs its
gradient by its rows over the global batch's, whichever process holds it, so K processes of one
thread compute what one process of K workers does (the same sum for K = 2; for more, the partial
sums are grouped differently and agree to float rounding).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, is_dataclass, replace

import numba
import numpy as np

from ..data.shards import Rows, shard_rows
from ..engine.params import ParamSet
from ..engine.process import single_threaded_blas
from .loop import StepResult
from .world import World


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
    """Runs `step(batch, rng, grads=..., share=...)` on this process's row shards of the global batch
    in `workers` threads and leaves the gradient summed over all shards (of every process of the
    `world`) in `model.grads`. With one shard it calls `step` directly.

    `step` must write its gradient into the given ParamSet, scaled by `share` (the shard's fraction of
    the global batch), and return a StepResult whose losses are the shard's own means."""

    def __init__(self, model, workers: int | None = None, world: World | None = None):
        self.model = model
        self.workers = max(1, int(workers or numba.get_num_threads()))
        self.world = world or World()
        self.shards = self.world.shards(self.workers)
        self._buffers: list[ParamSet] = []
        self._pool = None

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
        if isinstance(batch, Rows):
            item, first_row, n_rows = batch.item, batch.lo, batch.n_rows
        else:
            item, first_row, n_rows = batch, 0, len(batch[0]) if isinstance(batch, tuple) else len(batch)
        if self.shards.total == 1:       # one process, one worker: the step's own dropout generator
            return step(item, rng, grads=self._buffer(0), share=1.0)
        parts = shard_rows(n_rows, self.shards.total)
        seeds = None if rng is None else rng.integers(2**63, size=len(parts))   # every rank draws them all
        mine = [i for i in self.shards.indices if i < len(parts)]
        buffers = [self._buffer(j) for j in range(max(1, len(mine)))]

        def run(j):
            i = mine[j]
            lo, hi = parts[i]
            child = None if seeds is None else np.random.default_rng(int(seeds[i]))
            return step(_take(item, lo - first_row, hi - first_row), child, grads=buffers[j],
                        share=(hi - lo) / n_rows)

        if len(mine) > 1:
            local = self._in_threads(run, buffers)
        elif mine:
            local = [run(0)]
        else:                            # a batch with fewer rows than shards can leave a rank none
            local = []
            buffers[0].data.fill(0.0)
        self.world.allreduce_sum_(buffers[0].data)
        # every shard's losses, in shard order, summed alike on every rank (the order one process uses)
        shares = [(hi - lo) / n_rows for lo, hi in (parts[i] for i in mine)]
        everyone = [r for rank in self.world.allgather(list(zip(shares, local))) for r in rank]
        losses = {key: sum(s * r.losses[key] for s, r in everyone) for key in everyone[0][1].losses}
        return StepResult(losses, sum(r.sequences for _, r in everyone), sum(r.tokens for _, r in everyone),
                          sum(r.padded_tokens for _, r in everyone))

    def _in_threads(self, run, buffers: list[ParamSet]) -> list[StepResult]:
        """run(j) for each of this process's shards in the pool; their gradients summed into buffers[0]."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="minitinybert-shard",
                                            initializer=self._init_worker)
        with single_threaded_blas():
            results = list(self._pool.map(run, range(len(buffers))))
        # the sum of the shards' gradients, itself split over the threads: a serial pass over the
        # whole buffer (tens of MB) was a measurable share of the step
        total = buffers[0].data
        bounds = np.linspace(0, total.size, len(buffers) + 1).astype(int)

        def add(i):
            lo, hi = bounds[i], bounds[i + 1]
            for extra in buffers[1:]:
                total[lo:hi] += extra.data[lo:hi]

        list(self._pool.map(add, range(len(buffers))))
        return results

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
