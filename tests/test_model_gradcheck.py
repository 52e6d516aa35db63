"""The whole encoder plus pooler and heads: analytic gradients of every parameter against finite
differences in float64, with upstream gradients injected on hidden states and attention scores."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from tests.gradcheck import assert_grad_close, check_directional, numeric_grad


def tiny_config(**kw):
    base = dict(vocab_size=11, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=12, max_position_embeddings=8, type_vocab_size=2)
    base.update(kw)
    return BertConfig(**base)


@st.composite
def batches(draw):
    B, T = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))   # 0: a fully padded row
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 11, (B, T))
    types = rng.integers(0, 2, (B, T))
    return ids, types, mask, seed


def objective(model, ids, types, mask, weights, dropout_seed):
    """A scalar that touches every output the distillation uses."""
    rng = np.random.default_rng(dropout_seed) if dropout_seed is not None else None
    out = model.forward(ids, types, mask, rng=rng, keep_cache=True)
    total = 0.0
    if out.logits is not None:
        total += np.sum(out.logits * weights["logits"])
    total += np.sum(out.pooled * weights["pooled"])
    for i, h in weights["hidden"].items():
        total += np.sum(out.hidden_states[i] * h)
    for layer, s in weights["scores"].items():
        total += np.sum(out.attention_scores[layer] * s)
    return total, out


@pytest.mark.parametrize("use_kernels", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("num_labels", [0, 1, 3])
@given(batches(), st.booleans())
def test_full_model_gradients(use_kernels, num_labels, batch, dropout):
    ids, types, mask, seed = batch
    # no [PAD] row: its gradient is 0 by design, not its derivative (test_pad_row_gets_no_gradient)
    cfg = tiny_config(num_labels=num_labels, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2,
                      pad_token_id=None)
    model = Bert(cfg, dtype=np.float64, seed=seed % 1000, use_kernels=use_kernels)
    model.params.data[:] = np.random.default_rng(seed).normal(0, 0.5, model.params.size)
    rng = np.random.default_rng(seed + 1)
    B, T = ids.shape
    H, L = cfg.num_attention_heads, cfg.num_hidden_layers
    key_mask = mask[:, None, None, :]   # masked keys hold a constant -10000: leave them out of f
    weights = dict(
        logits=rng.standard_normal((B, num_labels)) if num_labels else None,
        pooled=rng.standard_normal((B, cfg.hidden_size)),
        hidden={i: rng.standard_normal((B, T, cfg.hidden_size)) for i in range(L + 1)},
        scores={l: rng.standard_normal((B, H, T, T)) * key_mask for l in range(L)},
    )
    dropout_seed = seed if dropout else None
    _, out = objective(model, ids, types, mask, weights, dropout_seed)
    grads = model.backward(out, dlogits=weights["logits"], dpooled=weights["pooled"],
                           dhidden=weights["hidden"], dscores=weights["scores"])
    f = lambda: objective(model, ids, types, mask, weights, dropout_seed)[0]
    check_directional(f, grads.data.copy(), model.params.data, rng, n_dirs=2, what="whole model")
    # and coordinate-wise on a few tensors, so that one wrong tensor cannot hide in a sum
    for name in ("encoder.layer.0.attention.self.key.weight", "embeddings.LayerNorm.bias",
                 "encoder.layer.1.intermediate.dense.bias"):
        assert_grad_close(grads[name], numeric_grad(f, model.params[name]), rtol=1e-5, atol=1e-6, what=name)


def test_wrong_backward_is_caught(monkeypatch):
    """The check has teeth: a GELU derivative off by a little makes it fail."""
    from minitinybert.engine import ops
    cfg = tiny_config(num_labels=2)
    model = Bert(cfg, dtype=np.float64, seed=0, use_kernels=False)
    original = ops.bias_gelu_backward

    def slightly_wrong(dy, cache):
        du, db = original(dy, cache)
        return du * 1.01, db * 1.01

    monkeypatch.setattr(ops, "bias_gelu_backward", slightly_wrong)
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 11, (2, 4)), np.ones((2, 4), dtype=np.int64)
    weights = dict(logits=rng.standard_normal((2, 2)), pooled=np.zeros((2, 8)), hidden={}, scores={})
    _, out = objective(model, ids, None, mask, weights, None)
    grads = model.backward(out, dlogits=weights["logits"])
    f = lambda: objective(model, ids, None, mask, weights, None)[0]
    name = "encoder.layer.0.intermediate.dense.bias"
    with pytest.raises(AssertionError):
        assert_grad_close(grads[name], numeric_grad(f, model.params[name]), what=name)


@pytest.mark.parametrize("use_kernels", [True, False], ids=["numba", "numpy"])
def test_pad_row_gets_no_gradient(use_kernels):
    """As nn.Embedding(padding_idx=pad_token_id) in Hugging Face's BERT and the official TinyBERT:
    the [PAD] row's gradient is zero, every other gradient the same as without a frozen row."""
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 11, (3, 6))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    ids[mask == 0] = 0                                     # padded positions hold [PAD], id 0
    grads = {}
    for pad in (0, None):
        model = Bert(tiny_config(num_labels=2, pad_token_id=pad), seed=1, use_kernels=use_kernels)
        out = model.forward(ids, None, mask, rng=np.random.default_rng(2), keep_cache=True)
        dhidden = {i: np.ones_like(h) for i, h in enumerate(out.hidden_states)}    # padded positions too
        grads[pad] = model.backward(out, dlogits=np.ones((3, 2), np.float32), dhidden=dhidden)
    word = "embeddings.word_embeddings.weight"
    assert (grads[0][word][0] == 0).all() and (grads[None][word][0] != 0).any()
    frozen, free = grads[0].data.copy(), grads[None].data.copy()
    row = slice(grads[0].layout[word][0], grads[0].layout[word][0] + grads[0][word].shape[1])
    frozen[row] = free[row] = 0
    np.testing.assert_array_equal(frozen, free)


