"""Sentence-embedding pooling (engine/pooling.py) and the embedding losses (engine/losses.py) against
finite differences in float64 (Hypothesis draws shapes, masks, values, weights), and the pooling's
meaning checked in plain NumPy; the sentence-transformers files read as the teacher ships them."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.engine import losses, pooling
from minitinybert.engine.pooling import SentenceConfig
from tests.gradcheck import assert_grad_close, numeric_grad

seeds = st.integers(0, 2**31 - 1)
small = st.integers(1, 4)
weights = st.floats(0.1, 3.0)


def _mask(data, B, T):
    rows = [data.draw(st.integers(1, T)) for _ in range(B)]          # every row has >= 1 real token
    return (np.arange(T)[None, :] < np.array(rows)[:, None]).astype(np.float64)


@pytest.mark.parametrize("mode", pooling.POOLINGS)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("project", [False, True])
@given(data=st.data(), B=small, T=st.integers(1, 5), C=st.integers(1, 5), D=st.integers(1, 4), seed=seeds)
def test_embed_chain_gradient(mode, normalize, project, data, B, T, C, D, seed):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((B, T, C))
    mask = _mask(data, B, T)
    W, b = rng.standard_normal((D, C)), rng.standard_normal(D)
    proj = (W, b) if project else None
    up = rng.standard_normal((B, D if project else C))           # a random upstream gradient
    cfg = SentenceConfig(mode, normalize)
    f = lambda: float(np.sum(up * pooling.embed_forward(h, mask, cfg, proj)[0]))
    _, cache = pooling.embed_forward(h, mask, cfg, proj)
    dh, dproj = pooling.embed_backward(cache, up)
    assert_grad_close(dh, numeric_grad(f, h), what=f"{mode} pooling d hidden")
    if project:
        assert_grad_close(dproj[0], numeric_grad(f, W), what="projection dW")
        assert_grad_close(dproj[1], numeric_grad(f, b), what="projection db")
    else:
        assert dproj is None


@given(small, st.integers(1, 6), weights, seeds)
def test_embedding_mse(B, D, w, seed):
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal((B, D)), rng.standard_normal((B, D))
    f = lambda: w * losses.embedding_mse_forward(s, t)[0]
    _, cache = losses.embedding_mse_forward(s, t)
    assert_grad_close(losses.embedding_mse_backward(cache, w), numeric_grad(f, s), what="embedding MSE")


@given(small, st.integers(1, 6), weights, seeds)
def test_embedding_cosine(B, D, w, seed):
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal((B, D)) * 3, rng.standard_normal((B, D))
    f = lambda: w * losses.embedding_cosine_forward(s, t)[0]
    loss, cache = losses.embedding_cosine_forward(s, t)
    assert_grad_close(losses.embedding_cosine_backward(cache, w), numeric_grad(f, s), what="embedding cosine")
    cos = np.sum(s * t, 1) / np.linalg.norm(s, axis=1) / np.linalg.norm(t, axis=1)
    assert np.isclose(loss, np.mean(1 - cos))


def test_cosine_loss_is_zero_on_the_teacher_direction_and_scale_free():
    t = np.array([[1.0, 2.0, -1.0], [0.5, 0.0, 0.3]])
    loss, cache = losses.embedding_cosine_forward(3.0 * t, t)
    assert abs(loss) < 1e-12 and np.allclose(losses.embedding_cosine_backward(cache), 0)
    assert losses.embedding_cosine_forward(-t, t)[0] == pytest.approx(2.0)


def test_embedding_losses_need_matching_widths():
    for forward in (losses.embedding_mse_forward, losses.embedding_cosine_forward):
        with pytest.raises(ValueError, match="project"):
            forward(np.zeros((2, 3)), np.zeros((2, 4)))


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    mean, _ = pooling.pool_forward(h, mask, "mean")
    np.testing.assert_allclose(mean[0], h[0, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(mean[1], h[1].mean(0), rtol=1e-6)
    h2 = h.copy()
    h2[0, 2:] = 1e6                                   # padded positions change nothing
    np.testing.assert_array_equal(pooling.pool_forward(h2, mask, "mean")[0], mean)
    np.testing.assert_array_equal(pooling.pool_forward(h, mask, "cls")[0], h[:, 0])
    assert mean.dtype == np.float32
    u = pooling.embed_numpy(h, mask, SentenceConfig("mean", True))
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(u, mean / np.linalg.norm(mean, axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        pooling.pool_forward(h, mask, "max")


def test_normalize_of_zero_is_zero_without_nan():
    u, cache = pooling.normalize_forward(np.zeros((1, 3)))
    assert np.all(u == 0)
    assert np.all(np.isfinite(pooling.normalize_backward(cache, np.ones((1, 3)))))


def _st_folder(tmp_path, pooling_cfg, modules=("Transformer", "Pooling", "Normalize"), max_len=256):
    entries = [{"idx": i, "name": str(i), "path": {"Transformer": "", "Pooling": "1_Pooling"}.get(m, f"{i}_{m}"),
                "type": f"sentence_transformers.models.{m}"} for i, m in enumerate(modules)]
    (tmp_path / "modules.json").write_text(json.dumps(entries))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_cfg))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len,
                                                                     "do_lower_case": False}))
    return tmp_path


def test_read_sentence_config_as_the_teacher_ships_it(tmp_path):
    mean = {"word_embedding_dimension": 384, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    assert pooling.read_sentence_config(_st_folder(tmp_path, mean)) == SentenceConfig("mean", True, 256)
    assert pooling.read_sentence_config(tmp_path / "1_Pooling") is None


def test_read_sentence_config_cls_without_normalize(tmp_path):
    cls = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    got = pooling.read_sentence_config(_st_folder(tmp_path, cls, ("Transformer", "Pooling"), 128))
    assert got == SentenceConfig("cls", False, 128)


def test_read_sentence_config_refuses_max_pooling(tmp_path):
    with pytest.raises(pooling.SentenceConfigError, match="max"):
        pooling.read_sentence_config(_st_folder(tmp_path, {"pooling_mode_max_tokens": True}))
