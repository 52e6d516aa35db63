"""Task batches: one pass (order, shuffling, start), the resumable training stream, and
predict_logits' reordering against a plain forward pass."""
import json

import numpy as np
import pytest

from minitinybert.batches import TaskBatches, iterate_batches, predict_logits
from minitinybert.config import BertConfig
from minitinybert.model import Bert
from minitinybert.tasks import DataError, Examples, get_task
from minitinybert.teacher import resolve_teacher
from minitinybert.tokenizer import Tokenizer


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


def test_task_batches_epochs_and_exact_resume(tok):
    ex = Examples([f"sentence number {i}" for i in range(11)], None, np.arange(11), get_task("sst2"))
    reference = TaskBatches(ex, tok, batch_size=4, max_length=16, seed=3)
    expected = _labels_of(reference, 9)                     # 3 batches an epoch: three epochs
    for epoch in range(3):
        seen = sum(expected[3 * epoch:3 * epoch + 3], [])
        assert sorted(seen) == list(range(11))              # every example once an epoch
    assert expected[:3] != expected[3:6]                    # reshuffled each epoch
    for cut in (0, 1, 3, 5):                                # at the start, mid-epoch, at an epoch's end
        first = TaskBatches(ex, tok, 4, 16, seed=3)
        _labels_of(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
        resumed = TaskBatches(ex, tok, 4, 16, seed=3)
        resumed.load_state_dict(state)
        assert _labels_of(resumed, 9 - cut) == expected[cut:], cut
    assert TaskBatches(ex, tok, 4, 16, seed=4).state_dict() == {"epoch": 0, "index": 0}
    assert _labels_of(TaskBatches(ex, tok, 4, 16, seed=4), 3) != expected[:3]


def test_task_batches_errors(tok):
    ex = Examples(["a", "b", "c"], None, np.array([0, 1, 0]), get_task("sst2"))
    batches = TaskBatches(ex, tok, 2, 16, seed=0)
    with pytest.raises(DataError, match="not a TaskBatches state"):
        batches.load_state_dict({"version": 1, "doc_pos": 3})        # a corpus state
    with pytest.raises(DataError, match="batch 3 is outside the 2 batches"):
        batches.load_state_dict({"epoch": 0, "index": 3})
    with pytest.raises(DataError, match="no examples"):
        TaskBatches(ex.subset([]), tok, 2, 16, seed=0)


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
