"""Fused Numba twin of the attention loss (NumPy reference: losses.attention_mse_forward/backward).

The attention loss touches B*H*T*T entries per layer pair (6.3M for tinybert4 at 32 x 128): NumPy
needs six passes and four temporaries; this does the loss and its gradient in one pass. Because
the gradient is produced with the loss, `backward` only scales what `forward` stored (into a new
array: the cache stays as it was, and a second call gives the same gradient).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .losses import MASKED_SCORE


@njit(parallel=True, nogil=True, cache=True)
def _attention_mse(student, teacher, grad, masked):  # (N, M) x 2 -> scalar, grad (N, M)
    n, m = student.shape
    partial = np.zeros(n)
    for i in prange(n):
        acc = 0.0
        for j in range(m):
            s = student[i, j]
            t = teacher[i, j]
            keep = s > masked
            if not keep:
                s = 0.0
            if t <= masked:
                t = 0.0
            d = s - t
            acc += d * d
            grad[i, j] = d if keep else 0.0
        partial[i] = acc
    return partial.sum()


def attention_mse_forward(student_scores, teacher_scores, overwrite=False):  # (B, H, T, T) x 2 -> scalar
    """`overwrite`: the gradient may be written over `student_scores` (the caller no longer needs
    them): each entry is read before it is written; one (B, H, T, T) array less per layer pair."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"attention scores differ in shape: student {student_scores.shape}, teacher "
                         f"{teacher_scores.shape} (student and teacher need the same number of heads)")
    T = student_scores.shape[-1]
    s = np.ascontiguousarray(student_scores).reshape(-1, T)
    t = np.ascontiguousarray(teacher_scores, dtype=student_scores.dtype).reshape(-1, T)
    diff = s if overwrite else np.empty_like(s)
    total = _attention_mse(s, t, diff, MASKED_SCORE)
    return float(total / diff.size), (diff.reshape(student_scores.shape),)


def attention_mse_backward(cache, weight=1.0):
    (diff,) = cache                       # (s' - t') where the student's key is real, 0 elsewhere
    return diff * (2.0 * weight / diff.size)
