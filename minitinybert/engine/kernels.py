"""Numba kernels for the memory-bound parts of BERT, with the same signatures as `ops.py`.

Each kernel fuses what NumPy would do in several passes over memory (mean, variance, scale and
shift of a layer norm; bias, erf and product of a GELU; mask, max, exp, sum and divide of a
softmax) into one or two passes, in parallel over rows. `ops.py` holds the plain-NumPy twin
of each; tests/test_kernels.py checks that the two agree, and that their caches share one layout
(the NamedTuples of ops.py). Matrix products stay with BLAS.

The building blocks (exp, erf, row_max, dropout_kept, dropout_args, rows3, FASTMATH) are public for
kernels kept outside the package, which must compute the same numbers as these
(tools/experiments/fused_attention.py).

Importing this module changes nothing process-wide. Threads: Numba's own setting (NUMBA_NUM_THREADS,
or process.tune_process(), which the command-line entry points call first, from OMP_NUM_THREADS).
"""
from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import ops, process
from .ops import MASK_VALUE  # noqa: F401  (re-exported: the kernels use the same mask convention)
from .ops import AttentionCache, LayerNormCache, SublayerExitCache, dropout_spec

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Loops that sum must be allowed to reassociate to vectorise; no 'nnan'/'ninf', which would let
# LLVM assume away the infinities and NaNs that these kernels must propagate or produce.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# nogil=True on every kernel: parallel.py runs batch shards in threads, and a kernel that held the
# GIL would make the other shard wait through its whole memory-bound pass.
# error_model="numpy" on every kernel: Python's model checks each division for zero and raises,
# and that branch alone stops LLVM from vectorising a loop (measured: erf 12.7 ms -> 2.9 ms).
_F32 = np.float32


def _chunks(n_rows: int) -> int:
    """How many row blocks a reduction is split into: one per thread, at least 1."""
    return max(1, min(n_rows, numba.get_num_threads()))


# --- vectorisable float32 exp and erf -----------------------------------------------------------
# Without Intel's SVML (not installed here) LLVM cannot vectorise math.exp / math.erf: every element
# becomes a libm call. These float32 versions are plain arithmetic that vectorises; `exp` and `erf`
# pick them for float32 arguments only, float64 keeps libm's exact functions (the float64 gradient
# checks compare against finite differences at ~1e-10).

