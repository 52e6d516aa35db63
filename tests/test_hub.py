"""Task data through `datasets.load_dataset`, offline: GLUE laid out as nyu-mll/glue serves it (Parquet
per split, the card's configs) gives the examples and labels GLUE's TSVs give; `--task` alone reads
GLUE from the hub id; any dataset by --dataset with its own columns, splits and classes; a
save_to_disk copy; clear errors for a missing column, split or config and for a failed download.
HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 are set for the whole suite (conftest.py)."""
import json

import datasets
import numpy as np
import pytest

from minitinybert.data import hub
from minitinybert.data.task_files import load_local
from minitinybert.distill import main, parse_config, task_loader
from minitinybert.data.hub import offline_hint, glue_source
from minitinybert.data.tasks import DataError, get_task
from tests.glue_files import write_task
from tests.hub_files import GLUE_CLASS_NAMES, write_glue, write_hub_dataset
from tests.test_distill import cli, sentences, world  # noqa: F401  (the tiny world, a fixture)


def test_the_suite_is_offline():
    """Every hub test below must run without the network: the switches are on before datasets loads."""
    assert datasets.config.HF_DATASETS_OFFLINE and datasets.config.HF_HUB_OFFLINE


def loader(*argv, log=lambda *a: None):
    return task_loader(parse_config(["finetune-teacher", *argv]), log=log)


def glue_rows(task, rng, n):
    spec = get_task(task)
    rows = []
    for (a, _), (b, _) in zip(sentences(rng, n), sentences(rng, n)):
        label = (f"{rng.uniform(0, 5):.3f}" if spec.is_regression
                 else spec.labels[int(rng.integers(len(spec.labels)))])
        rows.append((a + ' with a "quote', b if spec.is_pair else None, label))
    return rows


@pytest.mark.parametrize("task", ["sst2", "mnli", "stsb"])
def test_glue_in_the_hubs_layout_gives_the_tsvs_examples(tmp_path, monkeypatch, task):
    """The same rows written as GLUE's TSVs and as nyu-mll/glue's Parquet files: the same texts,
    pairs and label ids from both, split by split (MNLI: its two dev sets, and the hub's other
    order of the three classes; STS-B: float scores)."""
    monkeypatch.delenv("MINITINYBERT_DATA", raising=False)
    rng = np.random.default_rng(1)
    spec = get_task(task)
    rows = {"train": glue_rows(task, rng, 12), **{split: glue_rows(task, rng, 5) for split in spec.dev_splits}}
    write_task(tmp_path / "data", task, {split: [(a, b or "", y) for a, b, y in r] for split, r in rows.items()})
    mirror = write_glue(tmp_path / "glue-copy", task, rows)
    from_tsv, load_tsv = loader("--task", task, "--data", str(tmp_path / "data"))
    from_hub, load_hub = loader("--task", task, "--dataset", str(mirror))
    assert from_hub == from_tsv == spec
    for split in spec.dev_splits + ("train",):
        tsv, hub = load_tsv(split), load_hub(split)
        assert hub.texts == tsv.texts == [a for a, _, _ in rows[split]]
        assert hub.pairs == tsv.pairs
        np.testing.assert_array_equal(hub.labels, tsv.labels)
        assert hub.labels.dtype == tsv.labels.dtype
        assert dict(glue_source(task).splits)[split] in hub.source
    assert len(load_hub("train", limit=4)) == 4 and load_hub("train", limit=4).texts == load_tsv("train").texts[:4]
    if task == "mnli":     # the hub counts entailment, neutral, contradiction; our ids stay the TSVs'
        hub_train = datasets.load_dataset(str(mirror), "mnli", split="train")
        names = [GLUE_CLASS_NAMES["mnli"][i] for i in hub_train["label"]]
        assert [spec.labels[i] for i in load_hub("train").labels] == names
        assert GLUE_CLASS_NAMES["mnli"] != list(spec.labels)


