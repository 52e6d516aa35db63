"""BERT's operations, forward and backward side by side, in plain NumPy.

Each `*_forward` returns its output and a cache; each `*_backward` takes the upstream gradient
and that cache and returns the gradients of the inputs (and of the parameters). These are the
reference implementations: the Numba kernels in `kernels.py` are tested against them, and the
gradient-check tests prove them against finite differences. They work in any float dtype.
Shapes: B batch, T tokens, C channels, H heads, D head size, F FFN width, V vocabulary.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

try:  # scipy's erf is vectorised C; the fallback keeps numpy the only requirement
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.vectorize(math.erf, otypes=[np.float64])

# Additive mask on padded keys: the value BERT and TinyBERT use. exp(-10000) is exactly 0
# in float32 and float64, so a padded key never receives attention.
MASK_VALUE = -10000.0


# --- linear ---------------------------------------------------------------------------------
# (..., I) -> (..., O); weight (O, I) as Hugging Face stores it: y = x W^T + b

class LinearCache(NamedTuple):
    x: np.ndarray        # (..., I) the input: the weight gradient is dy^T x
    has_bias: bool


def linear_forward(x, weight, bias=None):
    """`bias` None: the product alone, for a caller that fuses the bias into its next op.

    One BLAS GEMM over all rows. numpy's matmul of a (B, T, I) stack by a matrix makes B separate
    GEMM calls, each splitting over the BLAS threads and waiting for them: slower, and far slower
    when another process holds a core (measured 500 ms instead of 25 ms for x W_qkv^T)."""
    y = (x.reshape(-1, x.shape[-1]) @ weight.T).reshape(x.shape[:-1] + (weight.shape[0],))
    if bias is not None:
        y += bias
    return y, LinearCache(x, bias is not None)


def linear_backward(dy, cache, weight, dweight_out=None, dbias_out=None):
    """-> dx, dweight, dbias (None when the forward had no bias). `dweight_out`, `dbias_out`: where
    to write the parameter gradients (views of the flat gradient buffer) instead of new arrays."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    dweight = np.matmul(dy2.T, cache.x.reshape(-1, cache.x.shape[-1]), out=dweight_out)
    dbias = dy2.sum(axis=0, out=dbias_out) if cache.has_bias else None
    dx = (dy2 @ weight).reshape(dy.shape[:-1] + (weight.shape[1],))
    return dx, dweight, dbias


# --- layer norm ---------------------------------------------------------------------------
# (..., C) -> (..., C)

class LayerNormCache(NamedTuple):
    xhat: np.ndarray     # (..., C) the normalised input
    rstd: np.ndarray     # (..., 1) 1 / standard deviation of each row
    gamma: np.ndarray    # (C,)


def layernorm_forward(x, gamma, beta, eps):
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    rstd = 1.0 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    xhat = centered * rstd
    return xhat * gamma + beta, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    """`cache`: a LayerNormCache, or any cache with its fields (SublayerExitCache)."""
    xhat, rstd, gamma = cache.xhat, cache.rstd, cache.gamma
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


def softmax_bias(mask_bias):
    """(B, T) -> (B, T): the key mask shifted so that each row's largest entry is 0.

    Softmax is invariant to that shift, and it keeps a fully padded row (every key at -10000) from
    being normalised as -10000 + score, which loses the score's low bits to cancellation."""
    return mask_bias - mask_bias.max(axis=-1, keepdims=True)


def masked_softmax_forward(scores, mask_bias, scale=1.0):
    """Scales `scores`, adds the mask (the result is returned too: TinyBERT distills it), normalises."""
    scaled = scores * scale
    masked = scaled + mask_bias[:, None, None, :]
    shifted = scaled + softmax_bias(mask_bias)[:, None, None, :]
    e = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    return masked, probs


def masked_softmax_dropout_forward(scores, mask_bias, scale, p, rng, overwrite=False):
    """masked_softmax_forward, then dropout on the probabilities: -> masked, probs, dropped, spec.
    In eval mode `dropped` is `probs` itself. `overwrite`: the masked scores may be written over
    `scores` (a temporary of the caller's), one (B, H, T, T) array less."""
    masked, probs = masked_softmax_forward(scores, mask_bias, scale)
    if overwrite and isinstance(scores, np.ndarray) and scores.flags.c_contiguous and scores.dtype == masked.dtype:
        scores[...] = masked
        masked = scores
    spec = dropout_spec(p, rng)
    dropped = probs if spec is None else probs * dropout_keep(spec, probs.shape, probs.dtype)
    return masked, probs, dropped, spec


