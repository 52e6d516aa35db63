"""Every distillation loss against finite differences in float64 (Hypothesis draws shapes, masks,
values, temperatures and weights), and the fused attention-loss kernel against its NumPy twin."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.engine import loss_kernels

from minitinybert.engine import losses
from tests.gradcheck import assert_grad_close, numeric_grad

seeds = st.integers(0, 2**31 - 1)
small = st.integers(1, 4)
weights = st.floats(0.1, 3.0)


@given(small, small, st.integers(1, 6), st.integers(1, 6), weights, seeds)
def test_projected_mse(B, T, Cs, Ct, w, seed):
    rng = np.random.default_rng(seed)
    s, W, b, t = (rng.standard_normal(shape) for shape in ((B, T, Cs), (Ct, Cs), (Ct,), (B, T, Ct)))
    f = lambda: w * losses.projected_mse_forward(s, W, b, t)[0]
    _, cache = losses.projected_mse_forward(s, W, b, t)
    ds, dW, db = losses.projected_mse_backward(cache, W, w)
    for name, arr, g in (("student", s, ds), ("W", W, dW), ("b", b, db)):
        assert_grad_close(g, numeric_grad(f, arr), what=f"projected MSE d{name}")


@pytest.mark.parametrize("impl", [losses, loss_kernels], ids=["numpy", "numba"])
@given(data=st.data(), B=small, H=st.integers(1, 3), T=st.integers(1, 5), w=weights, seed=seeds)
def test_attention_mse(impl, data, B, H, T, w, seed):
    rng = np.random.default_rng(seed)
    mask = np.array(data.draw(st.lists(st.integers(0, 1), min_size=B * T, max_size=B * T))).reshape(B, 1, 1, T)
    bias = (1 - mask) * -10000.0         # padded keys (whole padded rows included), as the model adds them
    s = rng.standard_normal((B, H, T, T)) * 3 + bias
    t = rng.standard_normal((B, H, T, T)) * 3 + bias
    f = lambda: w * impl.attention_mse_forward(s, t)[0]
    loss, cache = impl.attention_mse_forward(s, t)
    ds = impl.attention_mse_backward(cache, w)
    assert_grad_close(ds, numeric_grad(f, s), what="attention MSE")
    # masked entries are zero in both, so they add nothing: the loss equals the MSE over real keys / all
    real = np.broadcast_to(mask.astype(bool), s.shape)
    assert np.isclose(loss, np.sum((s - t)[real] ** 2) / s.size)


def test_attention_kernel_matches_numpy_float32():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 12, 64, 64)).astype(np.float32)
    t = rng.standard_normal((4, 12, 64, 64)).astype(np.float32)
    s[:, :, :, 50:] -= 10000
    t[:, :, :, 50:] -= 10000
    l0, c0 = losses.attention_mse_forward(s, t)
    l1, c1 = loss_kernels.attention_mse_forward(s, t)
    assert np.isclose(l0, l1, rtol=1e-5)
    np.testing.assert_allclose(loss_kernels.attention_mse_backward(c1), losses.attention_mse_backward(c0),
                               rtol=1e-5, atol=1e-12)
    scratch = s.copy()                   # overwrite: the kernel's cache is written over the student's array
    l2, c2 = loss_kernels.attention_mse_forward(scratch, t, overwrite=True)
    assert l2 == l1 and np.shares_memory(c2[0], scratch)
    np.testing.assert_allclose(loss_kernels.attention_mse_backward(c2), losses.attention_mse_backward(c0),
                               rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("impl", [losses, loss_kernels], ids=["numpy", "numba"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_attention_backward_leaves_its_cache_alone(impl, overwrite):
    """backward twice gives the same gradient (a backward that scaled its cache in place doubled it)."""
    rng = np.random.default_rng(1)
    s, t = (rng.standard_normal((2, 3, 5, 5)).astype(np.float32) for _ in range(2))
    _, cache = impl.attention_mse_forward(s.copy(), t, overwrite=overwrite)
    first = impl.attention_mse_backward(cache, 0.7).copy()
    second = impl.attention_mse_backward(cache, 0.7)
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(first, 2 * 0.7 * (s - t) / s.size, rtol=1e-6)


def test_attention_heads_must_match():
    for impl in (losses, loss_kernels):
        with pytest.raises(ValueError, match="same number of heads"):
            impl.attention_mse_forward(np.zeros((1, 12, 3, 3)), np.zeros((1, 6, 3, 3)))


@given(small, st.integers(2, 5), st.floats(0.5, 4.0), weights, seeds)
def test_soft_cross_entropy(B, K, temperature, w, seed):
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal((B, K)) * 2, rng.standard_normal((B, K)) * 2
    f = lambda: w * losses.soft_cross_entropy_forward(s, t, temperature)[0]
    _, cache = losses.soft_cross_entropy_forward(s, t, temperature)
    assert_grad_close(losses.soft_cross_entropy_backward(cache, w), numeric_grad(f, s), what="soft CE")


def test_soft_cross_entropy_is_minimal_at_the_teacher():
    t = np.array([[2.0, -1.0, 0.5]])
    at_teacher = losses.soft_cross_entropy_forward(t, t)[0]
    assert at_teacher < losses.soft_cross_entropy_forward(t + [[0.0, 1.0, 0.0]], t)[0]
    assert np.allclose(losses.soft_cross_entropy_backward(losses.soft_cross_entropy_forward(t, t)[1]), 0)


@given(small, st.integers(2, 5), weights, seeds)
def test_cross_entropy(B, K, w, seed):
    rng = np.random.default_rng(seed)
    s, y = rng.standard_normal((B, K)), rng.integers(0, K, B)
    f = lambda: w * losses.cross_entropy_forward(s, y)[0]
    _, cache = losses.cross_entropy_forward(s, y)
    assert_grad_close(losses.cross_entropy_backward(cache, w), numeric_grad(f, s), what="hard CE")


@given(small, weights, seeds)
def test_regression_mse(B, w, seed):
    rng = np.random.default_rng(seed)
    pred, target = rng.standard_normal((B, 1)), rng.uniform(0, 5, B)
    f = lambda: w * losses.regression_mse_forward(pred, target)[0]
    _, cache = losses.regression_mse_forward(pred, target)
    assert_grad_close(losses.regression_mse_backward(cache, w), numeric_grad(f, pred), what="regression MSE")


def test_bad_inputs():
    with pytest.raises(ValueError, match="label ids"):
        losses.cross_entropy_forward(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="same labels"):
        losses.soft_cross_entropy_forward(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="projection"):
        losses.projected_mse_forward(np.zeros((1, 2, 3)), np.zeros((4, 5)), np.zeros(4), np.zeros((1, 2, 4)))