def test_task_alone_reads_glue_from_the_hub(world, tmp_path, monkeypatch, capsys):  # noqa: F811
    """No --data and no MINITINYBERT_DATA: --task sst2 is load_dataset(GLUE, "sst2") (GLUE's id pointed
    at a local copy), and the teacher is fine-tuned and evaluated on it with SST-2's class names;
    --data, when given, wins; export's dev set comes from the same place."""
    rng = np.random.default_rng(2)
    rows = {"train": glue_rows("sst2", rng, 16), "dev": glue_rows("sst2", rng, 8)}
    mirror = write_glue(tmp_path / "glue-copy", "sst2", rows)
    monkeypatch.delenv("MINITINYBERT_DATA", raising=False)
    monkeypatch.setattr(hub, "GLUE_HUB_ID", str(mirror))
    args = [a for a in cli(world, tmp_path / "run") if a not in ("--data", str(world / "data"))]
    assert main(["finetune-teacher", *args, "--task", "sst2", "--teacher-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{mirror} (config sst2): datasets.load_dataset" in out
    metrics = json.loads((tmp_path / "run" / "teacher" / "best" / "metrics.json").read_text())
    assert set(metrics) == {"step", "main", "accuracy", "f1"}
    config = json.loads((tmp_path / "run" / "teacher" / "best" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["negative", "positive"]
    task, load = loader("--task", "sst2")
    assert load("dev").texts == [a for a, _, _ in rows["dev"]]
    # `all` needs a corpus for its general stage: without --data or --corpus it says so before any stage
    assert main(["all", *[a if a != str(tmp_path / "run") else str(tmp_path / "all") for a in args]]) == 2
    assert "the general stage needs a corpus: pass --corpus" in capsys.readouterr().err
    assert not (tmp_path / "all" / "teacher").exists()
    task, load = loader("--task", "sst2", "--data", str(world / "data"))       # the local directory wins
    assert load("dev").source.endswith("dev.tsv")
    # export --task evaluates on the same dev set
    assert hub.glue_dev_set("sst2", limit=3).texts == [a for a, _, _ in rows["dev"][:3]]
    assert hub.glue_dev_set("sst2", world / "data").source.endswith("dev.tsv")


def imdb_like(root, rng, splits=("train", "test")):
    """A non-GLUE dataset as the hub serves stanfordnlp/imdb: config plain_text, columns text and
    label (ClassLabel neg, pos), no validation split."""
    columns = {}
    for split in splits:
        rows = sentences(rng, 10)
        columns[split] = {"text": [t for t, _ in rows], "label": [y for _, y in rows]}
    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    return write_hub_dataset(root, "plain_text", columns, features), columns


def test_a_dataset_by_id_is_a_task_of_its_own(world, tmp_path, capsys):  # noqa: F811
    """--dataset with --text-column and --dev-split: named after the dataset, its classes the
    ClassLabel's names, the same examples as the same rows in local jsonl files; the teacher's
    model calls the classes so; --labels reorders them; a save_to_disk copy reads alike."""
    rng = np.random.default_rng(3)
    folder, columns = imdb_like(tmp_path / "imdb", rng)
    task, load = loader("--dataset", str(folder), "--text-column", "text", "--dev-split", "test")
    assert (task.name, task.labels, task.metrics) == ("imdb", ("neg", "pos"), ("accuracy", "f1"))
    dev = load("dev")
    assert dev.texts == columns["test"]["text"] and dev.labels.tolist() == columns["test"]["label"]
    for split in ("train", "test"):     # the same rows as a local jsonl file: the same examples
        lines = tmp_path / f"{split}.jsonl"
        lines.write_text("".join(json.dumps({"text": t, "label": ["neg", "pos"][y]}) + "\n"
                                 for t, y in zip(columns[split]["text"], columns[split]["label"])))
        local = load_local(lines, task.labels, "text")
        ours = load("train" if split == "train" else "dev")
        assert local.texts == ours.texts and local.labels.tolist() == ours.labels.tolist()
    out = tmp_path / "run"
    assert main(["finetune-teacher", *cli(world, out), "--dataset", str(folder), "--text-column", "text",
                 "--dev-split", "test", "--teacher-steps", "2"]) == 0
    assert " on imdb:" in capsys.readouterr().out
    config = json.loads((out / "teacher" / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    task, load = loader("--dataset", str(folder), "--text-column", "text", "--dev-split", "test",
                        "--labels", "pos,neg")
    assert task.labels == ("pos", "neg") and load("dev").labels.tolist() == [1 - y for y in columns["test"]["label"]]
    saved = tmp_path / "saved"
    datasets.load_dataset(str(folder), "plain_text").save_to_disk(str(saved))
    task, load = loader("--dataset", str(saved), "--text-column", "text", "--dev-split", "test")
    assert task.name == "saved" and task.labels == ("neg", "pos") and load("dev").texts == dev.texts


def test_a_dataset_of_scores_is_a_regression(tmp_path):
    rng = np.random.default_rng(5)
    scores = rng.uniform(0, 5, 6).astype(np.float32)
    columns = {"sentence1": [t for t, _ in sentences(rng, 6)], "sentence2": [t for t, _ in sentences(rng, 6)],
               "label": scores.tolist()}
    folder = write_hub_dataset(tmp_path / "similarity", "default", {"train": columns, "validation": columns},
                               {"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                "label": datasets.Value("float32")})
    base = ["--dataset", str(folder), "--text-column", "sentence1", "--pair-column", "sentence2"]
    with pytest.raises(DataError, match=r"split train: column 'label' holds scores \(float32\): pass --regression"):
        loader(*base)
    task, load = loader(*base, "--regression")
    assert task.is_regression and task.main_metric == "pearson"
    dev = load("dev")
    assert dev.labels.dtype == np.float32 and np.array_equal(dev.labels, scores)
    assert dev.pairs == columns["sentence2"]


def test_missing_column_split_or_config_is_a_clear_error(world, tmp_path, capsys):  # noqa: F811
    rng = np.random.default_rng(4)
    folder, _ = imdb_like(tmp_path / "imdb", rng)
    base = ["--dataset", str(folder), "--dev-split", "test"]
    with pytest.raises(DataError, match=r"imdb, split train: no text column 'review'; its columns: text, label "
                                        r"\(choose with --text-column\)"):
        loader(*base, "--text-column", "review")
    reviews = write_hub_dataset(tmp_path / "reviews", "default", {"train": {"review": ["a"], "label": ["x"]}},
                                {"review": datasets.Value("string"), "label": datasets.Value("string")})
    with pytest.raises(DataError, match=r"reviews \(config default\) has no column named sentence or text: name "
                                        r"the text column with --text-column \(its columns: review, label\)"):
        loader("--dataset", str(reviews), "--config", "default")
    task, load = loader("--dataset", str(folder), "--text-column", "text")
    with pytest.raises(DataError, match=r"has no split 'validation'; its splits: test, train \(choose with "
                                        r"--dev-split\)"):
        load("dev")
    with pytest.raises(DataError, match="no label column 'stars'"):
        loader(*base, "--text-column", "text", "--label-column", "stars")
    # GLUE's test splits hold -1 for every label
    mirror = write_glue(tmp_path / "glue-copy", "sst2", {"train": glue_rows("sst2", rng, 4),
                                                         "dev": glue_rows("sst2", rng, 3)})
    write_hub_dataset(mirror, "sst2", {"test": {"sentence": ["a", "b"], "label": [-1, -1], "idx": [0, 1]}},
                      {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"]),
                       "idx": datasets.Value("int32")})
    with pytest.raises(DataError, match=r"split test: 2 of 2 rows have no label \(-1"):
        loader("--task", "sst2", "--dataset", str(mirror), "--dev-split", "test")[1]("dev")
    # through the command: one line, no traceback, exit status 2
    assert main(["finetune-teacher", *cli(world, tmp_path / "o"), "--task", "sst2", "--dataset", str(mirror),
                 "--config", "cola"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not load") and "'cola'" in err[0], err
    assert main(["finetune-teacher", *cli(world, tmp_path / "p"), "--dataset", str(folder), "--text-column",
                 "text"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no split 'validation'" in err[0], err


def test_a_failed_download_says_what_was_tried_and_how_to_work_offline(world, tmp_path, monkeypatch, capsys):  # noqa: F811
    """GLUE from the hub with no copy in the cache and the network off (offline mode, as here):
    one line naming the dataset and config and the two ways to work offline."""
    monkeypatch.delenv("MINITINYBERT_DATA", raising=False)
    args = [a for a in cli(world, tmp_path / "run") if a not in ("--data", str(world / "data"))]
    assert main(["finetune-teacher", *args, "--task", "rte"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("error: could not load nyu-mll/glue (config rte) with datasets.load_dataset:"), line
    assert "Couldn't reach 'nyu-mll/glue'" in line and "--data DIR holding GLUE's TSVs" in line, line
    assert "HF_DATASETS_OFFLINE is set and" in line and "load it once with the network" in line, line
    assert main(["finetune-teacher", *args, "--dataset", "someone/no-such-dataset"]) == 2
    line = capsys.readouterr().err.strip()
    assert "someone/no-such-dataset" in line and "--train-file/--dev-file" in line and "\n" not in line
    # with the network on but unreachable, the hint is the offline switch (the error as datasets raises it)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    unreachable = ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")
    hint = offline_hint(glue_source("rte"), unreachable)
    assert "Offline: pass --data DIR" in hint and "set HF_DATASETS_OFFLINE=1 to read the copy" in hint
    assert offline_hint(glue_source("rte"), ValueError("BuilderConfig 'x' not found")) == ""
