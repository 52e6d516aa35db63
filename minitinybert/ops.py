"""BERT's operations, forward and backward side by side, in plain NumPy.

Each `*_forward` returns its output and a cache; each `*_backward` takes the upstream gradient
and that cache and returns the gradients of the inputs (and of the parameters). These are the
reference implementations: the Numba kernels in `kernels.py` are tested against them, and the
gradient-check tests prove them against finite differences. They work in any float dtype.
Shapes: B batch, T tokens, C channels, H heads, D head size, F FFN width, V vocabulary.
"""
from __future__ import annotations

import math

import numpy as np

try:  # scipy's erf is vectorised C; the fallback keeps numpy the only requirement
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.vectorize(math.erf, otypes=[np.float64])

# Additive mask on padded keys: the value BERT and TinyBERT use. exp(-10000) is exactly 0
# in float32 and float64, so a padded key never receives attention.
MASK_VALUE = -10000.0


# --- linear -------------------------------------------------------------------------------
# (..., I) -> (..., O); weight (O, I) as Hugging Face stores it: y = x W^T + b

def linear_forward(x, weight, bias):
    return x @ weight.T + bias, x


def linear_backward(dy, cache, weight):
    x = cache
    dy2 = dy.reshape(-1, dy.shape[-1])
    dweight = dy2.T @ x.reshape(-1, x.shape[-1])
    dbias = dy2.sum(axis=0)
    return dy @ weight, dweight, dbias


# --- layer norm ---------------------------------------------------------------------------
# (..., C) -> (..., C)

def layernorm_forward(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    rstd = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    xhat = centered * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    xhat, rstd, gamma = cache
    dgamma = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    dbeta = dy.reshape(-1, dy.shape[-1]).sum(axis=0)
    dxhat = dy * gamma
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dgamma, dbeta


# --- bias + exact (erf) GELU ---------------------------------------------------------------
# (..., F) -> (..., F): y = gelu(x + b), gelu(u) = u * Phi(u)

def bias_gelu_forward(x, bias):
    u = x + bias
    return 0.5 * u * (1.0 + _erf(u / math.sqrt(2.0))).astype(u.dtype), u


def bias_gelu_backward(dy, cache):
    u = cache
    cdf = 0.5 * (1.0 + _erf(u / math.sqrt(2.0))).astype(u.dtype)
    pdf = np.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)
    du = dy * (cdf + u * pdf)
    return du, du.reshape(-1, du.shape[-1]).sum(axis=0)


# --- masked softmax -------------------------------------------------------------------------
# scores (B, H, T, T) + additive key mask (B, T) -> probs (B, H, T, T)

def key_mask_bias(attention_mask, dtype):
    """(B, T) of 1 (token) / 0 (padding) -> additive (B, T) bias: 0 or MASK_VALUE."""
    return ((1.0 - attention_mask.astype(dtype)) * MASK_VALUE).astype(dtype)


def masked_softmax_forward(scores, mask_bias, scale=1.0):
    """Scales `scores`, adds the mask (the result is returned too: TinyBERT distills it), normalises."""
    masked = scores * scale + mask_bias[:, None, None, :]
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return masked, probs


def softmax_backward(dprobs, probs):
    return probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))


# --- dropout --------------------------------------------------------------------------------

def dropout_forward(x, p, rng):
    """Inverted dropout; `rng` None or p == 0 means eval mode (identity)."""
    if rng is None or p == 0.0:
        return x, None
    keep = (rng.random(x.shape, dtype=np.float32) >= p).astype(x.dtype) * (1.0 / (1.0 - p))
    return x * keep, keep


def dropout_backward(dy, cache):
    return dy if cache is None else dy * cache


# --- multi-head self-attention core --------------------------------------------------------
# q, k, v (B, H, T, D) -> context (B, H, T, D); also the masked pre-softmax scores (B, H, T, T)

def attention_forward(q, k, v, mask_bias, dropout_p=0.0, rng=None):
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores, probs = masked_softmax_forward(q @ k.swapaxes(-1, -2), mask_bias, scale)
    dropped, drop_cache = dropout_forward(probs, dropout_p, rng)
    context = dropped @ v
    return context, scores, (q, k, v, probs, dropped, drop_cache, scale)


def attention_backward(dcontext, cache, dscores_extra=None):
    """`dscores_extra` (B, H, T, T): an upstream gradient on the pre-softmax scores (TinyBERT's loss)."""
    q, k, v, probs, dropped, drop_cache, scale = cache
    dv = dropped.swapaxes(-1, -2) @ dcontext
    dprobs = dropout_backward(dcontext @ v.swapaxes(-1, -2), drop_cache)
    dscores = softmax_backward(dprobs, probs)
    if dscores_extra is not None:
        dscores = dscores + dscores_extra
    dq = (dscores @ k) * scale
    dk = (dscores.swapaxes(-1, -2) @ q) * scale
    return dq, dk, dv


# --- embeddings -----------------------------------------------------------------------------
# ids (B, T) -> (B, T, C): word + position + token type, then layer norm

def embeddings_sum_forward(input_ids, token_type_ids, word, position, token_type):
    T = input_ids.shape[1]
    return word[input_ids] + position[None, :T] + token_type[token_type_ids], (input_ids, token_type_ids)


def embeddings_sum_backward(dx, cache, dword, dposition, dtoken_type):
    """Accumulates into the (zeroed) gradient tables; only rows the batch touched change."""
    input_ids, token_type_ids = cache
    C = dx.shape[-1]
    np.add.at(dword, input_ids.reshape(-1), dx.reshape(-1, C))
    dposition[: dx.shape[1]] += dx.sum(axis=0)
    np.add.at(dtoken_type, token_type_ids.reshape(-1), dx.reshape(-1, C))


# --- pooler and heads -----------------------------------------------------------------------
# hidden (B, T, C) -> pooled (B, C) = tanh(dense(hidden[:, 0]))

def pooler_forward(hidden, weight, bias):
    pre, cache = linear_forward(hidden[:, 0], weight, bias)
    pooled = np.tanh(pre)
    return pooled, (cache, pooled)


def pooler_backward(dpooled, cache, weight, hidden_shape):
    lin_cache, pooled = cache
    dpre = dpooled * (1.0 - pooled * pooled)
    dcls, dweight, dbias = linear_backward(dpre, lin_cache, weight)
    dhidden = np.zeros(hidden_shape, dtype=dpooled.dtype)
    dhidden[:, 0] = dcls
    return dhidden, dweight, dbias
