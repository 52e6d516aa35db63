"""Process-wide tuning for the programs that train or run models: one explicit call, `tune_process()`.

Importing any module of the package changes nothing process-wide (tests/test_structure.py checks
it): a library user keeps their environment, allocator and thread settings. The command-line
entry points (distill, infer, export, tools/bench_*.py) call `tune_process()` first thing in
their `main()`, before any Numba kernel has run, because one of its settings only takes effect
before the OpenMP runtime loads. It sets:

- OMP_WAIT_POLICY=PASSIVE (unless already set). OpenBLAS and Numba's OpenMP workers share the
  cores; with GNU OpenMP's default busy-waiting, idle workers spin after every kernel and starve
  the BLAS threads of the next matmul (measured on 2 cores: a 0.05 ms layer norm after a 0.8 ms
  matmul cost 8 ms). libgomp reads the variable once, when it loads, which is when a parallel
  Numba kernel first runs: set later, it does nothing.
- glibc's malloc keeps freed memory for reuse (see `_reuse_freed_memory`); opt out with
  MINITINYBERT_MALLOC=default.
- Numba's thread count from OMP_NUM_THREADS (unless NUMBA_NUM_THREADS is set), so that one
  setting governs both Numba and BLAS. Numba's setting is per thread: this sets the calling one's.
"""
from __future__ import annotations

import os

_tuned = False


def tune_process() -> None:
    """Apply the settings above; idempotent (later calls do nothing)."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")      # first: before numba starts OpenMP
    _reuse_freed_memory()
    _numba_threads_from_omp()


def _reuse_freed_memory() -> None:
    """Keep glibc from returning each freed activation to the OS. Arrays of a few MB are, by
    default, mmap'ed and unmapped one by one, so every step faults in its activations page by
    page again (measured on tinybert4 at 32x128: 235k page faults and ~12% of a training step).
    With a 32 MB mmap threshold (glibc's ceiling) and no trimming, freed activations are reused
    by the next step; the process keeps its peak heap. Opt out: MINITINYBERT_MALLOC=default."""
    if os.environ.get("MINITINYBERT_MALLOC") == "default":
        return
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (musl, macOS, Windows): leave the defaults
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


def _numba_threads_from_omp() -> None:
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp and omp.isdigit() and "NUMBA_NUM_THREADS" not in os.environ:
        import numba
        numba.set_num_threads(max(1, min(int(omp), numba.config.NUMBA_NUM_THREADS)))
