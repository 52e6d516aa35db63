"""tools/teacher_variants.py: each variant changes what it says (the mean pooler by finite
differences, the layer-wise rates against the NumPy AdamW with a rate per element, the average
against the live weights), runs, and leaves the package as it found it."""
import sys
from pathlib import Path

import numpy as np
import pytest

import minitinybert.distill as distill
import minitinybert.model as model
import minitinybert.ops as ops
import minitinybert.training as training
from minitinybert.optim import AdamW, adamw_step_numpy
from minitinybert.params import ParamSet
from minitinybert.weights import load_model
from gradcheck import assert_grad_close, numeric_grad
from tiny_world import build_world

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import teacher_variants  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def tiny(world, out):
    return ["--data", str(world / "data"), "--teacher", str(world / "teacher"), "--out", str(out), "--batch-size", "8",
            "--teacher-steps", "3", "--eval-every", "0", "--workers", "1"]


def run(world, out, *argv):
    return teacher_variants.main([*argv, *tiny(world, out)])


def test_mean_pooler_gradient_and_padding():
    rng = np.random.default_rng(0)
    h, w, b = rng.standard_normal((2, 5, 4)), rng.standard_normal((4, 4)), rng.standard_normal(4)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    R = rng.standard_normal((2, 4))
    f = lambda: np.sum(teacher_variants.mean_pooler_forward(h, w, b, mask)[0] * R)
    _, cache = teacher_variants.mean_pooler_forward(h, w, b, mask)
    dh, dw, db = teacher_variants.mean_pooler_backward(R, cache, w, h.shape)
    for name, arr, g in (("hidden", h, dh), ("w", w, dw), ("b", b, db)):
        assert_grad_close(g, numeric_grad(f, arr), what=f"mean pooler d{name}")
    assert not dh[0, 3:].any()                                   # padding gets no gradient
    expected = np.tanh(h[0, :3].mean(0) @ w.T + b)
    np.testing.assert_allclose(teacher_variants.mean_pooler_forward(h, w, b, mask)[0][0], expected, rtol=1e-12)


def test_layerwise_rates_match_adamw_with_a_rate_per_element():
    shapes = {"embeddings.word_embeddings.weight": (4, 3), "encoder.layer.0.dense.weight": (3, 3),
              "encoder.layer.0.LayerNorm.bias": (3,), "encoder.layer.1.dense.weight": (3, 3),
              "classifier.weight": (2, 3)}
    layout = ParamSet(shapes).layout
    groups = teacher_variants.layer_groups(layout, 0.5)
    assert groups[0][0] == 0 and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    scale_of = {name: next(scale for start, stop, scale in groups if start <= offset < stop)
                for name, (offset, _) in layout.items()}
    assert list(scale_of.values()) == [0.25, 0.5, 0.5, 1.0, 1.0]      # L = 2: embeddings, layer 0, layer 1, head
    rng = np.random.default_rng(1)
    params, reference = ParamSet(shapes), ParamSet(shapes)
    params.data[...] = reference.data[...] = rng.standard_normal(params.size)
    rates = np.concatenate([np.full(stop - start, scale, np.float32) for start, stop, scale in groups])
    opt, ref = teacher_variants.LayerwiseAdamW(params, factor=0.5, lr=1e-2), AdamW(reference, lr=1e-2)
    for t in range(1, 4):
        g = rng.standard_normal(params.size).astype(np.float32)
        opt.step(g.copy())
        adamw_step_numpy(reference.data, g, ref.m, ref.v, ref.decay, 1e-2 * rates, 0.9, 0.999, 1e-6, 0.01, t)
        np.testing.assert_allclose(params.data, reference.data, rtol=1e-5, atol=1e-7)


def test_each_variant_runs_and_leaves_the_package_as_it_was(world, tmp_path):
    originals = (distill.load_model, model.Bert.forward, ops.pooler_forward, ops.pooler_backward,
                 training.AdamW, training._evaluate)
    assert distill.main(["finetune-teacher", *tiny(world, tmp_path / "plain"), "--teacher-lr", "1e-2"]) == 0
    plain = load_model(tmp_path / "plain" / "teacher" / "last").params.data
    # an untrained pooler (the tiny teacher's bias is zero) starts as the identity
    assert run(world, tmp_path / "pooler", "pooler-identity", "--teacher-lr", "0") == 0
    pooler = load_model(tmp_path / "pooler" / "teacher" / "best").params["pooler.dense.weight"]
    np.testing.assert_array_equal(pooler, np.eye(pooler.shape[0]))
    # the average is what is evaluated and kept; the live weights train as without it
    assert run(world, tmp_path / "ema", "ema", "--value", "0.5", "--teacher-lr", "1e-2") == 0
    last = load_model(tmp_path / "ema" / "teacher" / "last").params.data
    np.testing.assert_array_equal(last, plain)
    assert not np.allclose(load_model(tmp_path / "ema" / "teacher" / "best").params.data, last)
    # the head reading the mean (and layer-wise rates) train another way than the plain run
    for variant in ("mean-pooling", "llrd"):
        assert run(world, tmp_path / variant, variant, "--teacher-lr", "1e-2") == 0
        assert not np.allclose(load_model(tmp_path / variant / "teacher" / "last").params.data, plain), variant
    assert (distill.load_model, model.Bert.forward, ops.pooler_forward, ops.pooler_backward,
            training.AdamW, training._evaluate) == originals
    for refused in (["ema", "--value", "1.5"], ["ema", "--resume"]):
        with pytest.raises(SystemExit):
            teacher_variants.main(refused)
