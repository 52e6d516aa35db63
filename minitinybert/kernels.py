"""Numba kernels for the memory-bound parts of BERT, with the same signatures as `ops.py`.

Each kernel fuses what NumPy would do in several passes over memory (mean, variance, scale and
shift of a layer norm; bias, erf and product of a GELU; mask, max, exp, sum and divide of a
softmax) into one or two passes, in parallel over rows. `ops.py` holds the plain-NumPy twin
of each; tests/test_kernels.py checks that the two agree, and that their caches share one layout
(the NamedTuples of ops.py). Matrix products stay with BLAS.

Importing this module changes nothing process-wide. Threads: Numba's own setting (NUMBA_NUM_THREADS,
or process.tune_process(), which the command-line entry points call first, from OMP_NUM_THREADS).
"""
from __future__ import annotations

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import ops
from .ops import MASK_VALUE  # noqa: F401  (re-exported: the kernels use the same mask convention)
from .ops import AttentionCache, LayerNormCache, SublayerExitCache, dropout_spec

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# Loops that sum must be allowed to reassociate to vectorise; no 'nnan'/'ninf', which would let
# LLVM assume away the infinities and NaNs that these kernels must propagate or produce.
_FM = {"reassoc", "contract", "nsz", "arcp"}
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
# becomes a libm call. These float32 versions are plain arithmetic that vectorises; `_exp` and `_erf`
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


def _exp(x):  # the type-dispatching front of _exp32 / math.exp (Numba only)
    return math.exp(x)


def _erf(x):
    return math.erf(x)


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(_exp, inline="always")
def _exp_impl(x):
    return (lambda x: _exp32(x)) if _is_f32(x) else (lambda x: math.exp(x))


@overload(_erf, inline="always")
def _erf_impl(x):
    return (lambda x: _erf32(x)) if _is_f32(x) else (lambda x: math.erf(x))


def exp32(x):
    """The float32 exp of the kernels, on an array (for tests)."""
    return _map_exp32(np.ascontiguousarray(x, dtype=np.float32).reshape(-1)).reshape(np.shape(x))


def erf32(x):
    """The float32 erf of the kernels, on an array (for tests)."""
    return _map_erf32(np.ascontiguousarray(x, dtype=np.float32).reshape(-1)).reshape(np.shape(x))


@njit(cache=True, nogil=True)
def _map_exp32(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _exp(x[i])
    return out


@njit(cache=True, nogil=True)
def _map_erf32(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = _erf(x[i])
    return out


@njit(inline="always")
def _row_max(row):  # (S,) -> scalar. Eight running maxima: one would be a chain of dependent
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

_GOLDEN, _MIX1, _MIX2 = ops._GOLDEN, ops._MIX1, ops._MIX2
_U1, _U27, _U30, _U31, _U32 = np.uint64(1), np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(32)


@njit(inline="always")
def _kept(key, threshold, n):  # n: the element's flat index (int64)
    z = key + (np.uint64(n) + _U1) * _GOLDEN
    z = (z ^ (z >> _U30)) * _MIX1
    z = (z ^ (z >> _U27)) * _MIX2
    z = z ^ (z >> _U31)
    return (z >> _U32) >= threshold


def _spec_args(spec, dtype):
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
            y[i] = x[i] * scale if _kept(key, threshold, i) else x[i] * 0


def dropout_forward(x, p, rng):
    """ops.dropout_forward: the same masks from the same rng."""
    spec = dropout_spec(p, rng)
    if spec is None:
        return x, None
    x1 = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(x1)
    _dropout(x1, *_spec_args(spec, x1.dtype), y)
    return y.reshape(x.shape), spec


def dropout_backward(dy, cache):
    if cache is None:
        return dy
    d1 = np.ascontiguousarray(dy).reshape(-1)
    dx = np.empty_like(d1)
    _dropout(d1, *_spec_args(cache, d1.dtype), dx)
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

@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
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
                if not _kept(key, threshold, base + j):
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


@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
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
                    d = d * dscale if _kept(key, threshold, base + j) else d * 0
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
                                  *_spec_args(spec, h2.dtype), gamma, beta, eps, y, xhat, rstd)
    return y.reshape(shape), SublayerExitCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma, spec)


