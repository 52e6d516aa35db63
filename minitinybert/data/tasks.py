"""The eight GLUE tasks of TinyBERT's table (MNLI, QQP, QNLI, SST-2, CoLA, STS-B, MRPC, RTE), WNLI,
where each is on the Hugging Face Hub, and the examples of a task.

A `TaskSpec` says where a task's files are, which columns hold the texts and the label, the label
names in id order (None for regression) and the metrics; `Examples` are a task's texts, optional
second texts and labels, in memory. Reading them from files is datafiles.py's job.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


class DataError(ValueError):
    """Data that cannot be read as asked: the message names the file, row, column or label at fault."""


# --- tasks --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    name: str                          # canonical key ("sst2", "mnli", ...), or a local dataset's name
    train_file: str | None             # relative to the data root
    dev_file: str | None
    has_header: bool
    text_column: str | int             # header name, or column index for header-less files
    pair_column: str | int | None      # None for single-sentence tasks
    label_column: str | int
    labels: tuple[str, ...] | None     # label names in id order; None = regression
    metrics: tuple[str, ...]
    main_metric: str
    display_name: str = ""             # as GLUE spells it ("SST-2")
    label_names: tuple[str, ...] | None = None   # what a model calls its classes, when the files use codes
    more_dev_files: tuple[tuple[str, str], ...] = ()   # (split, file): dev sets also evaluated (MNLI's mismatched)
    skip_short_rows: bool = False      # drop rows with too few fields, as the reference code does (QQP)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Names of the classes in id order, for a model's id2label: "positive" rather than "1"."""
        return self.label_names or self.labels

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """The model head's size: 1 for regression, else the number of classes."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.pair_column is not None

    @property
    def dev_splits(self) -> tuple[str, ...]:
        """The dev sets a model is evaluated on: "dev" (its metrics pick the best checkpoint), then the others."""
        return ("dev",) + tuple(split for split, _ in self.more_dev_files)

    def file_of(self, split: str) -> str | None:
        files = {"train": self.train_file, "dev": self.dev_file, **dict(self.more_dev_files)}
        if split not in files:
            raise DataError(f"task {self.name} has no split {split!r}; its splits: {', '.join(files)}")
        return files[split]


ENTAILMENT = ("entailment", "not_entailment")

# Files, columns and label orders as GLUE distributes them and the official TinyBERT code reads them.
# Every file is tab separated, read with quoting off (sentences hold bare quotes); MRPC's start with
# a UTF-8 byte-order mark. Main metrics as the paper's table: F1 for MRPC and QQP, MCC for CoLA.
TASKS: dict[str, TaskSpec] = {
    "mnli": TaskSpec("mnli", "glue/MNLI/train.tsv", "glue/MNLI/dev_matched.tsv", True, "sentence1", "sentence2",
                     "gold_label", ("contradiction", "entailment", "neutral"), ("accuracy",), "accuracy", "MNLI",
                     more_dev_files=(("dev_mismatched", "glue/MNLI/dev_mismatched.tsv"),)),
    "qqp": TaskSpec("qqp", "glue/QQP/train.tsv", "glue/QQP/dev.tsv", True, "question1", "question2",
                    "is_duplicate", ("0", "1"), ("accuracy", "f1"), "f1", "QQP", ("not_duplicate", "duplicate"),
                    skip_short_rows=True),
    "qnli": TaskSpec("qnli", "glue/QNLI/train.tsv", "glue/QNLI/dev.tsv", True, "question", "sentence", "label",
                     ENTAILMENT, ("accuracy",), "accuracy", "QNLI"),
    "sst2": TaskSpec("sst2", "glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", True, "sentence", None, "label",
                     ("0", "1"), ("accuracy", "f1"), "accuracy", "SST-2", ("negative", "positive")),
    # CoLA has no header: source, label, author's mark, sentence
    "cola": TaskSpec("cola", "glue/CoLA/train.tsv", "glue/CoLA/dev.tsv", False, 3, None, 1,
                     ("0", "1"), ("accuracy", "f1", "mcc"), "mcc", "CoLA", ("unacceptable", "acceptable")),
    "stsb": TaskSpec("stsb", "glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", True, "sentence1", "sentence2",
                     "score", None, ("pearson", "spearman"), "pearson", "STS-B"),
    "mrpc": TaskSpec("mrpc", "glue/MRPC/train.tsv", "glue/MRPC/dev.tsv", True, "#1 String", "#2 String",
                     "Quality", ("0", "1"), ("accuracy", "f1"), "f1", "MRPC", ("not_equivalent", "equivalent")),
    "rte": TaskSpec("rte", "glue/RTE/train.tsv", "glue/RTE/dev.tsv", True, "sentence1", "sentence2", "label",
                    ENTAILMENT, ("accuracy", "f1"), "accuracy", "RTE"),
    "wnli": TaskSpec("wnli", "glue/WNLI/train.tsv", "glue/WNLI/dev.tsv", True, "sentence1", "sentence2", "label",
                     ("0", "1"), ("accuracy",), "accuracy", "WNLI", ("not_entailment", "entailment")),
}


# --- GLUE on the Hugging Face Hub ---------------------------------------------------------------

GLUE_HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class HubLayout:
    """A GLUE task in the hub's copy of GLUE (nyu-mll/glue, Parquet files): its config, its columns,
    and the hub's name of each of our splits. Labels are ClassLabels named as `class_names` (MNLI's
    ids differ from the TSV order: entailment, neutral, contradiction), STS-B's are float scores."""
    config: str
    text_column: str
    pair_column: str | None
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "validation"))
    label_column: str = "label"


GLUE_ON_HUB: dict[str, HubLayout] = {
    "mnli": HubLayout("mnli", "premise", "hypothesis", (("train", "train"), ("dev", "validation_matched"),
                                                         ("dev_mismatched", "validation_mismatched"))),
    "qqp": HubLayout("qqp", "question1", "question2"),
    "qnli": HubLayout("qnli", "question", "sentence"),
    "sst2": HubLayout("sst2", "sentence", None),
    "cola": HubLayout("cola", "sentence", None),
    "stsb": HubLayout("stsb", "sentence1", "sentence2"),
    "mrpc": HubLayout("mrpc", "sentence1", "sentence2"),
    "rte": HubLayout("rte", "sentence1", "sentence2"),
    "wnli": HubLayout("wnli", "sentence1", "sentence2"),
}

def _task_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def get_task(name: str | TaskSpec) -> TaskSpec:
    """A task by name, accepting GLUE's spellings ("SST-2", "sst-2", "STS-B", "CoLA", ...)."""
    if isinstance(name, TaskSpec):
        return name
    if not isinstance(name, str) or _task_key(name) not in TASKS:
        known = ", ".join(f"{t.name} ({t.display_name})" for t in TASKS.values())
        raise DataError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[_task_key(name)]


# --- examples -----------------------------------------------------------------------------------

@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray     # int64 label ids, or float32 scores for regression
    task: TaskSpec
    source: str = field(default="", compare=False)   # where they came from, for messages

    def __post_init__(self):
        self.labels = np.asarray(self.labels)
        if len(self.labels) != len(self.texts):
            raise DataError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.pairs is not None and len(self.pairs) != len(self.texts):
            raise DataError(f"{len(self.texts)} texts but {len(self.pairs)} pairs")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices) -> "Examples":
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} examples")
        return replace(self, texts=[self.texts[i] for i in indices],
                       pairs=None if self.pairs is None else [self.pairs[i] for i in indices],
                       labels=self.labels[indices])
