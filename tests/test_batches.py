"""Task batches: one pass (order, shuffling, start), the resumable training stream (random or
grouped by length), and predict_logits' reordering against a plain forward pass."""
import json

import numpy as np
import pytest

from minitinybert.data.batches import TaskBatches, iterate_batches, predict_logits
from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.data.tasks import DataError, Examples, get_task
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.data.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve_teacher(None, log=lambda *a: None))


def _toy_examples(n=23):
    return Examples([f"sentence number {i}" for i in range(n)], None, np.arange(n) % 2, get_task("sst2"))


def test_iterate_batches_order_and_resume(tok):
    ex = _toy_examples()
    plain = list(iterate_batches(ex, tok, batch_size=5, max_length=16))
    assert [len(labels) for _, labels in plain] == [5, 5, 5, 5, 3]
    assert plain[0][1].tolist() == [0, 1, 0, 1, 0]
    full = list(iterate_batches(ex, tok, 5, 16, rng=np.random.default_rng(7)))
    resumed = list(iterate_batches(ex, tok, 5, 16, rng=np.random.default_rng(7), start=3))
    assert len(resumed) == 2
    for (a, la), (b, lb) in zip(full[3:], resumed):
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(la, lb)
    seen = np.concatenate([b.input_ids[:, 3] for b, _ in full])    # the number's token: a permutation
    assert len(set(seen.tolist())) == 23
    with pytest.raises(DataError, match="start=6 is outside 0..5"):
        next(iterate_batches(ex, tok, 5, 16, start=6))
    pair = Examples(["a b", "c"], ["d", "e f"], np.array([0, 1]), get_task("rte"))
    batch, _ = next(iterate_batches(pair, tok, 2, 16))
    assert batch.token_type_ids.max() == 1


def _labels_of(batches, n):
    return [next(batches)[1].tolist() for _ in range(n)]


