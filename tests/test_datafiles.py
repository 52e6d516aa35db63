"""Reading task files: real GLUE TSVs, every GLUE task's layout, the data directory, malformed rows,
local csv/tsv/jsonl with byte-order marks and CRLF line ends, a local dataset's own name and labels."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minitinybert.data.task_files import data_root, dataset_name, load_local, load_split, local_task
from minitinybert.data.metrics import evaluate
from minitinybert.data.tasks import DataError, get_task
from tests.glue_files import write_task

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
    with pytest.raises(DataError, match="task sst2 has no split 'test'; its splits: train, dev"):
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


# --- every GLUE task, in the layout GLUE distributes -----------------------------------------------

PAIRS = [('He said "hi', 'He said "hello"'), ("A man plays", "A man is playing"), ("It rains", "The sun")]
GLUE_LABELS = {"mrpc": ("1", "0", "1"), "qqp": ("0", "1", "1"), "qnli": ("entailment", "not_entailment", "entailment"),
               "mnli": ("neutral", "contradiction", "entailment"), "wnli": ("1", "1", "0"),
               "rte": ("not_entailment", "entailment", "entailment")}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("task", sorted(GLUE_LABELS))
def test_glue_task_in_its_own_layout(tmp_path, task, newline):
    """The files as GLUE ships them (MRPC's byte-order mark, MNLI's 12 and 16 columns and two dev
    sets, bare quotes everywhere), with Unix or Windows line ends: texts, pairs and label ids."""
    spec = get_task(task)
    rows = [(a, b, y) for (a, b), y in zip(PAIRS, GLUE_LABELS[task])]
    splits = {split: rows for split in ("train",) + spec.dev_splits}
    write_task(tmp_path, task, splits, newline=newline)
    for split in splits:
        ex = load_split(task, split, data_dir=tmp_path)
        assert ex.texts == [a for a, _ in PAIRS] and ex.pairs == [b for _, b in PAIRS], split
        assert ex.labels.tolist() == [spec.labels.index(y) for y in GLUE_LABELS[task]], split
    assert spec.is_pair and spec.num_labels == (3 if task == "mnli" else 2)


def test_glue_task_registry_matches_the_paper():
    assert {t.display_name for t in __import__("minitinybert.data.tasks").data.tasks.TASKS.values()} == {
        "MNLI", "QQP", "QNLI", "SST-2", "CoLA", "STS-B", "MRPC", "RTE", "WNLI"}
    assert get_task("MRPC").main_metric == "f1" and get_task("qqp").main_metric == "f1"   # the paper's table
    assert get_task("mnli").labels == ("contradiction", "entailment", "neutral")          # the official order
    assert get_task("mnli").dev_splits == ("dev", "dev_mismatched")
    # MRPC: F1 of class 1 ("equivalent") and accuracy; WNLI: accuracy only
    gold = np.array([1, 1, 0, 0, 1])
    assert evaluate("mrpc", np.array([1, 0, 0, 1, 1]), gold) == pytest.approx(
        {"accuracy": 0.6, "f1": 2 / 3, "main": 2 / 3})
    assert evaluate("wnli", np.array([1, 0, 0, 1, 1]), gold) == pytest.approx({"accuracy": 0.6, "main": 0.6})


def test_qqp_skips_short_rows_as_the_reference_code(tmp_path):
    """A question with a line break splits its row in two with QUOTE_NONE: both halves are dropped,
    and said; any other task stops on them."""
    rows = [(a, b, y) for (a, b), y in zip(PAIRS, GLUE_LABELS["qqp"])]
    broken = ["7\t15\t16\tWhat is a", 'line break?\tWhy "so"?\t1']
    write_task(tmp_path, "qqp", {"train": rows}, extra_lines={"train": broken})
    heard = []
    ex = load_split("qqp", "train", data_dir=tmp_path, log=heard.append)
    assert len(ex) == 3 and ex.labels.tolist() == [0, 1, 1]
    assert len(heard) == 1 and "skipped 2 line(s)" in heard[0] and "first: line 5" in heard[0]
    write_task(tmp_path, "qnli", {"train": [(a, b, "entailment") for a, b in PAIRS]},
               extra_lines={"train": ["9\tshort"]})
    with pytest.raises(DataError, match="line 5 has 2 tab-separated fields, expected 4"):
        load_split("qnli", "train", data_dir=tmp_path)


def test_glue_file_with_byte_order_mark_and_crlf(tmp_path):
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    (glue / "dev.tsv").write_bytes('\ufeffsentence\tlabel\r\nit was "fun\t1\r\ndull\t0\r\n\r\n'.encode())
    ex = load_split("sst2", "dev", data_dir=tmp_path)
    assert ex.texts == ['it was "fun', "dull"] and ex.labels.tolist() == [1, 0]
    (glue / "dev.tsv").write_bytes("sentence\tlabel\nfun\t1\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text.*save it as UTF-8"):
        load_split("sst2", "dev", data_dir=tmp_path)
    (glue / "dev.tsv").write_bytes("sentence\tlabel\nd\xe9j\xe0 vu\t1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_split("sst2", "dev", data_dir=tmp_path)


# --- local files as other tools save them --------------------------------------------------------

def _local_file(path: Path, bom: bool, newline: str) -> None:
    """MRPC's columns (the label first, so the byte-order mark sits on its name) in the file's format."""
    rows = [("1", 'He said "hi', "He said hello"), ("0", "a, b", "c")]
    if path.suffix == ".jsonl":
        lines = [json.dumps({"Quality": y, "#1 String": a, "#2 String": b}) for y, a, b in rows]
    elif path.suffix == ".csv":                       # RFC 4180 quoting, as Excel writes it
        quote = lambda x: '"' + x.replace('"', '""') + '"' if any(c in x for c in ',"') else x
        lines = ["Quality,#1 String,#2 String"] + [",".join(map(quote, r)) for r in rows]
    else:
        lines = ["Quality\t#1 String\t#2 String"] + ["\t".join(r) for r in rows]
    path.write_bytes((("\ufeff" if bom else "") + newline.join(lines) + newline).encode("utf-8"))


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl"])
@pytest.mark.parametrize("bom,newline", [(True, "\n"), (False, "\r\n"), (True, "\r\n")])
def test_local_file_with_byte_order_mark_or_crlf(tmp_path, suffix, bom, newline):
    path = tmp_path / f"train{suffix}"
    _local_file(path, bom, newline)
    ex = load_local(path, ["0", "1"], "#1 String", pair_column="#2 String", label_column="Quality")
    assert ex.texts == ['He said "hi', "a, b"] and ex.pairs == ["He said hello", "c"]
    assert ex.labels.tolist() == [1, 0]


def test_unreadable_local_file_names_the_cause(tmp_path):
    (tmp_path / "bad.csv").write_text("sentence,label\na,pos\nb,neg,extra\n")
    with pytest.raises(DataError, match=r"bad.csv: cannot be read as csv: .*Expected 2 fields in line 3, saw 3"):
        load_local(tmp_path / "bad.csv", ["neg", "pos"], "sentence")
    (tmp_path / "dup.tsv").write_text("text\ttext\tlabel\na\tb\t1\n")
    with pytest.raises(DataError, match=r"names column\(s\) \['text'\] more than once"):
        load_local(tmp_path / "dup.tsv", ["0", "1"], "text")


# --- a local dataset is named after its file and takes its labels from it --------------------------

def test_local_dataset_name_and_labels(tmp_path):
    folder = tmp_path / "paraphrase"
    folder.mkdir()
    (folder / "train.tsv").write_text("a\tb\tlabel\nx\ty\t1\nz\tw\t0\nu\tv\t1\n")
    task = local_task(folder / "train.tsv", "a", "b")
    assert task.name == "paraphrase" and task.labels == ("0", "1") and task.label_names is None
    assert task.class_names == ("0", "1")              # a model calls them what the file does
    assert local_task(folder / "train.tsv", "a", "b", labels=["1", "0"], name="mine").labels == ("1", "0")
    assert local_task(folder / "train.tsv", "a", "b", name="mine").name == "mine"
    assert dataset_name(tmp_path / "reviews.csv") == "reviews"
    assert dataset_name(folder / "Dev.jsonl") == "paraphrase"
    # names sorted as text, integers by value
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"t": "x", "label": y}) + "\n" for y in (10, 2, 2, 10, 9)))
    assert local_task(tmp_path / "s.jsonl", "t").labels == ("2", "9", "10")
    (tmp_path / "w.csv").write_text("t,label\nx,pos\ny,neg\nz, pos\n")
    task = local_task(tmp_path / "w.csv", "t")
    assert task.labels == ("neg", "pos") and task.name == "w"
    assert load_local(tmp_path / "w.csv", task, "t").labels.tolist() == [1, 0, 1]
    # what cannot be a set of classes
    (tmp_path / "one.csv").write_text("t,label\nx,pos\ny,pos\n")
    with pytest.raises(DataError, match="holds a single label \\(pos\\)"):
        local_task(tmp_path / "one.csv", "t")
    (tmp_path / "score.csv").write_text("t,label\nx,3.8\ny,1\n")
    with pytest.raises(DataError, match="holds scores such as 3.8: pass --regression"):
        local_task(tmp_path / "score.csv", "t")
    (tmp_path / "empty.csv").write_text("t,label\nx,\ny,a\n")
    with pytest.raises(DataError, match=r"row 1: column 'label' holds '', not a label"):
        local_task(tmp_path / "empty.csv", "t")
