"""Each Numba kernel against its plain-NumPy twin, in float32 at the shapes training uses."""
import numba
import numpy as np
import pytest

from minitinybert.engine import kernels, ops, process

B, H, T, C, F = 4, 12, 64, 312, 1200


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def close(a, b, tol=2e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def padded_mask():
    """(B, T) with a partly padded row, a row of one token and a fully padded row."""
    mask = np.ones((B, T), np.int32)
    mask[1, 40:] = 0
    mask[2, 1:] = 0
    mask[3, :] = 0
    return mask


def fused_qkv_views(rng, batch=B):
    """q, k, v (batch, H, T, D) as the model has them: strided views of one (batch, T, 3C) product."""
    qkv = rng.normal(size=(batch, T, 3, H, C // H)).astype(np.float32)
    return [qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]


def merged_heads(batch=B):
    """A (batch, T, C) array and its (batch, H, T, D) view: where the model writes the context."""
    merged = np.empty((batch, T, C), np.float32)
    return merged, merged.reshape(batch, T, H, C // H).transpose(0, 2, 1, 3)


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


@pytest.mark.parametrize("pad_id", [None, 0])
def test_embedding_scatter_twins(rng, pad_id):
    V, P = 100, 80
    ids = rng.integers(0, V, size=(B, T)).astype(np.int32)
    ids[:, :5] = 7                           # repeated ids must accumulate, not overwrite
    ids[:, -9:] = 0                          # padding
    types = rng.integers(0, 2, size=(B, T)).astype(np.int32)
    tables = [rng.normal(size=(n, C)).astype(np.float32) for n in (V, P, 2)]
    x0, c0 = ops.embeddings_sum_forward(ids, types, *tables)
    dx = rng.normal(size=x0.shape).astype(np.float32)
    g0 = [np.zeros_like(t) for t in tables]
    g1 = [np.zeros_like(t) for t in tables]
    ops.embeddings_sum_backward(dx, c0, *g0, pad_id=pad_id)
    kernels.embeddings_sum_backward(dx, c0, *g1, pad_id=pad_id)
    for got, want in zip(g1, g0):
        close(got, want, 1e-4)
    assert (g1[0][0] == 0).all() == (pad_id == 0)             # [PAD]'s row: nothing, or its tokens' sum
    assert (g1[1][:T] != 0).all() and (g1[2] != 0).all()      # positions and types of padding still learn


@numba.njit
def exp32(x):   # (N,) float32: the kernels' exp as they call it, on float32 elements
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = kernels.exp(x[i])
    return out


@numba.njit
def erf32(x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = kernels.erf(x[i])
    return out


def test_fast_float32_exp_and_erf():
    """The vectorised float32 exp and erf of the kernels: ~1e-7, and exact zeros where exp underflows."""
    import math
    x = np.linspace(-7, 7, 200_001).astype(np.float32)
    want = np.array([math.erf(float(v)) for v in x])
    assert np.abs(erf32(x) - want).max() < 1.5e-7
    x = np.linspace(-100, 10, 200_001).astype(np.float32)
    got, want = exp32(x).astype(np.float64), np.exp(x.astype(np.float64))
    live = x > -87
    assert (np.abs(got - want)[live] / want[live]).max() < 1.2e-7       # within 1 ulp
    assert (got[x < -87.3] == 0).all() and exp32(np.float32([-10000.0]))[0] == 0


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
    bias = ops.key_mask_bias(padded_mask(), np.float32)
    out1 = kernels.masked_softmax_dropout_forward(scores, bias, 0.125, p, np.random.default_rng(6))
    out0 = ops.masked_softmax_dropout_forward(scores, bias, 0.125, p, np.random.default_rng(6))
    for got, want in zip(out1[:3], out0[:3]):
        close(got, want)
    assert np.isfinite(out1[1]).all()                         # fully padded rows included
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


@pytest.mark.parametrize("keys", [1, 7, 8, 13, 33])
def test_row_maximum_is_exact(rng, keys):
    """Scores of ~10^3: exp overflows unless the kernels' row maximum (eight running maxima, then the
    row's last keys one by one) is the true one; softmax's shift invariance hides any smaller error."""
    scores = rng.normal(size=(2, 3, 5, keys)).astype(np.float32) * 3000
    bias = np.zeros((2, keys), np.float32)
    got = kernels.masked_softmax_dropout_forward(scores, bias, 0.125, 0.0, None)[1]
    close(got, ops.masked_softmax_dropout_forward(scores, bias, 0.125, 0.0, None)[1])


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_attention_twins(rng, p):
    check_attention_twins(kernels, rng, p)


def check_attention_twins(impl, rng, p):
    """The attention core as the model calls it: q, k, v strided views of the fused QKV product,
    the context written into the merged-heads layout, the gradients into the fused QKV gradient."""
    q, k, v = fused_qkv_views(rng)
    bias = ops.key_mask_bias(padded_mask(), np.float32)
    merged, context_view = merged_heads()
    ctx1, s1, cache1 = impl.attention_forward(q, k, v, bias, p, np.random.default_rng(8), out=context_view)
    ctx0, s0, cache0 = ops.attention_forward(q, k, v, bias, p, np.random.default_rng(8))
    assert np.shares_memory(ctx1, merged)
    close(merged, ctx0.transpose(0, 2, 1, 3).reshape(B, T, C))
    close(s1, s0)
    np.testing.assert_array_equal(cache1.dropped == 0, cache0.dropped == 0)
    dctx = rng.normal(size=ctx0.shape).astype(np.float32)
    extra = rng.normal(size=s0.shape).astype(np.float32) * padded_mask()[:, None, None, :]
    dqkv = np.full((B, T, 3, H, C // H), np.nan, np.float32)
    views = tuple(dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    got = impl.attention_backward(dctx, cache1, extra, out=views)
    want = ops.attention_backward(dctx, cache0, extra)
    for g, view, w in zip(got, views, want):
        assert np.shares_memory(g, dqkv)
        close(view, w, 1e-4)
    assert np.isfinite(dqkv).all()                             # every entry written


def cache_layout(cache):
    """A cache's structure: its type, and per field the type, or shape and dtype of an array."""
    if isinstance(cache, np.ndarray):
        return ("array", cache.shape, cache.dtype)
    if isinstance(cache, tuple):
        return (type(cache).__name__, getattr(cache, "_fields", None), tuple(cache_layout(c) for c in cache))
    return type(cache).__name__


def test_twins_share_cache_layouts(rng):
    """A cache from the kernel and from its NumPy twin: the same NamedTuple, the same shapes."""
    x = rng.normal(size=(B, T, C)).astype(np.float32)
    vec = rng.normal(size=C).astype(np.float32)
    u = rng.normal(size=(B, T, F)).astype(np.float32)
    q, k, v = fused_qkv_views(rng)
    bias = ops.key_mask_bias(padded_mask(), np.float32)
    calls = {
        "layernorm": lambda impl: impl.layernorm_forward(x, vec, vec, 1e-12),
        "sublayer exit": lambda impl: impl.bias_dropout_residual_layernorm_forward(
            x, vec, x, vec, vec, 1e-12, 0.1, np.random.default_rng(1)),
        "gelu": lambda impl: impl.bias_gelu_forward(u, u[0, 0]),
        "dropout": lambda impl: impl.dropout_forward(x, 0.1, np.random.default_rng(1)),
        "attention": lambda impl: impl.attention_forward(q, k, v, bias, 0.1, np.random.default_rng(1)),
    }
    for name, call in calls.items():
        fast, ref = cache_layout(call(kernels)[-1]), cache_layout(call(ops)[-1])
        assert fast == ref, f"{name}: kernel cache {fast} != NumPy cache {ref}"
    assert cache_layout(calls["layernorm"](ops)[-1])[1] == ("xhat", "rstd", "gamma")      # the check sees fields


@pytest.fixture
def two_numba_threads():
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one core: nothing to split over")
    saved = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(saved)


@pytest.mark.parametrize("batch", [B, 1])    # 1: split over the heads instead
def test_batched_matmul_splits_and_is_matmul(rng, monkeypatch, two_numba_threads, batch):
    """Inside a single-threaded-BLAS region the per-head products are split over our threads:
    bit-identical to np.matmul, strided out= included, and the BLAS thread count is never set."""
    if not process.blas_thread_control():
        pytest.skip("no OpenBLAS found: batched_matmul is np.matmul")
    q, k, v = fused_qkv_views(rng, batch)
    with process.single_threaded_blas():
        set_threads, get_threads = process.blas_thread_control()
        sets, splits = [], []
        monkeypatch.setattr(process, "_blas", (lambda n: sets.append(n), get_threads))
        real_pool = process.thread_pool
        monkeypatch.setattr(process, "thread_pool", lambda n: splits.append(n) or real_pool(n))
        scores = kernels.batched_matmul(q, k.swapaxes(-1, -2))
        merged, context_view = merged_heads(batch)
        kernels.batched_matmul(scores, v, out=context_view)
        monkeypatch.undo()
    np.testing.assert_array_equal(scores, q @ k.swapaxes(-1, -2))
    np.testing.assert_array_equal(merged, (scores @ v).transpose(0, 2, 1, 3).reshape(batch, T, C))
    assert splits == [2, 2] and sets == []


def test_single_threaded_blas_regions_nest_across_threads():
    """The first region to open sets one thread, the last to close restores the count, whatever
    the order and the threads they close in."""
    import threading
    control = process.blas_thread_control()
    if not control:
        pytest.skip("no OpenBLAS found")
    set_threads, get_threads = control
    saved = get_threads()
    set_threads(3)
    try:
        outer = process.single_threaded_blas()
        outer.__enter__()
        assert get_threads() == 1
        opened, release = threading.Event(), threading.Event()

        def other():
            with process.single_threaded_blas():
                opened.set()
                release.wait(10)

        worker = threading.Thread(target=other)
        worker.start()
        opened.wait(10)
        outer.__exit__(None, None, None)           # closes first: the other region is still open
        assert get_threads() == 1
        release.set()
        worker.join(10)
        assert get_threads() == 3
    finally:
        set_threads(saved)
