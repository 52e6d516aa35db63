"""Process-wide tuning for the programs that train or run models: one explicit call, `tune_process()`.

Importing any module of the package changes nothing process-wide (tests/test_structure.py checks
it): a library user keeps their environment, allocator and thread settings. The command-line
entry points (distill, infer, export, tools/bench/*.py) call `tune_process()` first thing in
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

It also holds the process-wide thread resources that code running BLAS on threads of its own
shares: OpenBLAS's thread count (`single_threaded_blas()`, see below) and one thread pool.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

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


# --- OpenBLAS's threads ----------------------------------------------------------------------------
# OpenBLAS's thread count is process-wide. It changes only inside `single_threaded_blas()`, a region
# opened by the code that runs BLAS on threads of its own: the attention core (kernels.py, one region
# per call, around all of its products), parallel.DataParallel (around each sharded step) and
# batches.predict_logits (around its worker threads). A multithreaded OpenBLAS called from two
# threads at once serialises them on a lock (measured on the teacher's q k^T: 13 ms became 317 ms).

def _find_blas_threads():
    """OpenBLAS's (set, get) thread-count functions of the library numpy uses, or None."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                try:
                    set_, get = (getattr(lib, f"{prefix}{verb}_num_threads{suffix}") for verb in ("set", "get"))
                except AttributeError:
                    continue
                set_.argtypes, set_.restype, get.restype = [ctypes.c_int], None, ctypes.c_int
                return set_, get
    return None


_blas = None
_blas_lock = threading.Lock()
_blas_regions = 0          # open single_threaded_blas() regions, in any thread
_blas_saved = 0            # the thread count to restore when the last one closes


def blas_thread_control():
    """(set_num_threads, get_num_threads) of the loaded OpenBLAS, or False when not found."""
    global _blas
    if _blas is None:
        _blas = _find_blas_threads() or False
    return _blas


@contextlib.contextmanager
def single_threaded_blas():
    """OpenBLAS at one thread for the duration. Regions nest and overlap across threads: the first
    to open saves the thread count, the last to close restores it."""
    global _blas_regions, _blas_saved
    control = blas_thread_control()
    if not control:
        yield
        return
    set_threads, get_threads = control
    with _blas_lock:
        if _blas_regions == 0:
            _blas_saved = get_threads()
            set_threads(1)
        _blas_regions += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_regions -= 1
            if _blas_regions == 0:
                set_threads(_blas_saved)


_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def thread_pool(n: int) -> ThreadPoolExecutor:
    """A pool of at least n threads, shared by the callers of the process (grown, never shrunk)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < n:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(n, thread_name_prefix="minitinybert-bmm"), n
            if old is not None:
                old.shutdown(wait=False)
        return _pool