def test_padding_does_not_change_real_tokens():
    """A padded batch gives the same hidden states on real tokens as each sequence alone."""
    model = Bert(tiny_config(), dtype=np.float64, seed=3)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 11, (2, 6))
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3])
    both = model.forward(ids, None, mask).hidden_states[-1]
    alone = model.forward(ids[1:, :3], None, None).hidden_states[-1]
    np.testing.assert_allclose(both[1, :3], alone[0], rtol=1e-10, atol=1e-12)


def test_kernels_and_numpy_models_agree_float32():
    cfg = tiny_config(hidden_size=24, num_attention_heads=3, intermediate_size=40, num_labels=2,
                      vocab_size=50, max_position_embeddings=32)
    fast, ref = Bert(cfg, seed=5, use_kernels=True), Bert(cfg, seed=5, use_kernels=False)
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 50, (4, 20)), (rng.random((4, 20)) > 0.2).astype(np.int64)
    a, b = fast.forward(ids, None, mask, keep_cache=True), ref.forward(ids, None, mask, keep_cache=True)
    for x, y in zip(a.hidden_states + a.attention_scores, b.hidden_states + b.attention_scores):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    dlogits = rng.standard_normal((4, 2)).astype(np.float32)
    ga, gb = fast.backward(a, dlogits=dlogits).data.copy(), ref.backward(b, dlogits=dlogits).data.copy()
    np.testing.assert_allclose(ga, gb, rtol=1e-3, atol=1e-6)


def test_bad_inputs_are_refused():
    model = Bert(tiny_config(), seed=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.forward(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="token ids"):
        model.forward(np.full((1, 3), 11))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.forward(np.zeros((2, 3), dtype=np.int64), None, np.ones((2, 4)))
    with pytest.raises(ValueError, match="integer"):
        model.forward(np.zeros((2, 3), dtype=np.float32))
    out = model.forward(np.zeros((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="keep_cache"):
        model.backward(out, dpooled=np.ones((1, 8), np.float32))
