"""Task data: real GLUE files, local files, metrics, batching with resume, the streamed corpus."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minitinybert import data
from minitinybert.data import (CorpusBatcher, DataError, Examples, evaluate, get_task, iterate_batches,
                               load_local, load_split)
from minitinybert.teacher import resolve_teacher
from minitinybert.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MINITINYBERT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"data directory {DATA} not present")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve_teacher(None, log=lambda *a: None))


# --- tasks and real files -----------------------------------------------------------------------

def test_get_task_aliases():
    for alias in ("sst2", "SST-2", "sst-2", "Sst2"):
        assert get_task(alias).name == "sst2"
    for alias in ("STS-B", "stsb", "sts-b"):
        assert get_task(alias).name == "stsb"
    assert get_task("CoLA").name == "cola" and get_task("RTE").name == "rte"
    assert get_task(get_task("rte")) is data.TASKS["rte"]
    with pytest.raises(DataError, match=r"unknown task 'mnli'; known tasks: sst2 \(SST-2\), cola"):
        get_task("mnli")
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("rte").is_pair and not get_task("sst2").is_pair


@needs_data
@pytest.mark.parametrize("task,train,dev", [("sst2", 67349, 872), ("cola", 8551, 1043), ("rte", 2490, 277),
                                            ("stsb", 5749, 1500)])
def test_real_row_counts_and_labels(task, train, dev):
    for split, count in (("train", train), ("dev", dev)):
        ex = load_split(task, split, data_dir=DATA)
        assert len(ex) == count
        assert all(isinstance(t, str) and t for t in ex.texts)
        if ex.task.is_regression:
            assert ex.labels.dtype == np.float32
            assert 0.0 <= ex.labels.min() and ex.labels.max() <= 5.0
            assert ex.pairs is not None and len(ex.pairs) == count
        else:
            assert ex.labels.dtype == np.int64
            assert set(np.unique(ex.labels)) == {0, 1}
    assert get_task("rte").labels == ("entailment", "not_entailment")


@needs_data
def test_real_content_and_bare_quotes():
    cola = load_split("cola", "train", data_dir=DATA, limit=5)
    assert len(cola) == 5 and cola.texts[0].startswith("Our friends won't buy this analysis")
    assert cola.pairs is None and cola.labels[0] == 1
    rte = load_split("RTE", "train", data_dir=DATA)
    quoted = [t for t in rte.texts if '"extensive"' in t]
    assert quoted and quoted[0].startswith("Valero Energy Corp.")        # bare quotes survive
    assert rte.labels[0] == 1 and rte.pairs[0] == "Weapons of Mass Destruction Found in Iraq."
    stsb = load_split("STS-B", "dev", data_dir=DATA, limit=2)
    assert stsb.labels.tolist() == [5.0, pytest.approx(4.75)]
    assert stsb.texts[0] == "A man with a hard hat is dancing."
    assert stsb.pairs[0] == "A man wearing a hard hat is dancing."


def test_data_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MINITINYBERT_DATA", raising=False)
    with pytest.raises(DataError, match="MINITINYBERT_DATA"):
        data.data_root(None)
    monkeypatch.setenv("MINITINYBERT_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"missing \(from the MINITINYBERT_DATA environment variable\) does not"):
        data.data_root(None)
    with pytest.raises(DataError, match="does not exist"):
        load_split("sst2", "dev", data_dir=tmp_path / "nowhere")
    assert data.data_root(str(tmp_path)) == tmp_path          # the argument wins over the variable
    monkeypatch.setenv("MINITINYBERT_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    with pytest.raises(DataError, match="SST-2 dev file not found"):
        load_split("sst2", "dev")
    with pytest.raises(DataError, match="split must be"):
        load_split("sst2", "test")


def test_load_split_malformed(tmp_path):
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "dev.tsv").write_text('sentence\tlabel\nfine "quoted\t1\nbad row\t2\n')
    with pytest.raises(DataError, match=r"dev.tsv: line 3: unknown label '2' for task sst2"):
        load_split("sst2", "dev", data_dir=tmp_path)
    (glue / "dev.tsv").write_text("sentence\tlabel\nno tab here\n")
    with pytest.raises(DataError, match="line 2 has 1 tab-separated fields, expected 2"):
        load_split("sst2", "dev", data_dir=tmp_path)
    (glue / "dev.tsv").write_text("text\tlabel\na\t1\n")
    with pytest.raises(DataError, match="no column 'sentence'"):
        load_split("sst2", "dev", data_dir=tmp_path)


# --- local files ---------------------------------------------------------------------------------

def test_load_local_formats(tmp_path):
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nhe said "hi\tpos\nNA\tneg\n1984\t1\n')
    ex = load_local(tmp_path / "a.tsv", ["neg", "pos"], "sentence")
    assert ex.texts == ['he said "hi', "NA", "1984"]       # bare quote, "NA" and digits stay text
    assert ex.labels.tolist() == [1, 0, 1]                 # by name, or by index
    assert ex.task.labels == ("neg", "pos") and ex.task.main_metric == "accuracy"

    (tmp_path / "b.csv").write_text('premise,hypothesis,gold\n"a, b",c,entailment\nd,e,not_entailment\n')
    ex = load_local(tmp_path / "b.csv", "rte", "premise", pair_column="hypothesis", label_column="gold")
    assert ex.texts == ["a, b", "d"] and ex.pairs == ["c", "e"] and ex.labels.tolist() == [0, 1]
    assert ex.task.name == "rte"

    (tmp_path / "c.jsonl").write_text('{"text": "x", "score": 1.5}\n{"text": "y", "score": 4}\n')
    ex = load_local(tmp_path / "c.jsonl", None, "text", label_column="score")
    assert ex.labels.dtype == np.float32 and ex.labels.tolist() == [1.5, 4.0]
    assert evaluate(ex.task, np.array([1.0, 2.0]), ex.labels)["main"] == pytest.approx(1.0)


def test_load_local_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": "pos"}\n{"text": "y", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"a.jsonl: row 2: unknown label 'maybe'.*labels: neg, pos"):
        load_local(tmp_path / "a.jsonl", ["neg", "pos"], "text")
    with pytest.raises(DataError, match=r"no text column 'sentence'; the file has columns \['text', 'label'\]"):
        load_local(tmp_path / "a.jsonl", ["neg", "pos"], "sentence")
    with pytest.raises(DataError, match="no label column 'gold'"):
        load_local(tmp_path / "a.jsonl", ["neg", "pos"], "text", label_column="gold")
    with pytest.raises(DataError, match="data file not found"):
        load_local(tmp_path / "none.csv", ["a", "b"], "text")
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(DataError, match="unsupported file type"):
        load_local(tmp_path / "a.xml", ["a", "b"], "text")
    (tmp_path / "s.csv").write_text("text,label\nx,high\n")
    with pytest.raises(DataError, match=r"s.csv: row 1: score 'high' is not a number"):
        load_local(tmp_path / "s.csv", None, "text")
    (tmp_path / "n.jsonl").write_text('{"text": null, "label": 0}\n')
    with pytest.raises(DataError, match=r"row 1: column 'text' holds None, not a string"):
        load_local(tmp_path / "n.jsonl", ["a", "b"], "text")


# --- metrics -------------------------------------------------------------------------------------

def test_classification_metrics_by_hand():
    # confusion matrix: tp=3, tn=4, fp=1, fn=2
    gold = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    r = evaluate("cola", pred, gold)
    mcc = (3 * 4 - 1 * 2) / np.sqrt((3 + 1) * (3 + 2) * (4 + 1) * (4 + 2))
    assert r["mcc"] == pytest.approx(mcc) and r["main"] == r["mcc"]
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    logits = np.stack([-pred.astype(float), pred.astype(float)], axis=1)   # argmax = pred
    assert evaluate("sst2", logits, gold) == {"accuracy": pytest.approx(0.7), "f1": r["f1"],
                                              "main": pytest.approx(0.7)}
    assert evaluate("cola", np.zeros(4, int), np.array([0, 1, 0, 1]))["mcc"] == 0.0   # degenerate
    with pytest.raises(DataError, match="3 columns"):
        evaluate("sst2", np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(DataError, match="predictions for"):
        evaluate("rte", np.zeros(3, int), np.array([0, 1]))


def test_regression_metrics_with_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 4.0, 6.0])
    assert data.rankdata(x).tolist() == [1.0, 2.5, 2.5, 4.0, 5.0]
    assert data.rankdata(y).tolist() == [2.0, 1.0, 3.5, 3.5, 5.0]
    # Pearson by hand: deviations x: -1.6 -.6 -.6 .4 2.4 ; y: -1.4 -2.4 .6 .6 2.6
    sxy = (-1.6 * -1.4) + (-0.6 * -2.4) + (-0.6 * 0.6) + (0.4 * 0.6) + (2.4 * 2.6)
    sxx = 1.6 ** 2 + 0.6 ** 2 * 2 + 0.4 ** 2 + 2.4 ** 2
    syy = 1.4 ** 2 + 2.4 ** 2 + 0.6 ** 2 * 2 + 2.6 ** 2
    r = evaluate("stsb", x[:, None], y)
    assert r["pearson"] == pytest.approx(sxy / np.sqrt(sxx * syy))
    # Spearman = Pearson of the average ranks: rx - 3 = -2 -.5 -.5 1 2 ; ry - 3 = -1 -2 .5 .5 2
    rs = (2 + 1 - 0.25 + 0.5 + 4) / np.sqrt((4 + 0.25 + 0.25 + 1 + 4) * (1 + 4 + 0.25 + 0.25 + 4))
    assert r["spearman"] == pytest.approx(rs) and r["main"] == r["pearson"]
    assert evaluate("stsb", np.ones(5), y)["pearson"] == 0.0


# --- batches -------------------------------------------------------------------------------------

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


def test_subset():
    ex = _toy_examples()
    sub = ex.subset([3, 1])
    assert sub.texts == ["sentence number 3", "sentence number 1"] and sub.labels.tolist() == [1, 1]
    with pytest.raises(IndexError):
        ex.subset([23])


# --- corpus --------------------------------------------------------------------------------------

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
    corpus = data.corpus_dir(DATA)
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