@intrinsic
def _bits_to_f64(typingctx, bits):
    """Reinterprets an int64's bits as a float64 (how 2**n is built without a libm call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


# Both evaluate in float64 and round once to float32: float32 Horner steps would add several ulp
# (measured: erf 4e-7 instead of 1e-7). The kernels are memory bound; the wider lanes cost nothing.

_LOG2E = 1.4426950408889634
# 2**f = e**(f ln2) on |f| <= 1/2: Taylor to degree 8, truncation error < 3e-10 relative
_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8 = [math.log(2.0) ** k / math.factorial(k) for k in range(9)]


@njit(inline="always")
def _exp32(x):  # float32 -> float32, within 1 ulp; exactly 0 below -87.3 (where exp underflows)
    t = min(max(np.float64(x) * _LOG2E, -126.0), 127.0)
    n = np.floor(t + 0.5)
    f = t - n                                                      # [-1/2, 1/2]
    p = _E8 * f + _E7
    p = p * f + _E6
    p = p * f + _E5
    p = p * f + _E4
    p = p * f + _E3
    p = p * f + _E2
    p = p * f + _E1
    p = p * f + _E0
    r = np.float32(p * _bits_to_f64((np.int64(n) + np.int64(1023)) << np.int64(52)))   # * 2**n
    return r if x > _F32(-87.3) else _F32(0.0)


# erf on [-4, 4] as x p(x^2) / q(x^2) (the rational fit Eigen and XLA use for float32; fit error
# 6.5e-8); beyond |x| = 4 erf is +-1 to float32 precision. tests/test_kernels.py checks ~1e-7.
_A1, _A3, _A5, _A7 = -1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05
_A9, _A11, _A13 = -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10
_B0, _B2, _B4, _B6, _B8 = -1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, \
    -2.13374055278905e-04, -1.45660718464996e-05


@njit(inline="always")
def _erf32(x):  # float32 -> float32
    x = min(max(np.float64(x), -4.0), 4.0)
    x2 = x * x
    p = _A13 * x2 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    q = _B8 * x2 + _B6
    q = q * x2 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    return np.float32(x * p / q)


def exp(x):  # the type-dispatching front of _exp32 / math.exp (Numba only)
    return math.exp(x)


def erf(x):
    return math.erf(x)


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(exp, inline="always")
def _exp_impl(x):
    return (lambda x: _exp32(x)) if _is_f32(x) else (lambda x: math.exp(x))


@overload(erf, inline="always")
def _erf_impl(x):
    return (lambda x: _erf32(x)) if _is_f32(x) else (lambda x: math.erf(x))


@njit(inline="always")
def row_max(row):  # (S,) -> scalar. Eight running maxima: one would be a chain of dependent
    # compares that LLVM does not vectorise without "nnan" (measured: 1.06 ns an element against 0.29)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]
    n = row.shape[0]
    j = 0
    while j + 8 <= n:
        m0, m1, m2, m3 = max(m0, row[j]), max(m1, row[j + 1]), max(m2, row[j + 2]), max(m3, row[j + 3])
        m4, m5, m6, m7 = max(m4, row[j + 4]), max(m5, row[j + 5]), max(m6, row[j + 6]), max(m7, row[j + 7])
        j += 8
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    while j < n:
        m = max(m, row[j])
        j += 1
    return m


# --- dropout masks ------------------------------------------------------------------------------
# The same counter-based mask as ops.dropout_keep: element n of a call is kept iff the high 32 bits
# of splitmix64(key + (n + 1) * golden) >= threshold. Computed where it is used, never stored.

DROPOUT_GOLDEN, DROPOUT_MIX1, DROPOUT_MIX2 = ops.DROPOUT_GOLDEN, ops.DROPOUT_MIX1, ops.DROPOUT_MIX2
_U1, _U27, _U30, _U31, _U32 = np.uint64(1), np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(32)


@njit(inline="always")
def dropout_kept(key, threshold, n):  # n: the element's flat index (int64)
    z = key + (np.uint64(n) + _U1) * DROPOUT_GOLDEN
    z = (z ^ (z >> _U30)) * DROPOUT_MIX1
    z = (z ^ (z >> _U27)) * DROPOUT_MIX2
    z = z ^ (z >> _U31)
    return (z >> _U32) >= threshold


def dropout_args(spec, dtype):
    """(key, threshold, scale) as kernel arguments; threshold 0 keeps everything (eval mode)."""
    if spec is None:
        return np.uint64(0), np.uint64(0), dtype.type(1.0)
    key, threshold, scale = spec
    return key, threshold, dtype.type(scale)


@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def _dropout(x, key, threshold, scale, y):  # (N,) -> (N,)
    n = x.shape[0]
    block = 4096
    for b in prange((n + block - 1) // block):
        for i in range(b * block, min(n, (b + 1) * block)):
            y[i] = x[i] * scale if dropout_kept(key, threshold, i) else x[i] * 0


def dropout_forward(x, p, rng):
    """ops.dropout_forward: the same masks from the same rng."""
    spec = dropout_spec(p, rng)
    if spec is None:
        return x, None
    x1 = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(x1)
    _dropout(x1, *dropout_args(spec, x1.dtype), y)
    return y.reshape(x.shape), spec


def dropout_backward(dy, cache):
    if cache is None:
        return dy
    d1 = np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty_like(d1)
    _dropout(d1, *dropout_args(cache, d1.dtype), dx)
    return dx.reshape(dy.shape)


# --- layer norm ---------------------------------------------------------------------------

@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def _layernorm_fwd(x, gamma, beta, eps, y, xhat, rstd):  # (N, C) -> (N, C)
    n, c = x.shape
    for i in prange(n):
        mean = 0.0
        for j in range(c):
            mean += x[i, j]
        mean /= c
        var = 0.0
        for j in range(c):
            d = x[i, j] - mean
            var += d * d
        r = 1.0 / math.sqrt(var / c + eps)
        rstd[i] = r
        for j in range(c):
            h = (x[i, j] - mean) * r
            xhat[i, j] = h
            y[i, j] = h * gamma[j] + beta[j]


@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def _layernorm_bwd(dy, xhat, gamma, rstd, dx, dgamma_parts, dbeta_parts):
    n, c = dy.shape
    n_chunks = dgamma_parts.shape[0]
    rows_per = (n + n_chunks - 1) // n_chunks
    for k in prange(n_chunks):
        for i in range(k * rows_per, min(n, (k + 1) * rows_per)):
            mean_dxhat = 0.0
            mean_dxhat_xhat = 0.0
            for j in range(c):
                g = dy[i, j] * gamma[j]
                mean_dxhat += g
                mean_dxhat_xhat += g * xhat[i, j]
                dgamma_parts[k, j] += dy[i, j] * xhat[i, j]
                dbeta_parts[k, j] += dy[i, j]
            mean_dxhat /= c
            mean_dxhat_xhat /= c
            r = rstd[i]
            for j in range(c):
                dx[i, j] = r * (dy[i, j] * gamma[j] - mean_dxhat - xhat[i, j] * mean_dxhat_xhat)


def layernorm_forward(x, gamma, beta, eps):  # (..., C) -> (..., C)
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
    y = np.empty_like(x2)
    xhat = np.empty_like(x2)
    rstd = np.empty((x2.shape[0], 1), dtype=x.dtype)
    _layernorm_fwd(x2, gamma, beta, eps, y, xhat, rstd[:, 0])
    return y.reshape(shape), LayerNormCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma)


def layernorm_backward(dy, cache):
    xhat, rstd, gamma = cache.xhat, cache.rstd, cache.gamma
    c = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, c)
    n = dy2.shape[0]
    dx = np.empty_like(dy2)
    parts = np.zeros((2, _chunks(n), c), dtype=np.float64)
    _layernorm_bwd(dy2, xhat.reshape(-1, c), gamma, rstd.reshape(-1), dx, parts[0], parts[1])
    sums = parts.sum(axis=1).astype(dy.dtype)
    return dx.reshape(dy.shape), sums[0], sums[1]


# --- bias + dropout + residual + layer norm -------------------------------------------------------
# y = LN(residual + dropout(h + bias)) in one pass per row (the NumPy twin takes five); the backward
# recomputes the dropout mask from its key and also sums the bias gradient, in the same pass.

@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _bias_dropout_residual_ln_fwd(h, bias, res, key, threshold, dscale, gamma, beta, eps, y, xhat, rstd):
    n, c = h.shape                                                    # (N, C) -> (N, C)
    for i in prange(n):
        mean = 0.0
        if threshold == 0:
            for j in range(c):
                v = h[i, j] + bias[j] + res[i, j]
                xhat[i, j] = v                                        # the sum, for now
                mean += v
        else:
            base = i * c
            for j in range(c):
                v = (h[i, j] + bias[j]) * dscale
                if not dropout_kept(key, threshold, base + j):
                    v = v * 0
                v += res[i, j]
                xhat[i, j] = v
                mean += v
        mean /= c
        var = 0.0
        for j in range(c):
            d = xhat[i, j] - mean
            var += d * d
        r = 1.0 / math.sqrt(var / c + eps)
        rstd[i] = r
        for j in range(c):
            xh = (xhat[i, j] - mean) * r
            xhat[i, j] = xh
            y[i, j] = xh * gamma[j] + beta[j]


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _ln_dropout_bwd(dy, xhat, gamma, rstd, key, threshold, dscale, dsum, dh, parts):
    n, c = dy.shape                                  # parts (3, chunks, C): dgamma, dbeta, dbias
    n_chunks = parts.shape[1]
    rows_per = (n + n_chunks - 1) // n_chunks
    for k in prange(n_chunks):
        for i in range(k * rows_per, min(n, (k + 1) * rows_per)):
            mean_g = 0.0
            mean_gx = 0.0
            for j in range(c):
                g = dy[i, j] * gamma[j]
                mean_g += g
                mean_gx += g * xhat[i, j]
                parts[0, k, j] += dy[i, j] * xhat[i, j]
                parts[1, k, j] += dy[i, j]
            mean_g /= c
            mean_gx /= c
            r = rstd[i]
            base = i * c
            for j in range(c):
                d = r * (dy[i, j] * gamma[j] - mean_g - xhat[i, j] * mean_gx)
                dsum[i, j] = d
                if threshold != 0:
                    d = d * dscale if dropout_kept(key, threshold, base + j) else d * 0
                dh[i, j] = d
                parts[2, k, j] += d


def bias_dropout_residual_layernorm_forward(h, bias, residual, gamma, beta, eps, p, rng):
    spec = dropout_spec(p, rng)
    shape = h.shape
    c = shape[-1]
    h2 = np.ascontiguousarray(h).reshape(-1, c)
    y = np.empty_like(h2)
    xhat = np.empty_like(h2)
    rstd = np.empty(h2.shape[0], dtype=h.dtype)
    _bias_dropout_residual_ln_fwd(h2, bias, np.ascontiguousarray(residual).reshape(-1, c),
                                  *dropout_args(spec, h2.dtype), gamma, beta, eps, y, xhat, rstd)
    return y.reshape(shape), SublayerExitCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma, spec)


def bias_dropout_residual_layernorm_backward(dy, cache):
    """-> dresidual (the layer norm's input gradient), dh, dbias, dgamma, dbeta."""
    xhat, rstd, gamma, spec = cache.xhat, cache.rstd.reshape(-1), cache.gamma, cache.dropout
    c = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, c)
    dsum = np.empty_like(dy2)
    dh = dsum if spec is None else np.empty_like(dy2)       # without dropout dh is dsum itself
    parts = np.zeros((3, _chunks(dy2.shape[0]), c), dtype=np.float64)
    _ln_dropout_bwd(dy2, xhat.reshape(-1, c), gamma, rstd, *dropout_args(spec, dy2.dtype), dsum, dh, parts)
    sums = parts.sum(axis=1).astype(dy.dtype)
    return dsum.reshape(dy.shape), dh.reshape(dy.shape), sums[2], sums[0], sums[1]


