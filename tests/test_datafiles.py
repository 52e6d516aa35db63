"""Reading task files: real GLUE TSVs, the data directory, malformed rows, local csv/tsv/jsonl."""
import os
from pathlib import Path

import numpy as np
import pytest

from minitinybert.datafiles import data_root, load_local, load_split
from minitinybert.metrics import evaluate
from minitinybert.tasks import DataError, get_task

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MINITINYBERT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"data directory {DATA} not present")


# --- GLUE files ----------------------------------------------------------------------------------

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
        data_root(None)
    monkeypatch.setenv("MINITINYBERT_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"missing \(from the MINITINYBERT_DATA environment variable\) does not"):
        data_root(None)
    with pytest.raises(DataError, match="does not exist"):
        load_split("sst2", "dev", data_dir=tmp_path / "nowhere")
    assert data_root(str(tmp_path)) == tmp_path          # the argument wins over the variable
    monkeypatch.setenv("MINITINYBERT_DATA", str(tmp_path))
    assert data_root() == tmp_path
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
