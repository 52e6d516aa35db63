"""Data parallelism over threads (parallel.py): shards of a batch give the whole batch's gradient."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitinybert.engine.config import BertConfig
from minitinybert.distill import LossWeights, finetune_step, intermediate_step, layer_mapping, prediction_step
from minitinybert.engine.model import Bert
from minitinybert.data.shards import Rows, Shards, rows_of, shard_rows
from minitinybert.training.parallel import DataParallel
from minitinybert.data.tokenizer import Batch

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


@given(st.integers(1, 60), st.lists(st.integers(1, 4), min_size=1, max_size=5))
def test_processes_rows_are_their_shards_in_order(n_rows, workers_per_process):
    """Processes of w_0, w_1, ... workers take contiguous rows, in process order, that are exactly
    their shards of the global batch (none when the batch has fewer rows than shards before them)."""
    total = sum(workers_per_process)
    firsts = np.cumsum([0] + workers_per_process[:-1])
    rows = [rows_of(Shards(int(f), w, total), n_rows) for f, w in zip(firsts, workers_per_process)]
    parts = shard_rows(n_rows, total)
    for (lo, hi), f, w in zip(rows, firsts, workers_per_process):
        mine = parts[f:f + w]
        assert (lo, hi) == ((mine[0][0], mine[-1][1]) if mine else (n_rows, n_rows))
    assert rows[0][0] == 0 and max(hi for _, hi in rows) == n_rows
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


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


def test_a_process_with_some_rows_computes_its_shards_of_the_global_batch():
    """Given only its rows (parallel.Rows), a process computes its shards as the whole-batch process
    does: same rows, same dropout seeds, same shares of the global batch."""
    teacher, student, batch, labels = _world()
    item, step = STEPS["intermediate"](teacher, student, batch, labels)
    runner = DataParallel(student, 3)
    expected = _shard_losses(runner, step, item, np.random.default_rng(4))
    lo, hi = rows_of(Shards(1, 2, 3), 5)                   # the last two of three shards: rows 2:5
    assert (lo, hi) == (2, 5)
    mine = Rows(_rows(item, lo, hi), lo, hi, 5)
    got = _shard_losses(DataParallel(student, 2), step, mine, np.random.default_rng(4), shards=Shards(1, 2, 3))
    assert len(expected) == 3 and got == {rows: loss for rows, loss in expected.items() if rows != (0, 2)}


def _rows(batch, lo, hi):
    return Batch(batch.input_ids[lo:hi], batch.token_type_ids[lo:hi], batch.attention_mask[lo:hi])


def _shard_losses(runner, step, item, rng, shards=None):
    """{rows of the global batch: loss} of the shards the runner computes itself."""
    if shards is not None:
        runner.shards = shards
    ids = item.input_ids if isinstance(item, Batch) else item.item.input_ids
    first = 0 if isinstance(item, Batch) else item.lo
    losses = {}

    def recording(bb, child, **k):
        result = step(bb, child, **k)
        lo = first + next(i for i in range(len(ids)) if np.array_equal(ids[i], bb.input_ids[0]))
        losses[(lo, lo + len(bb.input_ids))] = result.losses["loss"]
        return result

    runner(recording, item, rng)
    return losses


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


def test_a_job_launched_without_mpi4py_is_refused(monkeypatch):
    """K processes started by mpiexec without mpi4py would each train alone over the same files:
    refused with a clear message. Without a launcher, one process, and MPI is not even imported."""
    import sys

    from minitinybert.training import world
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(world, "_world", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)          # importing it raises ImportError
    assert type(world.get_world()) is world.World and world.get_world().size == 1
    monkeypatch.setattr(world, "_world", None)
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    with pytest.raises(world.WorldError, match="rank 1 of 2 processes, but mpi4py is not installed"):
        world.get_world()