# --- bias + exact GELU ----------------------------------------------------------------------
# float32 uses the vectorised _erf32/_exp32 (~1e-7); float64 libm's erf and exp.

@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _bias_gelu_fwd(x, bias, sqrt1_2, y, u):  # (N, F) -> (N, F)
    n, f = x.shape
    for i in prange(n):
        for j in range(f):
            v = x[i, j] + bias[j]
            u[i, j] = v
            y[i, j] = _F32(0.5) * v * (_F32(1.0) + erf(v * sqrt1_2))


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _bias_gelu_bwd(dy, u, sqrt1_2, inv_sqrt_2pi, du, dbias_parts):
    n, f = dy.shape
    n_chunks = dbias_parts.shape[0]
    rows_per = (n + n_chunks - 1) // n_chunks
    for k in prange(n_chunks):
        part = dbias_parts[k]
        for i in range(k * rows_per, min(n, (k + 1) * rows_per)):
            du_row, u_row, dy_row = du[i], u[i], dy[i]
            for j in range(f):
                v = u_row[j]
                cdf = _F32(0.5) * (_F32(1.0) + erf(v * sqrt1_2))
                pdf = exp(_F32(-0.5) * v * v) * inv_sqrt_2pi
                du_row[j] = dy_row[j] * (cdf + v * pdf)
            # The bias sum in a loop of its own, over the row just written (still in L1): fused into
            # the loop above, its float64 adds made the whole pass slower (one thread, 2048 x 1200:
            # 3.2 ns an element fused, 2.0 split). The same additions in the same order: the same bits.
            for j in range(f):
                part[j] += du_row[j]


