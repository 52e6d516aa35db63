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


def test_fast_float32_exp_and_erf():
    """The vectorised float32 exp and erf of the kernels: ~1e-7, and exact zeros where exp underflows."""
    import math
    x = np.linspace(-7, 7, 200_001).astype(np.float32)
    want = np.array([math.erf(float(v)) for v in x])
    assert np.abs(kernels.erf32(x) - want).max() < 1.5e-7
    x = np.linspace(-100, 10, 200_001).astype(np.float32)
    got, want = kernels.exp32(x).astype(np.float64), np.exp(x.astype(np.float64))
    live = x > -87
    assert (np.abs(got - want)[live] / want[live]).max() < 1.2e-7       # within 1 ulp
    assert (got[x < -87.3] == 0).all() and kernels.exp32(np.float32([-10000.0]))[0] == 0


def test_dropout_masks_are_shared_and_seeded(rng):
    """Same rng -> same mask, in both implementations; the realised rate and scale are right."""
    x = rng.normal(size=(B, T, C)).astype(np.float32)
    y1, s1 = kernels.dropout_forward(x, 0.1, np.random.default_rng(3))
    y0, s0 = ops.dropout_forward(x, 0.1, np.random.default_rng(3))
    np.testing.assert_array_equal(y1 == 0, y0 == 0)
    close(y1, y0, 1e-6)
    assert abs((y1 == 0).mean() - 0.1) < 0.005
    y2, _ = kernels.dropout_forward(x, 0.1, np.random.default_rng(4))
    assert ((y2 == 0) != (y1 == 0)).any()                     # another seed, another mask
    dy = rng.normal(size=x.shape).astype(np.float32)
    close(kernels.dropout_backward(dy, s1), ops.dropout_backward(dy, s0), 1e-6)


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_bias_dropout_residual_layernorm_twins(rng, p):
    h = rng.normal(size=(B, T, C)).astype(np.float32) * 3 + 1
    res = rng.normal(size=(B, T, C)).astype(np.float32)
    bias, gamma, beta = (rng.normal(size=C).astype(np.float32) for _ in range(3))
    dy = rng.normal(size=h.shape).astype(np.float32)
    y1, c1 = kernels.bias_dropout_residual_layernorm_forward(h, bias, res, gamma, beta, 1e-12, p,
                                                             np.random.default_rng(5))
    y0, c0 = ops.bias_dropout_residual_layernorm_forward(h, bias, res, gamma, beta, 1e-12, p,
                                                         np.random.default_rng(5))
    close(y1, y0, 1e-4)
    for got, want in zip(kernels.bias_dropout_residual_layernorm_backward(dy, c1),
                         ops.bias_dropout_residual_layernorm_backward(dy, c0)):
        close(got, want, 1e-3 if got.ndim == 1 else 1e-4)   # parameter gradients sum 256 rows


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_masked_softmax_dropout_twins(rng, p):
    scores = rng.normal(size=(B, H, T, T)).astype(np.float32) * 4
    mask = np.ones((B, T), np.int32)
    mask[1, 40:] = 0
    mask[3, :] = 0
    bias = ops.key_mask_bias(mask, np.float32)
    out1 = kernels.masked_softmax_dropout_forward(scores, bias, 0.125, p, np.random.default_rng(6))
    out0 = ops.masked_softmax_dropout_forward(scores, bias, 0.125, p, np.random.default_rng(6))
    for got, want in zip(out1[:3], out0[:3]):
        close(got, want)
    np.testing.assert_array_equal(out1[2] == 0, out0[2] == 0)     # the same dropped positions
    if p == 0:
        assert np.shares_memory(out1[2], out1[1])          # eval mode: no second array
    for impl in (kernels, ops):                            # overwrite: masked scores over the input
        scratch = scores.copy()
        again = impl.masked_softmax_dropout_forward(scratch, bias, 0.125, p, np.random.default_rng(6),
                                                    overwrite=True)
        assert np.shares_memory(again[0], scratch)
        for got, want in zip(again[:3], out0[:3]):
            close(got, want)
    g = rng.normal(size=scores.shape).astype(np.float32)
    extra = rng.normal(size=scores.shape).astype(np.float32)
    for e in (None, extra):
        want = ops.softmax_dropout_backward(g, out0[1], out0[2], 0.125, e)
        close(kernels.softmax_dropout_backward(g, out1[1], out1[2], 0.125, e), want)
        close(kernels.softmax_dropout_backward(g.copy(), out1[1], out1[2], 0.125, e, out=g.copy()), want)


def test_batched_matmul_is_matmul(rng):
    """The per-head products split over threads: bit-identical to np.matmul, strided out= included."""
    D = C // H
    qkv = rng.normal(size=(B, T, 3, H, D)).astype(np.float32)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    scores = kernels.batched_matmul(q, k.swapaxes(-1, -2))
    np.testing.assert_array_equal(scores, q @ k.swapaxes(-1, -2))
    ctx = np.empty((B, T, C), np.float32)
    kernels.batched_matmul(scores, v, out=ctx.reshape(B, T, H, D).transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(ctx, (scores @ v).transpose(0, 2, 1, 3).reshape(B, T, C))
