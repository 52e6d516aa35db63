"""Numba kernels for the memory-bound parts of BERT, with the same signatures as `ops.py`.

Each kernel fuses what NumPy would do in several passes over memory (mean, variance, scale and
shift of a layer norm; bias, erf and product of a GELU; mask, max, exp, sum and divide of a
softmax) into one or two passes, in parallel over rows. `ops.py` holds the plain-NumPy twin
of each; tests/test_kernels.py checks that the two agree. Matrix products stay with BLAS.
Threads: Numba follows NUMBA_NUM_THREADS, and also OMP_NUM_THREADS when that is set, so that
one setting governs both Numba and BLAS.
"""
from __future__ import annotations

import math
import os

# OpenBLAS and Numba's OpenMP workers share the same cores. With GNU OpenMP's default
# busy-waiting, its idle workers spin after every kernel and starve the BLAS threads of the
# next matmul (measured on 2 cores: a 0.05 ms layer norm after a 0.8 ms matmul cost 8 ms).
# Passive waiting removes that; set before the OpenMP runtime loads, and a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np
from numba import njit, prange

from .ops import MASK_VALUE  # noqa: F401  (re-exported: the kernels use the same mask convention)

_omp = os.environ.get("OMP_NUM_THREADS")
if _omp and _omp.isdigit() and "NUMBA_NUM_THREADS" not in os.environ:
    numba.set_num_threads(max(1, min(int(_omp), numba.config.NUMBA_NUM_THREADS)))

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _chunks(n_rows: int) -> int:
    """How many row blocks a reduction is split into: one per thread, at least 1."""
    return max(1, min(n_rows, numba.get_num_threads()))


# --- layer norm ---------------------------------------------------------------------------

@njit(parallel=True, cache=True)
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


@njit(parallel=True, cache=True)
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
    return y.reshape(shape), (xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), gamma)


def layernorm_backward(dy, cache):
    xhat, rstd, gamma = cache
    c = xhat.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, c)
    n = dy2.shape[0]
    dx = np.empty_like(dy2)
    parts = np.zeros((2, _chunks(n), c), dtype=np.float64)
    _layernorm_bwd(dy2, xhat.reshape(-1, c), gamma, rstd.reshape(-1), dx, parts[0], parts[1])
    sums = parts.sum(axis=1).astype(dy.dtype)
    return dx.reshape(dy.shape), sums[0], sums[1]


# --- bias + exact GELU ----------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _bias_gelu_fwd(x, bias, y, u):  # (N, F) -> (N, F)
    n, f = x.shape
    for i in prange(n):
        for j in range(f):
            v = x[i, j] + bias[j]
            u[i, j] = v
            y[i, j] = 0.5 * v * (1.0 + math.erf(v * _SQRT1_2))


@njit(parallel=True, cache=True)
def _bias_gelu_bwd(dy, u, du, dbias_parts):
    n, f = dy.shape
    n_chunks = dbias_parts.shape[0]
    rows_per = (n + n_chunks - 1) // n_chunks
    for k in prange(n_chunks):
        for i in range(k * rows_per, min(n, (k + 1) * rows_per)):
            for j in range(f):
                v = u[i, j]
                cdf = 0.5 * (1.0 + math.erf(v * _SQRT1_2))
                pdf = math.exp(-0.5 * v * v) * _INV_SQRT_2PI
                g = dy[i, j] * (cdf + v * pdf)
                du[i, j] = g
                dbias_parts[k, j] += g


def bias_gelu_forward(x, bias):
    shape = x.shape
    x2 = np.ascontiguousarray(x).reshape(-1, shape[-1])
    y = np.empty_like(x2)
    u = np.empty_like(x2)
    _bias_gelu_fwd(x2, bias, y, u)
    return y.reshape(shape), u.reshape(shape)


def bias_gelu_backward(dy, cache):
    u = cache
    f = u.shape[-1]
    dy2 = np.ascontiguousarray(dy).reshape(-1, f)
    du = np.empty_like(dy2)
    parts = np.zeros((_chunks(dy2.shape[0]), f), dtype=np.float64)
    _bias_gelu_bwd(dy2, u.reshape(-1, f), du, parts)
    return du.reshape(dy.shape), parts.sum(axis=0).astype(dy.dtype)


# --- masked softmax -------------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _masked_softmax_fwd(scores, mask_bias, scale, masked, probs):  # (B, H, T, T), (B, T)
    b_, h_, t_, s_ = scores.shape
    for bh in prange(b_ * h_):
        b = bh // h_
        h = bh % h_
        for i in range(t_):
            m = -np.inf
            for j in range(s_):
                v = scores[b, h, i, j] * scale + mask_bias[b, j]
                masked[b, h, i, j] = v
                if v > m:
                    m = v
            total = 0.0
            for j in range(s_):
                e = math.exp(masked[b, h, i, j] - m)
                probs[b, h, i, j] = e
                total += e
            inv = 1.0 / total
            for j in range(s_):
                probs[b, h, i, j] *= inv


@njit(parallel=True, cache=True)
def _softmax_bwd(dprobs, probs, dscores):
    b_, h_, t_, s_ = probs.shape
    for bh in prange(b_ * h_):
        b = bh // h_
        h = bh % h_
        for i in range(t_):
            dot = 0.0
            for j in range(s_):
                dot += dprobs[b, h, i, j] * probs[b, h, i, j]
            for j in range(s_):
                dscores[b, h, i, j] = probs[b, h, i, j] * (dprobs[b, h, i, j] - dot)


def masked_softmax_forward(scores, mask_bias, scale=1.0):
    masked = np.empty_like(scores)
    probs = np.empty_like(scores)
    _masked_softmax_fwd(scores, mask_bias, scores.dtype.type(scale), masked, probs)
    return masked, probs


def softmax_backward(dprobs, probs):
    dscores = np.empty_like(probs)
    _softmax_bwd(dprobs, probs, dscores)
    return dscores


# --- embedding gradient scatter -------------------------------------------------------------

@njit(cache=True)
def _scatter_add_rows(table, ids, rows):  # table[ids[n]] += rows[n]; serial: ids repeat
    for n in range(ids.shape[0]):
        r = ids[n]
        for j in range(rows.shape[1]):
            table[r, j] += rows[n, j]


def embeddings_sum_backward(dx, cache, dword, dposition, dtoken_type):
    input_ids, token_type_ids = cache
    C = dx.shape[-1]
    rows = np.ascontiguousarray(dx).reshape(-1, C)
    _scatter_add_rows(dword, input_ids.reshape(-1).astype(np.int64), rows)
    _scatter_add_rows(dtoken_type, token_type_ids.reshape(-1).astype(np.int64), rows)
    dposition[: dx.shape[1]] += dx.sum(axis=0)