def bias_gelu_forward(x, bias):
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
    y = np.empty_like(x2)
    u = np.empty_like(x2)
    _bias_gelu_fwd(x2, bias, x2.dtype.type(_SQRT1_2), y, u)
    return y.reshape(shape), u.reshape(shape)


def bias_gelu_backward(dy, cache):
    u = cache
    f = u.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, f)
    du = np.empty_like(dy2)
    parts = np.zeros((_chunks(dy2.shape[0]), f), dtype=np.float64)
    t = dy2.dtype.type
    _bias_gelu_bwd(dy2, u.reshape(-1, f), t(_SQRT1_2), t(_INV_SQRT_2PI), du, parts)
    return du.reshape(dy.shape), parts.sum(axis=0).astype(dy.dtype)


# --- masked softmax, with the attention dropout fused in ---------------------------------------

@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _masked_softmax_dropout_fwd(scores, mask_bias, shifted_bias, scale, key, threshold, dscale, masked, probs,
                                dropped):
    bh_, t_, s_ = scores.shape                    # (B*H, T, T), masks (B, T); dropped may be probs
    h_ = bh_ // mask_bias.shape[0]
    for bh in prange(bh_):
        b = bh // h_
        for i in range(t_):
            for j in range(s_):
                v = scores[bh, i, j] * scale
                masked[bh, i, j] = v + mask_bias[b, j]
                probs[bh, i, j] = v + shifted_bias[b, j]     # normalised with the shifted mask (ops.softmax_bias)
            m = row_max(probs[bh, i])
            total = scale * 0
            for j in range(s_):
                e = exp(probs[bh, i, j] - m)
                probs[bh, i, j] = e
                total += e
            inv = 1 / total
            if threshold == 0:
                for j in range(s_):
                    probs[bh, i, j] *= inv
            else:
                base = (bh * t_ + i) * s_
                for j in range(s_):
                    pr = probs[bh, i, j] * inv
                    probs[bh, i, j] = pr
                    dropped[bh, i, j] = pr * dscale if dropout_kept(key, threshold, base + j) else pr * 0


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _softmax_dropout_bwd(ddropped, probs, dropped, extra, scale, ds):
    bh_, t_, s_ = probs.shape                     # all (B*H, T, T); extra may be None; ds may be ddropped
    for bh in prange(bh_):
        for i in range(t_):
            dot = scale * 0
            for j in range(s_):
                dot += ddropped[bh, i, j] * dropped[bh, i, j]
            if extra is None:
                for j in range(s_):
                    ds[bh, i, j] = (dropped[bh, i, j] * ddropped[bh, i, j] - probs[bh, i, j] * dot) * scale
            else:
                for j in range(s_):
                    ds[bh, i, j] = (dropped[bh, i, j] * ddropped[bh, i, j] - probs[bh, i, j] * dot
                                    + extra[bh, i, j]) * scale


