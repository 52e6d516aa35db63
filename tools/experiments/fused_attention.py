"""The attention core fused per (batch, head) block: a measured alternative to the package's
kernels.attention_forward/backward, kept here because it is not the default.

The per-head products are the least efficient GEMMs of a step (head size 26 in tinybert4, 32 in
MiniLM: a short inner dimension, and B*H of them), and around them the (B, H, T, T) arrays go
through memory several times: the scores written by BLAS and read by the softmax, the dropped
probabilities read back by the context product; backward writes and reads two more. Here one
thread takes one (b, h) block at a time, holds its k and v (T x D, transposed to rows of T) in
cache, and does scores, scale, mask, softmax, dropout and context two rows at a time; backward
does the four products and the softmax gradient the same way, with nothing of size T x T but its
inputs. Outputs and cache are those of ops.attention_forward (the masked scores, probabilities
and dropped probabilities are still written: TinyBERT distills the first, backward reads the
others). Loops run over T, contiguous, so that they vectorise; the products go 2 rows x 4
columns of D at a time, so that each loaded vector feeds several multiply-adds.

Not the default: BLAS's micro-kernels stay faster than these loops by more than the memory
passes saved (`python -m tools.bench.engine` measures both at the training shapes; see the
README). It uses the package kernels' own exp, row maximum and dropout mask, so that its results
are theirs (tests/test_fused_attention.py checks them against ops.py and finite differences).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from minitinybert.engine.kernels import FASTMATH, dropout_args, dropout_kept, exp, row_max, rows3
from minitinybert.engine.ops import AttentionCache, dropout_spec, softmax_bias


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


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
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
                m = row_max(row)
                total = scale * 0
                for j in range(S):
                    e = exp(row[j] - m)
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
                        pr = pr * dscale if dropout_kept(key, threshold, base + j) else pr * 0
                        dropped[bh, i, j] = pr
                        row[j] = pr
            _times_T2(cs[0], cs[1], rows[0], rows[n - 1], vT)      # context_i = dropped_i v
            for r in range(n):
                for d in range(D):
                    context[b, h, i0 + r, d] = cs[r, d]


@njit(parallel=True, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
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
    """ops.attention_forward in one Numba pass per (batch, head) block (see the module's docstring)."""
    spec = dropout_spec(dropout_p, rng)
    B, H, T, D = q.shape
    dtype = np.result_type(q, k, v)
    scale = 1.0 / math.sqrt(D)
    masked = np.empty((B * H, T, k.shape[2]), dtype)
    probs = np.empty_like(masked)
    dropped = probs if spec is None else np.empty_like(masked)
    context = np.empty((B, H, T, D), dtype) if out is None else out
    mask_bias = np.ascontiguousarray(mask_bias, dtype=dtype)
    _attention_fwd(q, k, v, mask_bias, softmax_bias(mask_bias), dtype.type(scale), *dropout_args(spec, dtype),
                   masked, probs, dropped, context)
    shape = (B, H, T, k.shape[2])
    return context, masked.reshape(shape), AttentionCache(q, k, v, probs.reshape(shape), dropped.reshape(shape), scale)


def fused_attention_backward(dcontext, cache, dscores_extra=None, out=None):
    """ops.attention_backward in one Numba pass per (batch, head) block (see the module's docstring)."""
    c = cache
    dq, dk, dv = out if out is not None else (np.empty_like(c.q), np.empty_like(c.k), np.empty_like(c.v))
    extra = None if dscores_extra is None else rows3(dscores_extra)
    _attention_bwd(dcontext, c.q, c.k, c.v, rows3(c.probs), rows3(c.dropped), extra, c.probs.dtype.type(c.scale),
                   dq, dk, dv)
    return dq, dk, dv
