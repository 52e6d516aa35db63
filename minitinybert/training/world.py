"""The processes of a run: one (`World`), or K launched by `mpiexec` (`MpiWorld`, through mpi4py).

    mpiexec -n K python -m minitinybert.distill general ...

Data parallelism across processes, as Horovod does it without a framework: every rank holds the
whole model and computes its shards of each global batch (parallel.py), the gradients are summed
with one in-place Allreduce over the flat gradient buffer, and every rank takes the same optimizer
step from the same sum, so the parameters never diverge. Rank 0 alone reads and writes checkpoints,
logs and plots (the others receive what it read by broadcast); the others stay silent unless they fail.

A rank that raises prints one message naming itself and calls MPI's abort, which ends every
process of the job (a rank waiting in a collective for a failed peer would otherwise wait forever).
Without a launcher, or without mpi4py, a run is one process and nothing here does anything.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
import warnings

import numpy as np

from ..data.shards import Shards

# What the common launchers (MPICH's Hydra and Intel MPI, Open MPI, MVAPICH, Slurm's srun) set in each
# process they start: the job's size says "you are one rank of a job" without importing MPI.
_LAUNCHER_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
_LAUNCHER_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")


class WorldError(RuntimeError):
    """A job that cannot run as launched (e.g. started by mpiexec without mpi4py)."""


class World:
    """One process: every collective is the identity."""

    rank, size = 0, 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shards(self, workers: int) -> Shards:
        return Shards(0, workers, workers)

    def allreduce_sum_(self, array: np.ndarray) -> np.ndarray:
        """Sums `array` over the ranks, in place (every rank gets the same sum)."""
        return array

    def allgather(self, obj) -> list:
        """[rank 0's obj, rank 1's, ...] on every rank (small Python objects)."""
        return [obj]

    def bcast(self, obj):
        """Rank 0's `obj` on every rank (small Python objects)."""
        return obj

    def bcast_(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's `array` written into every rank's, in place."""
        return array

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def barrier(self) -> None:
        pass

    def root_call(self, fn, *args, **kwargs):
        """fn(...) run on rank 0 alone; its result, or the exception it raised, on every rank."""
        return fn(*args, **kwargs)

    @contextlib.contextmanager
    def root_first(self):
        """Rank 0 runs the block, then the others (which then find what it cached: a download,
        augmented data)."""
        yield

    def fail(self, message: str | None, code: int = 2) -> int:
        """Reports an error that ends the run; returns the exit status (an MpiWorld aborts the job)."""
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
        return code


class MpiWorld(World):
    """The processes of an MPI job (mpi4py's communicator): collectives as MPI does them."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._shards: dict[int, Shards] = {}

    def shards(self, workers: int) -> Shards:
        # A collective the first time (every rank asks at the same point of the same code).
        if workers not in self._shards:
            counts = self.comm.allgather(int(workers))
            self._shards[workers] = Shards(sum(counts[:self.rank]), int(workers), sum(counts))
        return self._shards[workers]

    def allreduce_sum_(self, array):
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def bcast_(self, array):
        self.comm.Bcast(array, root=0)
        return array

    def any(self, flag):
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def barrier(self):
        # MPICH's blocking barrier spins on its core; ranks waiting for rank 0's evaluation or
        # checkpoint poll gently instead (cores may be shared with other work).
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(0.002)

    def root_call(self, fn, *args, **kwargs):
        outcome = None
        if self.is_root:
            try:
                outcome = (True, fn(*args, **kwargs))
            except Exception as e:       # noqa: BLE001  (handed to every rank, raised there)
                outcome = (False, e)
        self.barrier()
        ok, value = self.bcast(outcome)
        if not ok:
            raise value
        return value

    @contextlib.contextmanager
    def root_first(self):
        if self.is_root:
            try:
                yield
            finally:
                self.barrier()
        else:
            self.barrier()
            yield

    def fail(self, message: str | None, code: int = 2) -> int:
        # An error raised by every rank alike (bad arguments, a decision rank 0 broadcast) should
        # print once: the other ranks give rank 0 a moment to abort the job first.
        if message is not None:
            if not self.is_root:
                time.sleep(1.0)
            print(f"error on rank {self.rank} of {self.size} (pid {os.getpid()}, "
                  f"{self.MPI.Get_processor_name()}): {message}", file=sys.stderr, flush=True)
        self.comm.Abort(code)
        return code                      # not reached


_world: World | None = None


def launched_size() -> int | None:
    """The process count a launcher announced in the environment, or None (not launched by one)."""
    for name in _LAUNCHER_SIZE:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def get_world() -> World:
    """This process's world, created on first use: an MpiWorld when a launcher started more than one
    process, else a one-process World (mpi4py is then not even imported)."""
    global _world
    if _world is None:
        _world = _create()
    return _world


def _create() -> World:
    size = launched_size()
    if size is None or size <= 1:
        return World()
    try:
        from mpi4py import MPI
    except ImportError:
        rank = next((os.environ[n] for n in _LAUNCHER_RANK if n in os.environ), "0")
        raise WorldError(f"launched as rank {rank} of {size} processes, but mpi4py is not installed: every process "
                         f"would train alone and all would write the same files. Install it "
                         f"(pip install -e '.[mpi]'), or run without mpiexec") from None
    world = MpiWorld(MPI.COMM_WORLD)
    if world.size > 1:
        _share_cores(world)
        if not world.is_root:
            warnings.simplefilter("ignore")   # rank 0 shows the same warnings
    return world


def _share_cores(world: MpiWorld) -> None:
    """Ranks on one machine split its cores (numba and BLAS threads), unless the user chose a
    thread count (OMP_NUM_THREADS / NUMBA_NUM_THREADS)."""
    if "OMP_NUM_THREADS" in os.environ or "NUMBA_NUM_THREADS" in os.environ:
        return
    import numba

    from ..engine.process import blas_thread_control
    local = world.comm.Split_type(world.MPI.COMM_TYPE_SHARED).Get_size()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, min(cores // local, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    control = blas_thread_control()
    if control:
        control[0](threads)


def describe(world: World) -> str:
    """One line naming every rank's process (so that a launcher's report of a dead pid names a rank)."""
    import socket
    where = world.allgather((os.getpid(), socket.gethostname()))
    return ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(where))


def run_main(main, argv=None) -> int:
    """main(argv) on every rank. Under MPI a rank that fails in any way (an exception main does not
    report itself, a non-zero status) aborts the whole job instead of leaving its peers waiting in a
    collective forever; the ranks other than 0 write nothing to stdout."""
    try:
        world = get_world()
    except WorldError as e:
        if next((os.environ[n] for n in _LAUNCHER_RANK if n in os.environ), "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2
    if world.size == 1:
        return main(argv)
    if not world.is_root:
        sys.stdout = open(os.devnull, "w")
    try:
        status = main(argv)
    except SystemExit as e:              # argparse's usage errors (it printed them) and --help
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException as e:           # noqa: BLE001
        return world.fail("".join(traceback.format_exception(e)).rstrip())
    if status:
        return world.fail(None, status)
    return 0
