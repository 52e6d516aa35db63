"""The teacher's logits computed once for prediction distillation (logits_cache.py): the same losses
and gradients as a teacher forward pass in the step, and a cache that a changed teacher or data
file never reuses."""
import numpy as np
import pytest

from minitinybert.data.batches import TaskBatches
from minitinybert.engine.config import BertConfig
from minitinybert.data.task_files import load_split
from minitinybert.distill import LossWeights, prediction_step
from minitinybert.distill.logits_cache import teacher_logits
from minitinybert.engine.model import Bert
from minitinybert.data.tasks import get_task
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve_teacher(None, log=lambda *a: None))


def small(tok, layers, hidden, labels, seed):
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=labels,
                        initializer_range=0.2)      # large weights: logits that differ from text to text
    return Bert(config, seed=seed)


def write_sst2(root, texts):
    (root / "glue" / "SST-2").mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        lines = ["sentence\tlabel"] + [f"{t}\t{i % 2}" for i, t in enumerate(texts)]
        (root / "glue" / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return load_split(get_task("sst2"), "train", root)


TEXTS = ["a gripping film", "dull", "the plot is thin but the actors make it a pleasure to watch from start to end",
         "not very funny", "an awful , boring mess of a movie", "loved it", "it was fine , i guess , for a sunday",
         "great fun", "the story never finds its feet", "bad"]


@pytest.mark.parametrize("labels,hard,temperature", [(2, 0.0, 1.0), (3, 0.4, 2.0), (1, 0.0, 1.0)])
def test_cached_logits_give_the_losses_and_gradient_of_the_teacher_in_the_step(tok, tmp_path, labels, hard,
                                                                                temperature):
    """The cache is made in batches of another composition and padding than the training batch:
    the losses must still be those of a teacher forward pass on that batch, to 1e-6."""
    examples = write_sst2(tmp_path / "data", TEXTS)
    teacher, student = small(tok, 2, 16, labels, seed=1), small(tok, 1, 8, labels, seed=2)
    cached = teacher_logits(teacher, examples, tok, 64, cache_dir=tmp_path / "cache", batch_size=3, log=lambda m: 0)
    batches = TaskBatches(examples, tok, 4, 64, seed=0, window=0, extras=(cached,))
    w = LossWeights(prediction=1.0, hard=hard)
    for _ in range(3):                                 # 4, 4 and 2 rows, each padded to its own longest
        batch, y, rows = next(batches)
        y = y.astype(np.float32) if labels == 1 else y % labels
        live = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
        assert np.abs(rows - live).max() < 1e-5
        today = prediction_step(student, batch, y, live, None, w, temperature)
        expected = student.grads.data.copy()
        got = prediction_step(student, batch, y, rows, None, w, temperature)
        assert got.losses.keys() == today.losses.keys()
        for key in today.losses:
            assert got.losses[key] == pytest.approx(today.losses[key], rel=1e-6, abs=1e-6), key
        np.testing.assert_allclose(student.grads.data, expected, rtol=1e-4, atol=1e-6)


def test_a_changed_teacher_or_data_file_never_reuses_the_cache(tok, tmp_path):
    messages = []
    log = messages.append
    cache = tmp_path / "cache"
    examples = write_sst2(tmp_path / "data", TEXTS)
    teacher = small(tok, 1, 8, 2, seed=1)
    first = teacher_logits(teacher, examples, tok, 64, cache_dir=cache, log=log)
    assert "computed in" in messages[-1] and len(list(cache.iterdir())) == 1
    again = teacher_logits(teacher, examples, tok, 64, cache_dir=cache, log=log)
    assert "read from" in messages[-1]
    np.testing.assert_array_equal(again, first)

    # the teacher trained one more (tiny) step: other weights, another cache
    teacher.params["classifier.bias"][...] += 1e-3
    changed = teacher_logits(teacher, examples, tok, 64, cache_dir=cache, log=log)
    assert "computed in" in messages[-1] and len(list(cache.iterdir())) == 2
    np.testing.assert_allclose(changed - first, 1e-3, atol=1e-6)

    # one sentence of the data file edited: the logits are computed again, and that row differs
    edited = write_sst2(tmp_path / "data", TEXTS[:4] + ["an awful , boring mess of a film"] + TEXTS[5:])
    new = teacher_logits(teacher, edited, tok, 64, cache_dir=cache, log=log)
    assert "computed in" in messages[-1] and len(list(cache.iterdir())) == 3
    differs = np.abs(new - changed).max(axis=1) > 1e-4
    assert differs.tolist() == [i == 4 for i in range(len(TEXTS))]

    # another max_length truncates differently: another cache too
    teacher_logits(teacher, edited, tok, 5, cache_dir=cache, log=log)
    assert "computed in" in messages[-1] and len(list(cache.iterdir())) == 4


def test_a_damaged_cache_file_is_computed_again(tok, tmp_path):
    messages = []
    examples = write_sst2(tmp_path / "data", TEXTS)
    teacher = small(tok, 1, 8, 2, seed=1)
    first = teacher_logits(teacher, examples, tok, 64, cache_dir=tmp_path, log=messages.append)
    (path,) = tmp_path.glob("teacher-logits-*.safetensors")
    path.write_bytes(path.read_bytes()[:-8])
    again = teacher_logits(teacher, examples, tok, 64, cache_dir=tmp_path, log=messages.append)
    assert "ignoring" in messages[-3] and "computed in" in messages[-1]
    np.testing.assert_array_equal(again, first)
    assert "read from" not in " ".join(messages)


def test_only_the_rows_the_stage_draws_are_computed_and_a_later_run_adds_the_missing(tok, tmp_path):
    messages = []
    examples = write_sst2(tmp_path / "data", TEXTS)
    teacher = small(tok, 1, 8, 2, seed=1)
    full = teacher_logits(teacher, examples, tok, 64, log=messages.append)      # no cache: every row
    assert not np.isnan(full).any()

    batches = TaskBatches(examples, tok, 3, 64, seed=0, window=2)
    needed = batches.first_steps(2)                                                  # 2 batches of 3: 6 rows
    assert len(needed) == 6
    part = teacher_logits(teacher, examples, tok, 64, cache_dir=tmp_path / "cache", log=messages.append, needed=needed)
    assert "6 of 10 examples" in messages[-2]
    np.testing.assert_allclose(part[needed], full[needed], atol=1e-6)
    others = np.setdiff1d(np.arange(len(TEXTS)), needed)
    assert np.isnan(part[others]).all()

    more = batches.first_steps(5)                     # one epoch and more: every row, 4 of them missing
    assert more.tolist() == list(range(len(TEXTS)))
    again = teacher_logits(teacher, examples, tok, 64, cache_dir=tmp_path / "cache", log=messages.append, needed=more)
    assert "4 of 10 examples" in messages[-2] and "less those cached" in messages[-2]
    np.testing.assert_allclose(again, full, atol=1e-6)
    np.testing.assert_array_equal(again[needed], part[needed])                     # read, not recomputed
    teacher_logits(teacher, examples, tok, 64, cache_dir=tmp_path / "cache", log=messages.append, needed=more)
    assert "read from" in messages[-1]


def test_first_steps_are_the_examples_of_the_first_batches_drawn(tok, tmp_path):
    """The texts are distinct, so a row of token ids names its example."""
    examples = write_sst2(tmp_path / "data", TEXTS)

    def ids(batch):
        return {tuple(row[:n]) for row, n in zip(batch.input_ids.tolist(), batch.attention_mask.sum(1))}

    for steps in (1, 3, 4, 9):                       # 4 batches an epoch (3, 3, 3, 1 rows): 9 is 2 epochs and more
        batches = TaskBatches(examples, tok, 3, 64, seed=7, window=2)
        drawn = set().union(*(ids(next(batches)[0]) for _ in range(steps)))
        rows = batches.first_steps(steps)
        assert ids(batches.tokens.batch(rows)) == drawn and len(rows) == len(drawn), steps


def test_the_pass_in_two_threads_gives_the_one_thread_logits(tok, tmp_path):
    examples = write_sst2(tmp_path / "data", TEXTS * 3)
    teacher = small(tok, 2, 16, 3, seed=1)
    one = teacher_logits(teacher, examples, tok, 64, batch_size=4, log=lambda m: 0, workers=1)
    two = teacher_logits(teacher, examples, tok, 64, batch_size=4, log=lambda m: 0, workers=2)
    np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6)


def test_the_evaluator_on_two_threads_gives_the_one_thread_metrics(tok, tmp_path, monkeypatch):
    import minitinybert.distill.steps as distill
    examples = write_sst2(tmp_path / "data", TEXTS * 13)         # 130 examples: three batches of 64
    model = small(tok, 2, 16, 2, seed=3)
    threads = []
    real = distill.predict_logits
    monkeypatch.setattr(distill, "predict_logits", lambda *a, **k: threads.append(k["workers"]) or real(*a, **k))
    one = distill.make_evaluator(model, examples, tok, 64, workers=1)()
    two = distill.make_evaluator(model, examples, tok, 64, workers=2)()
    assert threads == [1, 2]
    assert one.keys() == two.keys() and 0 < one["main"] < 1
    for name in one:
        assert two[name] == pytest.approx(one[name], abs=1e-6), name
