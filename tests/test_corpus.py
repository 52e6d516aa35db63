"""The streamed general corpus: packed sequences, exact resume from a state_dict, errors."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minitinybert.corpus import CorpusBatcher
from minitinybert.tasks import DataError
from minitinybert.teacher import resolve_teacher
from minitinybert.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MINITINYBERT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"data directory {DATA} not present")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve_teacher(None, log=lambda *a: None))


def _write_corpus(root: Path) -> Path:
    root.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    for f in range(3):
        lines = []
        for d in range(4):
            for s in range(int(rng.integers(1, 6))):
                lines.append(" ".join(rng.choice(words, size=int(rng.integers(1, 25)))))
            lines.append("")
        (root / f"part{f}.txt").write_text("\n".join(lines) + "\n\n")
    (root / "ignored.md").write_text("not a corpus file")
    return root


def _batches(batcher, n):
    return [next(batcher) for _ in range(n)]


def test_corpus_batcher_sequences(tmp_path, tok):
    corpus = _write_corpus(tmp_path / "corpus")
    batcher = CorpusBatcher(corpus, tok, seq_len=16, batch_size=4, seed=1)
    assert batcher.num_documents == 12
    for batch in _batches(batcher, 30):                       # several epochs of this tiny corpus
        assert batch.input_ids.shape[0] == 4 and batch.input_ids.shape[1] <= 16
        for row in range(4):
            n = int(batch.attention_mask[row].sum())
            assert n >= 3 and batch.input_ids[row, 0] == tok.cls_id and batch.input_ids[row, n - 1] == tok.sep_id
            assert (batch.input_ids[row, 1:n - 1] != tok.sep_id).all()
            assert (batch.input_ids[row, n:] == tok.pad_id).all()
    assert batcher.epoch >= 2


def test_corpus_batcher_resume_exact(tmp_path, tok):
    corpus = _write_corpus(tmp_path / "corpus")
    reference = CorpusBatcher(corpus, tok, seq_len=16, batch_size=3, seed=5)
    expected = _batches(reference, 40)
    for cut in (1, 7, 23):                                     # mid-epoch and after epoch boundaries
        first = CorpusBatcher(corpus, tok, seq_len=16, batch_size=3, seed=5)
        _batches(first, cut)
        state = json.loads(json.dumps(first.state_dict()))     # survives a JSON checkpoint
        resumed = CorpusBatcher(corpus, tok, seq_len=16, batch_size=3, seed=5)
        resumed.load_state_dict(state)
        for a, b in zip(expected[cut:cut + 8], _batches(resumed, 8)):
            assert np.array_equal(a.input_ids, b.input_ids)
            assert np.array_equal(a.attention_mask, b.attention_mask)
    other_seed = CorpusBatcher(corpus, tok, seq_len=16, batch_size=3, seed=6)
    with pytest.raises(DataError, match="seed is 5 in the state, 6 here"):
        other_seed.load_state_dict(state)


def test_corpus_batcher_errors(tmp_path, tok):
    with pytest.raises(DataError, match="corpus directory not found"):
        CorpusBatcher(tmp_path / "none", tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .txt files"):
        CorpusBatcher(tmp_path / "empty", tok)
    (tmp_path / "empty" / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="holds no text"):
        CorpusBatcher(tmp_path / "empty", tok)
    with pytest.raises(DataError, match="seq_len must be >= 3"):
        CorpusBatcher(tmp_path / "empty", tok, seq_len=2)


@needs_data
def test_real_corpus_quick(tok):
    corpus = DATA / "corpus"
    batcher = CorpusBatcher(corpus, tok, seq_len=64, batch_size=8, seed=0)
    expected = _batches(batcher, 6)
    assert all(b.input_ids.shape[1] <= 64 and (b.input_ids[:, 0] == tok.cls_id).all() for b in expected)
    filled = np.mean([b.attention_mask.sum(1).mean() for b in expected])
    assert filled > 32                                         # sentences are packed, not one per sequence
    again = CorpusBatcher(corpus, tok, seq_len=64, batch_size=8, seed=0)
    _batches(again, 3)
    resumed = CorpusBatcher(corpus, tok, seq_len=64, batch_size=8, seed=0)
    resumed.load_state_dict(again.state_dict())
    for a, b in zip(expected[3:], _batches(resumed, 3)):
        assert np.array_equal(a.input_ids, b.input_ids)