def softmax_dropout_backward(ddropped, probs, dropped, scale, dscores_extra=None, out=None):
    """Gradient on the raw scores (before `scale`) from the gradient on the dropped probabilities.

    With dropped = probs * m (m the 0-or-1/(1-p) multiplier), the softmax backward of ddropped * m is
    probs * m * g - probs * sum(g * probs * m) = dropped * g - probs * sum(g * dropped): the mask is
    not needed, only `probs` and `dropped`. `dscores_extra` is an upstream gradient on the masked
    scores (TinyBERT's attention loss); the sum is multiplied by `scale`, the chain rule of scaling.
    `out` may be `ddropped` itself (a temporary the caller no longer needs)."""
    dot = (ddropped * dropped).sum(axis=-1, keepdims=True)
    ds = dropped * ddropped - probs * dot
    if dscores_extra is not None:
        ds += dscores_extra
    ds *= scale
    if out is not None:
        out[...] = ds
        return out
    return ds


# --- dropout --------------------------------------------------------------------------------
# A dropout mask is a pure function of (key, element index): keep element n iff the high 32 bits
# of splitmix64(key + (n + 1) * golden) are >= threshold. The key is one draw from the caller's
# numpy Generator, so the same rng gives the same masks, and the Numba kernels can compute the
# mask inside the fused loops that need it, in parallel, instead of reading a stored one: the
# backward recomputes it from the key. Drop probability resolution: threshold = round(p * 2**32),
# so the realised p is within 2**-33 of the requested one; the kept values are scaled by
# 2**32 / (2**32 - threshold), which makes the expectation exact for the realised p.

DROPOUT_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
DROPOUT_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
DROPOUT_MIX2 = np.uint64(0x94D049BB133111EB)


def dropout_spec(p, rng):
    """(key, threshold, scale) for one dropout call, or None in eval mode (`rng` None or p == 0).
    Draws exactly one uint64 from `rng`, whichever implementation consumes the spec."""
    if rng is None or p == 0.0:
        return None
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
    threshold = min(int(round(p * 2.0**32)), 2**32 - 1)
    key = rng.integers(np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)
    return np.uint64(key), np.uint64(threshold), 2.0**32 / (2.0**32 - threshold)


