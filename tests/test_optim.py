"""AdamW: the fused kernel against its NumPy twin and against AdamW written out by hand."""
import numpy as np
import pytest

from minitinybert.engine.optim import AdamW, clip_grad_norm, decay_mask, linear_schedule
from minitinybert.engine.params import ParamSet

SHAPES = {"dense.weight": (3, 4), "dense.bias": (3,), "LayerNorm.weight": (4,), "emb.weight": (5, 2)}


def test_decay_mask_skips_biases_and_layernorm():
    mask = ParamSet(SHAPES)
    mask.data[...] = decay_mask(mask)
    assert mask["dense.weight"].all() and mask["emb.weight"].all()
    assert not mask["dense.bias"].any() and not mask["LayerNorm.weight"].any()


@pytest.mark.parametrize("use_kernels", [True, False])
def test_adamw_matches_the_textbook_update(use_kernels):
    rng = np.random.default_rng(0)
    params = ParamSet(SHAPES, dtype=np.float64)
    params.data[...] = rng.standard_normal(params.size)
    p, m, v = params.data.copy(), np.zeros(params.size), np.zeros(params.size)
    decay = decay_mask(params)
    opt = AdamW(params, lr=1e-2, weight_decay=0.1, eps=1e-6, use_kernels=use_kernels)
    for t in range(1, 6):
        g = rng.standard_normal(params.size)
        opt.step(g, lr=1e-2 * t)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 1e-2 * t * ((m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-6) + 0.1 * decay * p)
        np.testing.assert_allclose(params.data, p, rtol=1e-9, atol=1e-12)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a = ParamSet(SHAPES)
    a.data[...] = rng.standard_normal(a.size)
    b = a.copy()
    grads = [rng.standard_normal(a.size).astype(np.float32) for _ in range(4)]
    opt_a, opt_b = AdamW(a, lr=1e-3), AdamW(b, lr=1e-3)
    for g in grads[:2]:
        opt_a.step(g.copy())
        opt_b.step(g.copy())
    restored = AdamW(b, lr=1e-3)
    restored.load_state_dict({k: (v.copy() if hasattr(v, "copy") else v) for k, v in opt_b.state_dict().items()})
    for g in grads[2:]:
        opt_a.step(g.copy())
        restored.step(g.copy())
    np.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(ValueError, match="optimizer state"):
        restored.load_state_dict({"m": np.zeros(3), "v": np.zeros(3), "step": 1})


def test_clip_grad_norm():
    g = np.array([3.0, 4.0], np.float32)
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-5)
    g = np.array([0.3, 0.4], np.float32)
    clip_grad_norm(g, 1.0)
    np.testing.assert_allclose(g, [0.3, 0.4])


def test_linear_schedule_warms_up_then_decays_to_zero():
    lrs = [linear_schedule(s, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1 / 90) and linear_schedule(100, 100) == 0.0