def bias_dropout_residual_layernorm_backward(dy, cache):
    """-> dresidual (the layer norm's input gradient), dh, dbias, dgamma, dbeta."""
    xhat, rstd, gamma, spec = cache.xhat, cache.rstd.reshape(-1), cache.gamma, cache.dropout
    c = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, c)
    dsum = np.empty_like(dy2)
    dh = dsum if spec is None else np.empty_like(dy2)       # without dropout dh is dsum itself
    parts = np.zeros((3, _chunks(dy2.shape[0]), c), dtype=np.float64)
    _ln_dropout_bwd(dy2, xhat.reshape(-1, c), gamma, rstd, *_spec_args(spec, dy2.dtype), dsum, dh, parts)
    sums = parts.sum(axis=1).astype(dy.dtype)
    return dsum.reshape(dy.shape), dh.reshape(dy.shape), sums[2], sums[0], sums[1]


# --- bias + exact GELU ----------------------------------------------------------------------
# float32 uses the vectorised _erf32/_exp32 (~1e-7); float64 libm's erf and exp.

@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
def _bias_gelu_fwd(x, bias, sqrt1_2, y, u):  # (N, F) -> (N, F)
    n, f = x.shape
    for i in prange(n):
        for j in range(f):
            v = x[i, j] + bias[j]
            u[i, j] = v
            y[i, j] = _F32(0.5) * v * (_F32(1.0) + _erf(v * sqrt1_2))


@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
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
                cdf = _F32(0.5) * (_F32(1.0) + _erf(v * sqrt1_2))
                pdf = _exp(_F32(-0.5) * v * v) * inv_sqrt_2pi
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

@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
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
            m = _row_max(probs[bh, i])
            total = scale * 0
            for j in range(s_):
                e = _exp(probs[bh, i, j] - m)
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
                    dropped[bh, i, j] = pr * dscale if _kept(key, threshold, base + j) else pr * 0


@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
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


def _rows3(a):  # (B, H, T, S) -> contiguous (B*H, T, S)
    return np.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])


def masked_softmax_dropout_forward(scores, mask_bias, scale, p, rng, overwrite=False):
    """`overwrite`: write the masked scores over `scores` (a temporary of the caller's): each entry is
    read before it is written, and it saves one (B, H, T, T) array and its memory traffic."""
    spec = dropout_spec(p, rng)
    s3 = _rows3(scores)
    masked = s3 if overwrite else np.empty_like(s3)
    probs = np.empty_like(s3)
    dropped = probs if spec is None else np.empty_like(s3)
    mask_bias = np.ascontiguousarray(mask_bias)
    _masked_softmax_dropout_fwd(s3, mask_bias, ops.softmax_bias(mask_bias), s3.dtype.type(scale),
                                *_spec_args(spec, s3.dtype), masked, probs, dropped)
    shape = scores.shape
    return masked.reshape(shape), probs.reshape(shape), dropped.reshape(shape), spec


def softmax_dropout_backward(ddropped, probs, dropped, scale, dscores_extra=None, out=None):
    """`out` may be `ddropped` itself (a temporary the caller no longer needs): saves an array."""
    g3 = _rows3(ddropped)
    ds = np.empty_like(g3) if out is None else out.reshape(g3.shape)
    extra = None if dscores_extra is None else _rows3(dscores_extra)
    _softmax_dropout_bwd(g3, _rows3(probs), _rows3(dropped), extra, g3.dtype.type(scale), ds)
    return ds.reshape(probs.shape)


# --- batched small matrix products ------------------------------------------------------------
# The per-head attention products are B*H small GEMMs (128 x 128 x 26 for tinybert4). Given to a
# multithreaded OpenBLAS, each of those ~9000 calls per training step splits over the threads and
# waits for all of them: ~60 GFLOP/s on a quiet machine, and when another process holds a core,
# every call waits for a descheduled thread (measured: a 2.3 s step became 10 s). Instead our own
# threads each take a slice of the stack, with OpenBLAS at one thread: a multithreaded OpenBLAS
# called from two threads at once serialises them on a lock (measured on the teacher's q k^T: 13 ms
# became 317 ms).
#
# OpenBLAS's thread count is process-wide. It changes only inside `single_threaded_blas()`, a region
# opened by the code that runs BLAS on threads of its own: the attention core below (one region per
# call, around all of its products) and parallel.DataParallel (around each sharded step).

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