def dropout_keep(spec, shape, dtype):
    """The (0 or scale) multiplier of every element of a C-ordered array of `shape`: (..., ) -> (...)."""
    n = int(np.prod(shape))
    key, threshold, scale = spec
    z = key + (np.arange(1, n + 1, dtype=np.uint64) * DROPOUT_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * DROPOUT_MIX1
    z = (z ^ (z >> np.uint64(27))) * DROPOUT_MIX2
    z ^= z >> np.uint64(31)
    keep = (z >> np.uint64(32)) >= threshold
    return (keep * np.dtype(dtype).type(scale)).astype(dtype, copy=False).reshape(shape)


def dropout_forward(x, p, rng):
    """Inverted dropout; `rng` None or p == 0 means eval mode (identity)."""
    spec = dropout_spec(p, rng)
    if spec is None:
        return x, None
    return x * dropout_keep(spec, x.shape, x.dtype), spec


def dropout_backward(dy, cache):
    return dy if cache is None else dy * dropout_keep(cache, dy.shape, dy.dtype)


# --- bias + dropout + residual + layer norm -----------------------------------------------------
# BERT's sublayer exit: y = LN(residual + dropout(h + bias)), h the dense product without its bias.
# (N.., C), (C,), (N.., C) -> (N.., C)

class SublayerExitCache(NamedTuple):
    xhat: np.ndarray     # (N.., C) the layer norm's cache, as LayerNormCache
    rstd: np.ndarray     # (N.., 1)
    gamma: np.ndarray    # (C,)
    dropout: tuple | None  # the dropout spec (None in eval mode): the mask is recomputed from it


def bias_dropout_residual_layernorm_forward(h, bias, residual, gamma, beta, eps, p, rng):
    spec = dropout_spec(p, rng)
    s = h + bias
    if spec is not None:
        s = s * dropout_keep(spec, s.shape, s.dtype)
    s += residual
    y, ln = layernorm_forward(s, gamma, beta, eps)
    return y, SublayerExitCache(ln.xhat, ln.rstd, ln.gamma, spec)


def bias_dropout_residual_layernorm_backward(dy, cache):
    """-> dresidual (the layer norm's input gradient), dh, dbias, dgamma, dbeta."""
    spec = cache.dropout
    dsum, dgamma, dbeta = layernorm_backward(dy, cache)
    dh = dsum if spec is None else dsum * dropout_keep(spec, dsum.shape, dsum.dtype)
    return dsum, dh, dh.reshape(-1, dh.shape[-1]).sum(axis=0), dgamma, dbeta


# --- multi-head self-attention core --------------------------------------------------------
# q, k, v (B, H, T, D) -> context (B, H, T, D); also the masked pre-softmax scores (B, H, T, T)

class AttentionCache(NamedTuple):
    q: np.ndarray        # (B, H, T, D), possibly strided views of a fused QKV product
    k: np.ndarray
    v: np.ndarray
    probs: np.ndarray    # (B, H, T, T) the softmax
    dropped: np.ndarray  # the probabilities after dropout: `probs` itself in eval mode
    scale: float         # 1 / sqrt(D)


def attention_forward(q, k, v, mask_bias, dropout_p=0.0, rng=None, out=None):
    """-> context, masked scores, cache. `out`: where to write the context, e.g. the (B, H, T, D)
    view of a (B, T, C) array, which merges the heads without a copy."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    # the masked scores are written over the product q k^T, a temporary: one (B, H, T, T) array less
    scores, probs, dropped, _ = masked_softmax_dropout_forward(np.matmul(q, k.swapaxes(-1, -2)), mask_bias,
                                                               scale, dropout_p, rng, overwrite=True)
    context = np.matmul(dropped, v, out=out)
    return context, scores, AttentionCache(q, k, v, probs, dropped, scale)


def attention_backward(dcontext, cache, dscores_extra=None, out=None):
    """-> dq, dk, dv. `dscores_extra` (B, H, T, T): an upstream gradient on the masked scores
    (TinyBERT's attention loss). `out`: (dq, dk, dv) arrays to write into, e.g. views of the
    gradient of a fused QKV product."""
    c = cache
    dq, dk, dv = out if out is not None else (None, None, None)
    dv = np.matmul(c.dropped.swapaxes(-1, -2), dcontext, out=dv)
    ddropped = np.matmul(dcontext, c.v.swapaxes(-1, -2))
    # the gradient on the raw product q k^T, written over ddropped (no longer needed)
    dscores = softmax_dropout_backward(ddropped, c.probs, c.dropped, c.scale, dscores_extra, out=ddropped)
    dq = np.matmul(dscores, c.k, out=dq)
    dk = np.matmul(dscores.swapaxes(-1, -2), c.q, out=dk)
    return dq, dk, dv


# --- embeddings -----------------------------------------------------------------------------
# ids (B, T) -> (B, T, C): word + position + token type, then layer norm

class EmbeddingCache(NamedTuple):
    input_ids: np.ndarray       # (B, T)
    token_type_ids: np.ndarray  # (B, T)


def embeddings_sum_forward(input_ids, token_type_ids, word, position, token_type):
    T = input_ids.shape[1]
    return (word[input_ids] + position[None, :T] + token_type[token_type_ids],
            EmbeddingCache(input_ids, token_type_ids))


def embeddings_sum_backward(dx, cache, dword, dposition, dtoken_type, pad_id=None):
    """Accumulates into the (zeroed) gradient tables; only rows the batch touched change. The word
    row `pad_id` gets nothing (None: every row), as torch's nn.Embedding(padding_idx=...)."""
    input_ids, token_type_ids = cache.input_ids, cache.token_type_ids
    C = dx.shape[-1]
    ids, rows = input_ids.reshape(-1), dx.reshape(-1, C)
    if pad_id is not None:
        real = ids != pad_id
        ids, rows = ids[real], rows[real]
    np.add.at(dword, ids, rows)
    dposition[: dx.shape[1]] += dx.sum(axis=0)
    np.add.at(dtoken_type, token_type_ids.reshape(-1), dx.reshape(-1, C))


# --- pooler and heads -----------------------------------------------------------------------
# hidden (B, T, C) -> pooled (B, C) = tanh(dense(hidden[:, 0]))

class PoolerCache(NamedTuple):
    linear: LinearCache
    pooled: np.ndarray   # (B, C) tanh's output, which is all its derivative needs


def pooler_forward(hidden, weight, bias):
    pre, linear = linear_forward(hidden[:, 0], weight, bias)
    pooled = np.tanh(pre)
    return pooled, PoolerCache(linear, pooled)


def pooler_backward(dpooled, cache, weight, hidden_shape):
    pooled = cache.pooled
    dpre = dpooled * (1.0 - pooled * pooled)
    dcls, dweight, dbias = linear_backward(dpre, cache.linear, weight)
    dhidden = np.zeros(hidden_shape, dtype=dpooled.dtype)
    dhidden[:, 0] = dcls
    return dhidden, dweight, dbias
