"""Each Numba kernel against its plain-NumPy twin, in float32 at the shapes training uses."""
import numpy as np
import pytest

from minitinybert import kernels, ops

B, H, T, C, F = 4, 12, 64, 312, 1200


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_layernorm_twins(rng):
    x = rng.normal(size=(B, T, C)).astype(np.float32) * 3 + 1
    gamma, beta = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y1, c1 = kernels.layernorm_forward(x, gamma, beta, 1e-12)
    y0, c0 = ops.layernorm_forward(x, gamma, beta, 1e-12)
    close(y1, y0)
    assert y1.dtype == np.float32
    for got, want in zip(kernels.layernorm_backward(dy, c1), ops.layernorm_backward(dy, c0)):
        close(got, want, 1e-4)


def test_bias_gelu_twins(rng):
    x = rng.normal(size=(B, T, F)).astype(np.float32) * 2
    bias = rng.normal(size=F).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    y1, c1 = kernels.bias_gelu_forward(x, bias)
    y0, c0 = ops.bias_gelu_forward(x, bias)
    close(y1, y0)
    for got, want in zip(kernels.bias_gelu_backward(dy, c1), ops.bias_gelu_backward(dy, c0)):
        close(got, want, 1e-3 if got.ndim == 1 else 2e-5)   # the bias gradient sums 256 rows


def test_masked_softmax_twins(rng):
    scores = rng.normal(size=(B, H, T, T)).astype(np.float32) * 4
    mask = np.ones((B, T), np.int32)
    mask[1, 40:] = 0
    mask[2, 1:] = 0
    mask[3, :] = 0          # a fully padded row must still give finite numbers
    bias = ops.key_mask_bias(mask, np.float32)
    s1, p1 = kernels.masked_softmax_forward(scores, bias, 0.125)
    s0, p0 = ops.masked_softmax_forward(scores, bias, 0.125)
    close(s1, s0)
    close(p1, p0)
    assert np.isfinite(p1).all()
    dp = rng.normal(size=p1.shape).astype(np.float32)
    close(kernels.softmax_backward(dp, p1), ops.softmax_backward(dp, p0))


def test_embedding_scatter_twins(rng):
    V, P = 100, 80
    ids = rng.integers(0, V, size=(B, T)).astype(np.int32)
    ids[:, :5] = 7                           # repeated ids must accumulate, not overwrite
    types = rng.integers(0, 2, size=(B, T)).astype(np.int32)
    tables = [rng.normal(size=(n, C)).astype(np.float32) for n in (V, P, 2)]
    x0, c0 = ops.embeddings_sum_forward(ids, types, *tables)
    dx = rng.normal(size=x0.shape).astype(np.float32)
    g0 = [np.zeros_like(t) for t in tables]
    g1 = [np.zeros_like(t) for t in tables]
    ops.embeddings_sum_backward(dx, c0, *g0)
    kernels.embeddings_sum_backward(dx, c0, *g1)
    for got, want in zip(g1, g0):
        close(got, want, 1e-4)