def _thread_pool(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < n:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(n, thread_name_prefix="minitinybert-bmm"), n
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def batched_matmul(a, b, out=None):
    """np.matmul of two (B, ...) stacks of the same leading shape: the same numbers. When OpenBLAS runs
    one thread (inside single_threaded_blas()) and this thread has several Numba threads, the stack
    is split over B (over the next axis, the heads, when B is smaller than the thread count) across
    as many threads of ours; otherwise it is np.matmul itself."""
    threads = numba.get_num_threads()
    control = blas_thread_control()
    if threads < 2 or a.ndim < 3 or a.shape[:-2] != b.shape[:-2] or not control or control[1]() != 1:
        return np.matmul(a, b, out=out)
    axis = 0 if a.shape[0] >= threads or a.ndim == 3 else 1
    n = min(a.shape[axis], threads)
    if n < 2:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(a.shape[:-1] + (b.shape[-1],), dtype=np.result_type(a, b))
    pool = _thread_pool(n)
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
    return single_threaded_blas() if numba.get_num_threads() > 1 else contextlib.nullcontext()


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


# --- the attention core fused per (batch, head) block --------------------------------------------
# The per-head products are the least efficient GEMMs of a step (head size 26 in tinybert4, 32 in
# MiniLM: a short inner dimension, and B*H of them), and around them the (B, H, T, T) arrays go
# through memory several times: the scores written by BLAS and read by the softmax, the dropped
# probabilities read back by the context product; backward writes and reads two more. Here one
# thread takes one (b, h) block at a time, holds its k and v (T x D, transposed to rows of T) in
# cache, and does scores, scale, mask, softmax, dropout and context two rows at a time; backward
# does the four products and the softmax gradient the same way, with nothing of size T x T but its
# inputs. Outputs and cache are those of ops.attention_forward (the masked scores, probabilities
# and dropped probabilities are still written: TinyBERT distills the first, backward reads the
# others). Loops run over T, contiguous, so that they vectorise; the products go 2 rows x 4
# columns of D at a time, so that each loaded vector feeds several multiply-adds.
#
# Not the default: BLAS's micro-kernels stay faster than these loops by more than the memory
# passes saved (tools/bench_engine.py measures both at the training shapes; see the README).

@njit(inline="always")
def _axpy4(y, a0, x0, a1, x1, a2, x2, a3, x3):      # y += a0 x0 + a1 x1 + a2 x2 + a3 x3
    for j in range(y.shape[0]):
        y[j] += a0 * x0[j] + a1 * x1[j] + a2 * x2[j] + a3 * x3[j]


@njit(inline="always")
def _axpy(y, a, x):
    for j in range(y.shape[0]):
        y[j] += a * x[j]


@njit(inline="always")
def _dot(x, y):
    s = x[0] * 0
    for j in range(x.shape[0]):
        s += x[j] * y[j]
    return s


@njit(inline="always")
def _outer_acc(accT, coefs, rows, n):   # accT (D, S) += coefs[:n]^T rows[:n]; coefs (4, D), rows (4, S)
    D = accT.shape[0]
    if n == 4:
        for d in range(D):
            _axpy4(accT[d], coefs[0, d], rows[0], coefs[1, d], rows[1], coefs[2, d], rows[2], coefs[3, d], rows[3])
    else:
        for r in range(n):
            for d in range(D):
                _axpy(accT[d], coefs[r, d], rows[r])


@njit(inline="always")
def _rows2_times(y0, y1, xT, c0, c1):   # y0 = c0 xT, y1 = c1 xT: c (D,), xT (D, S) -> y (S,)
    D = xT.shape[0]
    S = y0.shape[0]
    y0[:] = 0
    y1[:] = 0
    d = 0
    while d + 4 <= D:
        a0, a1, a2, a3 = c0[d], c0[d + 1], c0[d + 2], c0[d + 3]
        b0, b1, b2, b3 = c1[d], c1[d + 1], c1[d + 2], c1[d + 3]
        x0, x1, x2, x3 = xT[d], xT[d + 1], xT[d + 2], xT[d + 3]
        for j in range(S):
            k0, k1, k2, k3 = x0[j], x1[j], x2[j], x3[j]
            y0[j] += a0 * k0 + a1 * k1 + a2 * k2 + a3 * k3
            y1[j] += b0 * k0 + b1 * k1 + b2 * k2 + b3 * k3
        d += 4
    while d < D:
        a0, b0, x0 = c0[d], c1[d], xT[d]
        for j in range(S):
            y0[j] += a0 * x0[j]
            y1[j] += b0 * x0[j]
        d += 1


@njit(inline="always")
def _times_T2(o0, o1, r0, r1, yT):      # o0 = yT r0, o1 = yT r1: r (S,), yT (D, S) -> o (D,)
    D = yT.shape[0]
    S = r0.shape[0]
    d = 0
    while d + 4 <= D:
        x0, x1, x2, x3 = yT[d], yT[d + 1], yT[d + 2], yT[d + 3]
        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = r0[0] * 0
        for j in range(S):
            a, b = r0[j], r1[j]
            s00 += a * x0[j]
            s01 += a * x1[j]
            s02 += a * x2[j]
            s03 += a * x3[j]
            s10 += b * x0[j]
            s11 += b * x1[j]
            s12 += b * x2[j]
            s13 += b * x3[j]
        o0[d], o0[d + 1], o0[d + 2], o0[d + 3] = s00, s01, s02, s03
        o1[d], o1[d + 1], o1[d + 2], o1[d + 3] = s10, s11, s12, s13
        d += 4
    while d < D:
        o0[d] = _dot(r0, yT[d])
        o1[d] = _dot(r1, yT[d])
        d += 1


@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
def _attention_fwd(q, k, v, mask_bias, shifted_bias, scale, key, threshold, dscale, masked, probs, dropped,
                   context):
    B, H, T, D = q.shape                          # q, k, v, context (B, H, T, D), any strides
    S = k.shape[2]                                # masked, probs, dropped (B*H, T, S); dropped may be probs
    for bh in prange(B * H):
        b = bh // H
        h = bh - b * H
        kT = np.empty((D, S), q.dtype)
        vT = np.empty((D, S), q.dtype)
        for j in range(S):
            for d in range(D):
                kT[d, j] = k[b, h, j, d]
                vT[d, j] = v[b, h, j, d]
        qs = np.empty((2, D), q.dtype)
        cs = np.empty((2, D), q.dtype)
        rows = np.empty((2, S), q.dtype)
        for i0 in range(0, T, 2):
            n = min(2, T - i0)
            for r in range(2):
                for d in range(D):
                    qs[r, d] = q[b, h, min(i0 + r, T - 1), d]      # a lone last row is done twice
            _rows2_times(rows[0], rows[1], kT, qs[0], qs[1])      # row_i = q_i k^T
            for r in range(n):                   # scale, mask; normalised with the shifted mask
                i = i0 + r
                row = rows[r]
                for j in range(S):
                    sc = row[j] * scale
                    masked[bh, i, j] = sc + mask_bias[b, j]
                    row[j] = sc + shifted_bias[b, j]
                m = _row_max(row)
                total = scale * 0
                for j in range(S):
                    e = _exp(row[j] - m)
                    row[j] = e
                    total += e
                inv = 1 / total
                if threshold == 0:
                    for j in range(S):
                        pr = row[j] * inv
                        probs[bh, i, j] = pr
                        row[j] = pr
                else:
                    base = (bh * T + i) * S       # the element index of ops.dropout_keep's mask
                    for j in range(S):
                        pr = row[j] * inv
                        probs[bh, i, j] = pr
                        pr = pr * dscale if _kept(key, threshold, base + j) else pr * 0
                        dropped[bh, i, j] = pr
                        row[j] = pr
            _times_T2(cs[0], cs[1], rows[0], rows[n - 1], vT)      # context_i = dropped_i v
            for r in range(n):
                for d in range(D):
                    context[b, h, i0 + r, d] = cs[r, d]


@njit(parallel=True, nogil=True, cache=True, fastmath=_FM, error_model="numpy")
def _attention_bwd(dcontext, q, k, v, probs, dropped, extra, scale, dq, dk, dv):
    B, H, T, D = q.shape                          # dcontext, q, k, v, dq, dk, dv (B, H, T, D), any strides
    S = k.shape[2]                                # probs, dropped, extra (B*H, T, S); extra may be None
    for bh in prange(B * H):
        b = bh // H
        h = bh - b * H
        kT = np.empty((D, S), q.dtype)
        vT = np.empty((D, S), q.dtype)
        dkT = np.zeros((D, S), q.dtype)
        dvT = np.zeros((D, S), q.dtype)
        for j in range(S):
            for d in range(D):
                kT[d, j] = k[b, h, j, d]
                vT[d, j] = v[b, h, j, d]
        dcs = np.empty((4, D), q.dtype)        # four rows at a time: dcontext, q, and the score gradients
        qs = np.empty((4, D), q.dtype)
        gs = np.empty((4, S), q.dtype)
        dqs = np.empty((2, D), q.dtype)
        for i0 in range(0, T, 4):
            n = min(4, T - i0)
            for r in range(n):
                for d in range(D):
                    dcs[r, d] = dcontext[b, h, i0 + r, d]
                    qs[r, d] = q[b, h, i0 + r, d]
            _outer_acc(dvT, dcs, dropped[bh, i0:i0 + 4], n)      # dv += dropped^T dcontext
            for r in range(0, n, 2):
                r1 = r + 1                                            # past n: a spare row, unused
                _rows2_times(gs[r], gs[r1], vT, dcs[r], dcs[r1])      # g = dcontext_i v^T
                for rr in range(r, min(r + 2, n)):
                    i = i0 + rr
                    g = gs[rr]                                    # -> the gradient on q_i k^T
                    dot = _dot(g, dropped[bh, i])
                    if extra is None:
                        for j in range(S):
                            g[j] = (dropped[bh, i, j] * g[j] - probs[bh, i, j] * dot) * scale
                    else:
                        for j in range(S):
                            g[j] = (dropped[bh, i, j] * g[j] - probs[bh, i, j] * dot + extra[bh, i, j]) * scale
                _times_T2(dqs[0], dqs[1], gs[r], gs[r1], kT)             # dq_i = g k
                for rr in range(r, min(r + 2, n)):
                    for d in range(D):
                        dq[b, h, i0 + rr, d] = dqs[rr - r, d]
            _outer_acc(dkT, qs, gs, n)                          # dk += g^T q
        for j in range(S):
            for d in range(D):
                dk[b, h, j, d] = dkT[d, j]
                dv[b, h, j, d] = dvT[d, j]


def fused_attention_forward(q, k, v, mask_bias, dropout_p=0.0, rng=None, out=None):
    """ops.attention_forward in one Numba pass per (batch, head) block (see above)."""
    spec = dropout_spec(dropout_p, rng)
    B, H, T, D = q.shape
    dtype = np.result_type(q, k, v)
    scale = 1.0 / math.sqrt(D)
    masked = np.empty((B * H, T, k.shape[2]), dtype)
    probs = np.empty_like(masked)
    dropped = probs if spec is None else np.empty_like(masked)
    context = np.empty((B, H, T, D), dtype) if out is None else out
    mask_bias = np.ascontiguousarray(mask_bias, dtype=dtype)
    _attention_fwd(q, k, v, mask_bias, ops.softmax_bias(mask_bias), dtype.type(scale), *_spec_args(spec, dtype),
                   masked, probs, dropped, context)
    shape = (B, H, T, k.shape[2])
    return context, masked.reshape(shape), AttentionCache(q, k, v, probs.reshape(shape), dropped.reshape(shape), scale)


def fused_attention_backward(dcontext, cache, dscores_extra=None, out=None):
    """ops.attention_backward in one Numba pass per (batch, head) block (see above)."""
    c = cache
    dq, dk, dv = out if out is not None else (np.empty_like(c.q), np.empty_like(c.k), np.empty_like(c.v))
    extra = None if dscores_extra is None else _rows3(dscores_extra)
    _attention_bwd(dcontext, c.q, c.k, c.v, _rows3(c.probs), _rows3(c.dropped), extra, c.probs.dtype.type(c.scale),
                   dq, dk, dv)
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
