"""Data parallelism over threads (parallel.py): shards of a batch give the whole batch's gradient."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitinybert.config import BertConfig
from minitinybert.distill import LossWeights, finetune_step, intermediate_step, layer_mapping, prediction_step
from minitinybert.model import Bert
from minitinybert.parallel import DataParallel, shard_rows
from minitinybert.tokenizer import Batch

TEACHER = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=24, max_position_embeddings=32, num_labels=2)
STUDENT = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=12, max_position_embeddings=32, num_labels=2, fit_size=16)


@given(st.integers(1, 200), st.integers(1, 9))
def test_shard_rows_cover_the_batch_once(n_rows, workers):
    parts = shard_rows(n_rows, workers)
    assert len(parts) == min(n_rows, workers)
    assert parts[0][0] == 0 and parts[-1][1] == n_rows
    assert all(lo < hi for lo, hi in parts)
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


def _world(labels_kind="class"):
    teacher = Bert(TEACHER, dtype=np.float64, seed=1)
    student = Bert(STUDENT, dtype=np.float64, seed=2)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (5, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    mask[3, 1:] = 0                      # a sequence of length 1
    return teacher, student, Batch(ids, np.zeros_like(ids), mask), np.array([0, 1, 1, 0, 1])


STEPS = {
    "intermediate": lambda t, s, b, y: (b, lambda bb, rng, **k: intermediate_step(
        t, s, bb, rng, layer_mapping(2, 3), LossWeights(), **k)),
    "prediction": lambda t, s, b, y: ((b, y, t.forward(b.input_ids, b.token_type_ids, b.attention_mask).logits),
                                      lambda bb, rng, **k: prediction_step(s, bb[0], bb[1], bb[2], rng,
                                                                           LossWeights(hard=0.3), 2.0, **k)),
    "finetune": lambda t, s, b, y: ((b, y), lambda bb, rng, **k: finetune_step(s, bb[0], bb[1], rng, **k)),
}


@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("workers", [2, 3, 8])
def test_shards_give_the_whole_batch_gradient_and_losses(kind, workers):
    teacher, student, batch, labels = _world()
    item, step = STEPS[kind](teacher, student, batch, labels)
    whole = step(item, None)
    expected = student.grads.data.copy()
    student.grads.data[...] = np.nan                   # the sharded run must overwrite every entry
    sharded = DataParallel(student, workers)(step, item, None)
    np.testing.assert_allclose(student.grads.data, expected, rtol=1e-10, atol=1e-14)
    assert sharded.losses.keys() == whole.losses.keys()
    for key in whole.losses:
        assert sharded.losses[key] == pytest.approx(whole.losses[key], rel=1e-12, abs=1e-15)
    assert (sharded.sequences, sharded.tokens, sharded.padded_tokens) == (5, 26, 35)
    assert (whole.sequences, whole.tokens, whole.padded_tokens) == (5, 26, 35)


def test_dropout_is_reproducible_for_a_given_worker_count():
    teacher, student, batch, labels = _world()
    item, step = STEPS["intermediate"](teacher, student, batch, labels)
    runner = DataParallel(student, 2)
    first = runner(step, item, np.random.default_rng(7)).losses["loss"]
    grads = student.grads.data.copy()
    again = runner(step, item, np.random.default_rng(7)).losses["loss"]
    np.testing.assert_array_equal(student.grads.data, grads)
    assert first == again
    eval_mode = runner(step, item, None).losses["loss"]
    assert eval_mode != first                         # dropout was on


def test_a_wrong_share_is_caught():
    """The weighting by rows/B is what makes shards add up: without it the sum is off by the shard count."""
    teacher, student, batch, labels = _world()
    item, step = STEPS["finetune"](teacher, student, batch, labels)
    step(item, None)
    expected = student.grads.data.copy()
    unweighted = lambda bb, rng, grads, share: step(bb, rng, grads=grads, share=1.0)  # noqa: E731
    DataParallel(student, 2)(unweighted, item, None)
    assert not np.allclose(student.grads.data, expected)