@pytest.mark.parametrize("window", [0, 2])
def test_task_batches_epochs_and_exact_resume(tok, window):
    ex = Examples([f"sentence number {i}" + " more" * (i % 4) for i in range(11)], None, np.arange(11),
                  get_task("sst2"))
    reference = TaskBatches(ex, tok, batch_size=4, max_length=16, seed=3, window=window)
    expected = _labels_of(reference, 9)                     # 3 batches an epoch: three epochs
    for epoch in range(3):
        seen = sum(expected[3 * epoch:3 * epoch + 3], [])
        assert sorted(seen) == list(range(11))              # every example once an epoch
    assert expected[:3] != expected[3:6]                    # reshuffled each epoch
    for cut in (0, 1, 3, 5):                                # at the start, mid-epoch, at an epoch's end
        first = TaskBatches(ex, tok, 4, 16, seed=3, window=window)
        _labels_of(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
        resumed = TaskBatches(ex, tok, 4, 16, seed=3, window=window)
        resumed.load_state_dict(state)
        assert _labels_of(resumed, 9 - cut) == expected[cut:], cut
    assert TaskBatches(ex, tok, 4, 16, seed=4, window=window).state_dict() == {"epoch": 0, "index": 0,
                                                                                "window": window}
    assert _labels_of(TaskBatches(ex, tok, 4, 16, seed=4, window=window), 3) != expected[:3]


def _varied_examples(n, seed=0):
    """n texts of 1 to 40 words: lengths as varied as SST-2's."""
    rng = np.random.default_rng(seed)
    words = "the film was good bad dull great fun plot story actors very not".split()
    texts = [" ".join(rng.choice(words, int(k))) for k in rng.integers(1, 41, n)]
    return Examples(texts, None, np.arange(n) % 2, get_task("sst2"))


def _epoch(batches):
    """One epoch of a stream whose extras[0] is each example's index: (index arrays, batches)."""
    out = [next(batches) for _ in range(batches.per_epoch)]
    return [item[2] for item in out], [item[0] for item in out]


def test_grouped_batches_cover_each_example_once_with_little_padding(tok):
    n, bs = 403, 8
    ex = _varied_examples(n)
    lengths = tok.lengths(ex.texts, max_length=32)
    grouped = TaskBatches(ex, tok, bs, 32, seed=1, window=10, extras=(np.arange(n),))
    random = TaskBatches(ex, tok, bs, 32, seed=1, window=0, extras=(np.arange(n),))
    padded = {}
    for name, stream in (("grouped", grouped), ("random", random)):
        epochs = [_epoch(stream) for _ in range(3)]
        for indices, batches in epochs:
            assert sorted(np.concatenate(indices).tolist()) == list(range(n))          # each example once
            for index, batch in zip(indices, batches):
                assert batch.attention_mask.sum(1).tolist() == lengths[index].tolist()   # rows are those examples
        assert [i.tolist() for i in epochs[0][0]] != [i.tolist() for i in epochs[1][0]]   # a new order each epoch
        padded[name] = sum(b.input_ids.size for b in epochs[0][1]) / lengths.sum()
    assert padded["grouped"] < 1.1 and padded["random"] > 1.3, padded
    # grouped within windows, not across the epoch: batch widths rise and fall in the epoch's order
    indices, batches = _epoch(grouped)
    widths = [b.input_ids.shape[1] for b in batches]
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    rises = sum(a < b for a, b in zip(widths, widths[1:]))
    assert 0.25 < rises / (len(widths) - 1) < 0.75, widths
    # sorted within windows of 10 batches of the epoch's random permutation, never across them
    position = np.empty(n, np.int64)
    position[np.random.default_rng([1, 3]).permutation(n)] = np.arange(n)      # epoch 3's permutation
    windows = [set((position[i] // (10 * bs)).tolist()) for i in indices]
    assert all(len(w) == 1 for w in windows)
    by_window = {}
    for w, i in zip(windows, indices):
        by_window.setdefault(w.pop(), []).append(lengths[i])
    for rows in by_window.values():
        rows.sort(key=lambda r: r.min())
        assert all(a.max() <= b.min() for a, b in zip(rows, rows[1:]))
    # ... and the batches of a window do not come together, in their sorted order
    blocks = [widths[i:i + 10] for i in range(0, len(widths), 10)]
    assert sum(block == sorted(block) for block in blocks) < len(blocks) / 2
    # random batches are the shuffled permutation cut in order (the stream before grouping, unchanged)
    plain = list(iterate_batches(ex, tok, bs, 32, rng=np.random.default_rng([1, 0])))
    first = TaskBatches(ex, tok, bs, 32, seed=1, window=0)
    for (batch, labels), (got, got_labels, *_) in zip(plain, (next(first) for _ in plain)):
        assert np.array_equal(batch.input_ids, got.input_ids) and np.array_equal(labels, got_labels)


def test_grouped_batches_resume_exactly_across_epochs(tok):
    ex = _varied_examples(101, seed=2)
    stream = lambda: TaskBatches(ex, tok, 8, 32, seed=5, window=4, extras=(np.arange(101),))   # noqa: E731
    reference = stream()
    expected = [next(reference)[2].tolist() for _ in range(40)]             # 13 batches an epoch: 3 epochs
    for cut in (7, 13, 20, 26):
        first = stream()
        for _ in range(cut):
            next(first)
        resumed = stream()
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        assert [next(resumed)[2].tolist() for _ in range(40 - cut)] == expected[cut:], cut


def test_task_batches_errors(tok):
    ex = Examples(["a", "b", "c"], None, np.array([0, 1, 0]), get_task("sst2"))
    batches = TaskBatches(ex, tok, 2, 16, seed=0)
    with pytest.raises(DataError, match="not a TaskBatches state"):
        batches.load_state_dict({"version": 1, "doc_pos": 3})        # a corpus state
    with pytest.raises(DataError, match="batch 3 is outside the 2 batches"):
        batches.load_state_dict({"epoch": 0, "index": 3})
    with pytest.raises(DataError, match="no examples"):
        TaskBatches(ex.subset([]), tok, 2, 16, seed=0)
    # a run's batches depend on the window: resuming with another one is refused
    with pytest.raises(DataError, match="resume with --length-window 0"):
        batches.load_state_dict({"epoch": 0, "index": 1})          # saved before grouping: random batches
    TaskBatches(ex, tok, 2, 16, seed=0, window=0).load_state_dict({"epoch": 0, "index": 1})
    with pytest.raises(DataError, match="rows for 3 examples"):
        TaskBatches(ex, tok, 2, 16, seed=0, extras=(np.zeros(2),))


def test_predict_logits_puts_each_row_back_in_place(tok):
    """predict_logits batches by length (sorted); each row must match the example run on its own."""
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32, num_labels=3,
                        initializer_range=0.5)     # large weights: the logits differ from text to text
    model = Bert(config, seed=0)
    texts = ["a much longer sentence than the others here", "short", "a middling sentence", "tiny one",
             "the longest sentence of them all, by quite a few words", "mid length text"]
    ex = Examples(texts, None, np.zeros(len(texts), np.int64), get_task("sst2"))
    got = predict_logits(model, ex, tok, max_length=32, batch_size=4)
    for i, text in enumerate(texts):
        batch = tok.encode([text], max_length=32)
        alone = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits[0]
        np.testing.assert_allclose(got[i], alone, rtol=1e-4, atol=1e-5, err_msg=text)
    assert np.abs(got[:, None] - got[None]).max(-1)[~np.eye(len(texts), dtype=bool)].min() > 1e-2   # a swap shows