def rows3(a):  # (B, H, T, S) -> contiguous (B*H, T, S)
    return np.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])


def masked_softmax_dropout_forward(scores, mask_bias, scale, p, rng, overwrite=False):
    """`overwrite`: write the masked scores over `scores` (a temporary of the caller's): each entry is
    read before it is written, and it saves one (B, H, T, T) array and its memory traffic."""
    spec = dropout_spec(p, rng)
    s3 = rows3(scores)
    masked = s3 if overwrite else np.empty_like(s3)
    probs = np.empty_like(s3)
    dropped = probs if spec is None else np.empty_like(s3)
    mask_bias = np.ascontiguousarray(mask_bias)
    _masked_softmax_dropout_fwd(s3, mask_bias, ops.softmax_bias(mask_bias), s3.dtype.type(scale),
                                *dropout_args(spec, s3.dtype), masked, probs, dropped)
    shape = scores.shape
    return masked.reshape(shape), probs.reshape(shape), dropped.reshape(shape), spec


def softmax_dropout_backward(ddropped, probs, dropped, scale, dscores_extra=None, out=None):
    """`out` may be `ddropped` itself (a temporary the caller no longer needs): saves an array."""
    g3 = rows3(ddropped)
    ds = np.empty_like(g3) if out is None else out.reshape(g3.shape)
    extra = None if dscores_extra is None else rows3(dscores_extra)
    _softmax_dropout_bwd(g3, rows3(probs), rows3(dropped), extra, g3.dtype.type(scale), ds)
    return ds.reshape(probs.shape)


# --- batched small matrix products ------------------------------------------------------------
# The per-head attention products are B*H small GEMMs (128 x 128 x 26 for tinybert4). Given to a
# multithreaded OpenBLAS, each of those ~9000 calls per training step splits over the threads and
# waits for all of them: ~60 GFLOP/s on a quiet machine, and when another process holds a core,
# every call waits for a descheduled thread (measured: a 2.3 s step became 10 s). Instead our own
# threads each take a slice of the stack, with OpenBLAS at one thread: inside the region of
# process.single_threaded_blas() that the attention core below opens around all of its products.

