"""Each op's hand-written backward against central finite differences in float64,
for both implementations (the NumPy reference and the Numba kernel) where there are two."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.engine import kernels, ops
from tests.gradcheck import assert_grad_close, numeric_grad

IMPLS = pytest.mark.parametrize("impl", [ops, kernels], ids=["numpy", "numba"])

batch = st.integers(1, 3)
tokens = st.integers(1, 5)
width = st.integers(1, 7)
seeds = st.integers(0, 2**31 - 1)


def attention_mask_strategy(B, T):
    """Masks with real padding, including fully padded rows."""
    return st.lists(st.lists(st.integers(0, 1), min_size=T, max_size=T), min_size=B, max_size=B).map(
        lambda rows: np.array(rows, dtype=np.int64))


@given(batch, tokens, width, st.integers(1, 6), seeds, st.booleans())
def test_linear(B, T, I, O, seed, with_bias):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((B, T, I)), rng.standard_normal((O, I)), rng.standard_normal(O)
    b = b if with_bias else None
    R = rng.standard_normal((B, T, O))
    f = lambda: np.sum(ops.linear_forward(x, w, b)[0] * R)
    y, cache = ops.linear_forward(x, w, b)
    dx, dw, db = ops.linear_backward(R, cache, w)
    assert (db is None) == (b is None)
    for name, arr, g in (("x", x, dx), ("w", w, dw), ("b", b, db))[:3 if with_bias else 2]:
        assert_grad_close(g, numeric_grad(f, arr), what=f"linear d{name}")
    # written into given arrays (the model's gradient buffer views) instead: the same numbers
    gw, gb = np.full_like(w, np.nan), np.full(O, np.nan)
    dx2, dw2, db2 = ops.linear_backward(R, cache, w, dweight_out=gw, dbias_out=gb if with_bias else None)
    assert dw2 is gw and (db2 is gb if with_bias else db2 is None)
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(gw, dw)
    if with_bias:
        np.testing.assert_array_equal(gb, db)


@IMPLS
@given(batch, tokens, st.integers(2, 9), seeds)
def test_layernorm(impl, B, T, C, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, C)) * 3 + 1
    g, b = rng.standard_normal(C), rng.standard_normal(C)
    R = rng.standard_normal((B, T, C))
    f = lambda: np.sum(impl.layernorm_forward(x, g, b, 1e-12)[0] * R)
    _, cache = impl.layernorm_forward(x, g, b, 1e-12)
    dx, dg, db = impl.layernorm_backward(R, cache)
    for name, arr, grad in (("x", x, dx), ("gamma", g, dg), ("beta", b, db)):
        assert_grad_close(grad, numeric_grad(f, arr), rtol=1e-5, atol=1e-6, what=f"layernorm d{name}")


@IMPLS
@given(batch, tokens, width, seeds)
def test_bias_gelu(impl, B, T, F, seed):
    rng = np.random.default_rng(seed)
    x, b = rng.standard_normal((B, T, F)) * 2, rng.standard_normal(F)
    R = rng.standard_normal((B, T, F))
    f = lambda: np.sum(impl.bias_gelu_forward(x, b)[0] * R)
    _, cache = impl.bias_gelu_forward(x, b)
    dx, db = impl.bias_gelu_backward(R, cache)
    assert_grad_close(dx, numeric_grad(f, x), what="gelu dx")
    assert_grad_close(db, numeric_grad(f, b), what="gelu dbias")


@IMPLS
@given(st.data(), batch, st.integers(1, 3), tokens, st.integers(1, 6), seeds, st.booleans())
def test_attention_core(impl, data, B, H, T, D, seed, with_dropout):
    check_attention_core(impl, data, B, H, T, D, seed, with_dropout)


def check_attention_core(impl, data, B, H, T, D, seed, with_dropout):
    """impl.attention_forward/backward: the gradient on q, k and v through both outputs (context and
    masked scores), written into the model's fused QKV layout."""
    rng = np.random.default_rng(seed)
    mask = data.draw(attention_mask_strategy(B, T))
    bias = ops.key_mask_bias(mask, np.float64)
    # q, k, v as the model has them: strided views of one fused (B, T, 3, H, D) product
    qkv = rng.standard_normal((B, T, 3, H, D))
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    R, S = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, T, T))
    # masked keys hold the constant -10000: weighting it would only add cancellation error to f
    S *= mask[:, None, None, :]
    p = 0.3 if with_dropout else 0.0

    def run():  # the same dropout mask on every call: a fresh generator with a fixed seed
        return impl.attention_forward(q, k, v, bias, p, np.random.default_rng(7) if p else None)

    f = lambda: np.sum(run()[0] * R) + np.sum(run()[1] * S)
    _, _, cache = run()
    dqkv = np.zeros_like(qkv)       # the gradients written into the fused layout, as the model asks
    views = tuple(dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    impl.attention_backward(R, cache, dscores_extra=S, out=views)
    numeric = numeric_grad(f, qkv)
    for i, name in enumerate("qkv"):
        assert_grad_close(dqkv[:, :, i], numeric[:, :, i], rtol=1e-5, atol=1e-6, what=f"attention d{name}")


@IMPLS
@given(batch, tokens, st.integers(1, 4), seeds, st.sampled_from([None, 0, 3]))
def test_embeddings(impl, B, T, C, seed, pad_id):
    rng = np.random.default_rng(seed)
    V, P, TV = 6, 8, 2
    ids, tt = rng.integers(0, V, (B, T)), rng.integers(0, TV, (B, T))
    word, pos, typ = rng.standard_normal((V, C)), rng.standard_normal((P, C)), rng.standard_normal((TV, C))
    R = rng.standard_normal((B, T, C))
    f = lambda: np.sum(ops.embeddings_sum_forward(ids, tt, word, pos, typ)[0] * R)
    _, cache = ops.embeddings_sum_forward(ids, tt, word, pos, typ)
    dword, dpos, dtyp = np.zeros_like(word), np.zeros_like(pos), np.zeros_like(typ)
    impl.embeddings_sum_backward(R, cache, dword, dpos, dtyp, pad_id=pad_id)
    numeric_word = numeric_grad(f, word)
    if pad_id is not None:            # the [PAD] row is frozen: no gradient, whatever its derivative
        assert (dword[pad_id] == 0).all()
        numeric_word[pad_id] = 0.0
    for name, g, numeric in (("word", dword, numeric_word), ("position", dpos, numeric_grad(f, pos)),
                             ("type", dtyp, numeric_grad(f, typ))):
        assert_grad_close(g, numeric, what=f"embedding d{name}")


@given(batch, tokens, st.integers(1, 5), seeds)
def test_pooler(B, T, C, seed):
    rng = np.random.default_rng(seed)
    h, w, b = rng.standard_normal((B, T, C)), rng.standard_normal((C, C)), rng.standard_normal(C)
    R = rng.standard_normal((B, C))
    f = lambda: np.sum(ops.pooler_forward(h, w, b)[0] * R)
    _, cache = ops.pooler_forward(h, w, b)
    dh, dw, db = ops.pooler_backward(R, cache, w, h.shape)
    for name, arr, g in (("hidden", h, dh), ("w", w, dw), ("b", b, db)):
        assert_grad_close(g, numeric_grad(f, arr), what=f"pooler d{name}")


@given(batch, width, seeds)
def test_dropout(B, C, seed):
    rng = np.random.default_rng(seed)
    x, R = rng.standard_normal((B, C)), rng.standard_normal((B, C))
    f = lambda: np.sum(ops.dropout_forward(x, 0.4, np.random.default_rng(seed))[0] * R)
    _, cache = ops.dropout_forward(x, 0.4, np.random.default_rng(seed))
    assert_grad_close(ops.dropout_backward(R, cache), numeric_grad(f, x), what="dropout dx")
    y, none = ops.dropout_forward(x, 0.4, None)   # eval mode is the identity
    assert y is x and none is None


@IMPLS
@given(batch, tokens, st.integers(2, 9), seeds, st.sampled_from([0.0, 0.3]))
def test_bias_dropout_residual_layernorm(impl, B, T, C, seed, p):
    rng = np.random.default_rng(seed)
    h, res = rng.standard_normal((B, T, C)) * 3 + 1, rng.standard_normal((B, T, C))
    bias, g, b = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal(C)
    R = rng.standard_normal((B, T, C))

    def run():  # a fresh generator with a fixed seed: the same dropout mask on every call
        return impl.bias_dropout_residual_layernorm_forward(h, bias, res, g, b, 1e-12, p,
                                                            np.random.default_rng(seed + 1))

    f = lambda: np.sum(run()[0] * R)
    grads = impl.bias_dropout_residual_layernorm_backward(R, run()[1])
    for name, arr, grad in zip(("residual", "h", "bias", "gamma", "beta"), (res, h, bias, g, b), grads):
        assert_grad_close(grad, numeric_grad(f, arr), rtol=1e-5, atol=1e-6, what=f"fused layernorm d{name}")


@IMPLS
@given(st.data(), batch, st.integers(1, 3), tokens, seeds, st.sampled_from([0.0, 0.3]))
def test_masked_softmax_dropout(impl, data, B, H, T, seed, p):
    rng = np.random.default_rng(seed)
    mask = data.draw(attention_mask_strategy(B, T))
    bias = ops.key_mask_bias(mask, np.float64)
    s = rng.standard_normal((B, H, T, T)) * 2
    R, S = rng.standard_normal((B, H, T, T)), rng.standard_normal((B, H, T, T)) * mask[:, None, None, :]

    def run():
        return impl.masked_softmax_dropout_forward(s, bias, 0.5, p, np.random.default_rng(seed + 1))

    f = lambda: np.sum(run()[2] * R) + np.sum(run()[0] * S)
    _, probs, dropped, _ = run()
    assert np.allclose(probs.sum(-1), 1.0)
    ds = impl.softmax_dropout_backward(R, probs, dropped, 0.5, S)
    assert_grad_close(ds, numeric_grad(f, s), what="softmax+dropout dscores")
