"""tools/experiments/fused_attention.py, the attention core fused per (batch, head) block: the same
numbers as ops.py's (and the package kernels') attention core, its gradients by finite differences."""
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.engine import kernels, ops
from tests.test_kernels import cache_layout, check_attention_twins, close, fused_qkv_views, padded_mask
from tests.test_ops_gradcheck import batch, check_attention_core, seeds, tokens
from tools.experiments import fused_attention

FUSED = SimpleNamespace(attention_forward=fused_attention.fused_attention_forward,
                        attention_backward=fused_attention.fused_attention_backward)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_fused_attention_twins(rng, p):
    check_attention_twins(FUSED, rng, p)


@pytest.mark.parametrize("keys", [1, 7, 8, 13, 33])
def test_row_maximum_is_exact(rng, keys):
    """Scores of ~10^3: exp overflows unless the row maximum (the package kernels') is the true one."""
    bias = np.zeros((2, keys), np.float32)
    q, k, v = (rng.normal(size=(2, 3, keys, 8)).astype(np.float32) * 40 for _ in range(3))
    got = FUSED.attention_forward(q, k, v, bias, 0.0, None)[0]
    close(got, ops.attention_forward(q, k, v, bias, 0.0, None)[0], 1e-4)


def test_cache_layout_is_the_numpy_twins(rng):
    """Its cache is ops.attention_forward's, field for field: the model's backward reads either."""
    q, k, v = fused_qkv_views(rng)
    bias = ops.key_mask_bias(padded_mask(), np.float32)
    fused, ref = (impl.attention_forward(q, k, v, bias, 0.1, np.random.default_rng(1))[-1] for impl in (FUSED, ops))
    assert cache_layout(fused) == cache_layout(ref)


def test_same_dropout_mask_as_the_package_kernels(rng):
    q, k, v = fused_qkv_views(rng)
    bias = ops.key_mask_bias(padded_mask(), np.float32)
    fused, package = (impl.attention_forward(q, k, v, bias, 0.1, np.random.default_rng(2))[-1]
                      for impl in (FUSED, kernels))
    np.testing.assert_array_equal(fused.dropped == 0, package.dropped == 0)


@given(st.data(), batch, st.integers(1, 3), tokens, st.integers(1, 6), seeds, st.booleans())
def test_fused_attention_gradients(data, B, H, T, D, seed, with_dropout):
    check_attention_core(FUSED, data, B, H, T, D, seed, with_dropout)