def batched_matmul(a, b, out=None):
    """np.matmul of two (B, ...) stacks of the same leading shape: the same numbers. When OpenBLAS runs
    one thread (inside process.single_threaded_blas()) and this thread has several Numba threads, the
    stack is split over B (over the next axis, the heads, when B is smaller than the thread count)
    across as many threads of ours; otherwise it is np.matmul itself."""
    threads = numba.get_num_threads()
    control = process.blas_thread_control()
    if threads < 2 or a.ndim < 3 or a.shape[:-2] != b.shape[:-2] or not control or control[1]() != 1:
        return np.matmul(a, b, out=out)
    axis = 0 if a.shape[0] >= threads or a.ndim == 3 else 1
    n = min(a.shape[axis], threads)
    if n < 2:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(a.shape[:-1] + (b.shape[-1],), dtype=np.result_type(a, b))
    pool = process.thread_pool(n)
    bounds = np.linspace(0, a.shape[axis], n + 1).astype(int)
    parts = [(slice(None),) * axis + (slice(lo, hi),) for lo, hi in zip(bounds[:-1], bounds[1:])]
    # numpy releases the GIL inside matmul: the slices run in parallel
    jobs = [pool.submit(np.matmul, a[part], b[part], out=out[part]) for part in parts]
    for job in jobs:
        job.result()
    return out


def _per_head_region():
    """The region the attention core's products run in: single-threaded OpenBLAS when this thread
    has more than one Numba thread to split them over (a shard of parallel.py has one)."""
    return process.single_threaded_blas() if numba.get_num_threads() > 1 else contextlib.nullcontext()


# --- multi-head self-attention core --------------------------------------------------------------
# ops.attention_forward/backward: the per-head products on our threads, the softmax fused above

def attention_forward(q, k, v, mask_bias, dropout_p=0.0, rng=None, out=None):
    scale = 1.0 / math.sqrt(q.shape[-1])
    with _per_head_region():
        # the masked scores are written over the product q k^T, a temporary: one (B, H, T, T) array less
        scores, probs, dropped, _ = masked_softmax_dropout_forward(batched_matmul(q, k.swapaxes(-1, -2)), mask_bias,
                                                                   scale, dropout_p, rng, overwrite=True)
        context = batched_matmul(dropped, v, out=out)
    return context, scores, AttentionCache(q, k, v, probs, dropped, scale)


def attention_backward(dcontext, cache, dscores_extra=None, out=None):
    c = cache
    dq, dk, dv = out if out is not None else (None, None, None)
    with _per_head_region():
        dv = batched_matmul(c.dropped.swapaxes(-1, -2), dcontext, out=dv)
        ddropped = batched_matmul(dcontext, c.v.swapaxes(-1, -2))
        # the gradient on the raw product q k^T, written over ddropped (no longer needed)
        dscores = softmax_dropout_backward(ddropped, c.probs, c.dropped, c.scale, dscores_extra, out=ddropped)
        dq = batched_matmul(dscores, c.k, out=dq)
        dk = batched_matmul(dscores.swapaxes(-1, -2), c.q, out=dk)
    return dq, dk, dv


# --- embedding gradient scatter -------------------------------------------------------------

@njit(cache=True, nogil=True)
def _scatter_add_rows(table, ids, rows, skip):  # table[ids[n]] += rows[n] but where ids[n] == skip; serial: ids repeat
    for n in range(ids.shape[0]):
        r = ids[n]
        if r == skip:
            continue
        for j in range(rows.shape[1]):
            table[r, j] += rows[n, j]


def embeddings_sum_backward(dx, cache, dword, dposition, dtoken_type, pad_id=None):
    input_ids, token_type_ids = cache.input_ids, cache.token_type_ids
    C = dx.shape[-1]
    rows = np.ascontiguousarray(dx).reshape(-1, C)
    _scatter_add_rows(dword, input_ids.reshape(-1).astype(np.int64), rows, -1 if pad_id is None else pad_id)
    _scatter_add_rows(dtoken_type, token_type_ids.reshape(-1).astype(np.int64), rows, -1)
    dposition[: dx.shape[1]] += dx.sum(axis=0)
