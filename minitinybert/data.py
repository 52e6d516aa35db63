"""Task data: the GLUE tasks TinyBERT reports on, local files, metrics, batching, and the general corpus.

The data directory is never baked in: it comes from an explicit `data_dir` argument (the `--data`
flag of the command line) or the MINITINYBERT_DATA environment variable. Its layout is
`glue/<TASK>/{train,dev}.tsv` (original GLUE files) and `corpus/*.txt` (one sentence or paragraph
per line, a blank line between documents).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .tokenizer import Batch, Tokenizer

DATA_ENV = "MINITINYBERT_DATA"


class DataError(ValueError):
    """Data that cannot be read as asked: the message names the file, row, column or label at fault."""


# --- tasks --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    name: str                          # canonical key: "sst2", "cola", "rte", "stsb"
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


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", "glue/SST-2/train.tsv", "glue/SST-2/dev.tsv", True, "sentence", None, "label",
                     ("0", "1"), ("accuracy", "f1"), "accuracy", "SST-2", ("negative", "positive")),
    # CoLA has no header: source, label, author's mark, sentence
    "cola": TaskSpec("cola", "glue/CoLA/train.tsv", "glue/CoLA/dev.tsv", False, 3, None, 1,
                     ("0", "1"), ("accuracy", "f1", "mcc"), "mcc", "CoLA", ("unacceptable", "acceptable")),
    "rte": TaskSpec("rte", "glue/RTE/train.tsv", "glue/RTE/dev.tsv", True, "sentence1", "sentence2", "label",
                    ("entailment", "not_entailment"), ("accuracy", "f1"), "accuracy", "RTE"),
    "stsb": TaskSpec("stsb", "glue/STS-B/train.tsv", "glue/STS-B/dev.tsv", True, "sentence1", "sentence2",
                     "score", None, ("pearson", "spearman"), "pearson", "STS-B"),
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


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data directory: `data_dir`, else $MINITINYBERT_DATA; an error if neither names a directory."""
    if data_dir is not None and str(data_dir) != "":
        root, origin = Path(data_dir), "the data_dir argument"
    elif os.environ.get(DATA_ENV):
        root, origin = Path(os.environ[DATA_ENV]), f"the {DATA_ENV} environment variable"
    else:
        raise DataError(f"no data directory given: pass data_dir (--data on the command line) or set "
                        f"{DATA_ENV} to the directory holding glue/ and corpus/")
    if not root.is_dir():
        raise DataError(f"data directory {root} (from {origin}) does not exist; pass data_dir (--data) or "
                        f"set {DATA_ENV} to the directory holding glue/ and corpus/")
    return root


def _read_tsv(path: Path) -> list[list[str]]:
    # GLUE sentences hold bare quotes: quoting must be off or rows would swallow each other.
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _column_index(task: TaskSpec, header: list[str] | None, column: str | int, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise DataError(f"{path}: no column {column!r} for task {task.name} (header: {header})")
    return header.index(column)


def load_split(task: str | TaskSpec, split: str, data_dir: str | Path | None = None,
               limit: int | None = None) -> Examples:
    """The train or dev split of a GLUE task, read from `<data root>/glue/<TASK>/<split>.tsv`."""
    task = get_task(task)
    if split not in ("train", "dev"):
        raise DataError(f"split must be 'train' or 'dev', got {split!r}")
    relative = task.train_file if split == "train" else task.dev_file
    if relative is None:
        raise DataError(f"task {task.name} has no {split} file")
    path = data_root(data_dir) / relative
    if not path.is_file():
        raise DataError(f"{task.display_name or task.name} {split} file not found: {path}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    rows = _read_tsv(path)
    header = None
    first_line = 1
    if task.has_header:
        if not rows:
            raise DataError(f"{path} is empty (expected a header row)")
        header, rows, first_line = rows[0], rows[1:], 2
    if limit is not None:
        rows = rows[:limit]
    columns = [_column_index(task, header, c, path) for c in (task.text_column, task.label_column)]
    pair_index = None if task.pair_column is None else _column_index(task, header, task.pair_column, path)
    # with a header every row must match it; without one, the columns we read must exist
    width = len(header) if header is not None else max(columns + [pair_index or 0]) + 1
    texts, pairs, raw_labels = [], [] if pair_index is not None else None, []
    for offset, row in enumerate(rows):
        line = first_line + offset
        if len(row) < width or (header is not None and len(row) != width):
            raise DataError(f"{path}: line {line} has {len(row)} tab-separated fields, expected {width}")
        texts.append(row[columns[0]])
        if pairs is not None:
            pairs.append(row[pair_index])
        raw_labels.append(row[columns[1]])
    labels = _map_labels(raw_labels, task, path, first_row=first_line, unit="line")
    return Examples(texts, pairs, labels, task, source=str(path))


def _map_labels(raw: Sequence, task: TaskSpec, path, first_row: int = 1, unit: str = "row") -> np.ndarray:
    """Label names or ids -> int64 ids; scores -> float32. Errors name the row."""
    if task.labels is None:
        out = np.empty(len(raw), dtype=np.float32)
        for i, value in enumerate(raw):
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{path}: {unit} {first_row + i}: score {value!r} is not a number") from None
            if not np.isfinite(out[i]):
                raise DataError(f"{path}: {unit} {first_row + i}: score {value!r} is not finite")
        return out
    by_name = {name: index for index, name in enumerate(task.labels)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, value in enumerate(raw):
        index = None
        if isinstance(value, str):
            index = by_name.get(value.strip())
            if index is None and value.strip().lstrip("-").isdigit():
                index = int(value.strip())
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            index = by_name.get(str(value), int(value))
        elif isinstance(value, float) and value.is_integer():
            index = int(value)
        if index is None or not 0 <= index < len(task.labels):
            raise DataError(f"{path}: {unit} {first_row + i}: unknown label {value!r} for task {task.name} "
                            f"(labels: {', '.join(task.labels)}, or their ids 0..{len(task.labels) - 1})")
        out[i] = index
    return out


def load_local(path: str | Path, task_or_labels, text_column: str, pair_column: str | None = None,
               label_column: str = "label") -> Examples:
    """Examples from a local .csv, .tsv or .json/.jsonl file (read with `datasets`).

    `task_or_labels`: a task name or TaskSpec (its labels and metrics), a sequence of label names
    (classification), or None (regression on float scores). Labels in the file may be names or ids."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if task_or_labels is None:
        task = TaskSpec(f"local:{path.stem}", None, None, True, text_column, pair_column, label_column,
                        None, ("pearson", "spearman"), "pearson")
    elif isinstance(task_or_labels, (str, TaskSpec)):
        base = get_task(task_or_labels)
        task = replace(base, train_file=None, dev_file=None, has_header=True, text_column=text_column,
                       pair_column=pair_column, label_column=label_column)
    else:
        labels = tuple(str(x) for x in task_or_labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise DataError(f"labels must be at least two distinct names, got {list(task_or_labels)}")
        metrics = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
        task = TaskSpec(f"local:{path.stem}", None, None, True, text_column, pair_column, label_column,
                        labels, metrics, "accuracy")

    suffix = path.suffix.lower()
    datasets.disable_progress_bars()
    try:
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            # Everything as text: "NA" stays a sentence, "007" stays "007"; labels are mapped below.
            with open(path, encoding="utf-8", newline="") as f:
                header = next(csv.reader(f, delimiter=delimiter,
                                         quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL), None)
            if not header:
                raise DataError(f"{path} is empty (expected a header row)")
            features = datasets.Features({name: datasets.Value("string") for name in header})
            ds = datasets.load_dataset(
                "csv", data_files=str(path), split="train", delimiter=delimiter, features=features,
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
                keep_default_na=False, na_filter=False)
        elif suffix in (".json", ".jsonl"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv, .json or .jsonl)")
    except DataError:
        raise
    except Exception as e:  # pandas / pyarrow parse errors: say which file
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {e}") from None

    columns = list(ds.column_names)
    for role, column in (("text", text_column), ("pair", pair_column), ("label", label_column)):
        if column is not None and column not in columns:
            raise DataError(f"{path}: no {role} column {column!r}; the file has columns {columns}")
    texts = _strings(ds[text_column], path, text_column)
    pairs = None if pair_column is None else _strings(ds[pair_column], path, pair_column)
    labels = _map_labels(list(ds[label_column]), task, path, first_row=1, unit="row")
    return Examples(texts, pairs, labels, task, source=str(path))


def _strings(values, path, column) -> list[str]:
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{path}: row {i + 1}: column {column!r} holds {value!r}, not a string")
        out.append(value)
    return out


# --- metrics ------------------------------------------------------------------------------------

def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1_binary(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are neither predicted nor true positives."""
    tp = float(np.sum((pred == positive) & (gold == positive)))
    fp = float(np.sum((pred == positive) & (gold != positive)))
    fn = float(np.sum((pred != positive) & (gold == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary MCC from the confusion matrix; 0 when a row or column of it is empty (as scikit-learn)."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred != 1) & (gold != 1)))
    fp = float(np.sum((pred == 1) & (gold != 1)))
    fn = float(np.sum((pred != 1) & (gold == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / denominator)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (undefined: no linear relation to measure)."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return 0.0 if denominator == 0 else float(np.sum(x * y) / denominator)


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # first index of each run of equal values, and the run each sorted element belongs to
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0        # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = average[run]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def evaluate(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's metrics plus "main" (the one TinyBERT reports for it).

    Classification: `predictions` are logits (N, K) or label ids (N,). Regression: scores (N,) or (N, 1)."""
    task = get_task(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.shape != labels.shape:
            raise DataError(f"{task.name}: {predictions.shape} predictions for {labels.shape} scores")
        if not np.all(np.isfinite(predictions)):
            raise DataError(f"{task.name}: predictions hold NaN or infinite values")
        results = {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels)}
    else:
        if predictions.ndim == 2:
            if predictions.shape[1] != task.num_labels:
                raise DataError(f"{task.name}: logits have {predictions.shape[1]} columns, the task has "
                                f"{task.num_labels} labels")
            predictions = predictions.argmax(axis=1)
        if predictions.shape != labels.shape:
            raise DataError(f"{task.name}: {predictions.shape} predictions for {labels.shape} labels")
        predictions = predictions.astype(np.int64)
        results = {"accuracy": accuracy(predictions, labels)}
        if task.num_labels == 2:
            results["f1"] = f1_binary(predictions, labels)
        if "mcc" in task.metrics:
            results["mcc"] = matthews_corrcoef(predictions, labels)
    results["main"] = results[task.main_metric]
    return results


# --- batches ------------------------------------------------------------------------------------

def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def iterate_batches(examples: Examples, tokenizer: Tokenizer, batch_size: int, max_length: int,
                    rng: np.random.Generator | None = None, start: int = 0) -> Iterator[tuple[Batch, np.ndarray]]:
    """(Batch, labels) over one pass; shuffled by `rng.permutation` when given. `start` skips that many
    batches: resuming mid-epoch with the rng in its state at the epoch's start gives the same batches."""
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    n = len(examples)
    total = num_batches(n, batch_size)
    if not 0 <= start <= total:
        raise DataError(f"start={start} is outside 0..{total} (batches in one pass over {n} examples)")
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for b in range(start, total):
        index = order[b * batch_size:(b + 1) * batch_size]
        texts = [examples.texts[i] for i in index]
        pairs = None if examples.pairs is None else [examples.pairs[i] for i in index]
        yield tokenizer.encode(texts, pairs, max_length=max_length), examples.labels[index]


# --- general corpus -----------------------------------------------------------------------------

class CorpusBatcher:
    """Streams the general corpus (directory of .txt files: one sentence/paragraph per line, blank line
    between documents) into sequences of up to seq_len tokens ([CLS] ... [SEP], sentences packed within a
    document, as BERT pre-training data), batched. Never loads the whole corpus as token ids: it keeps
    only each document's byte range and reads lines as it goes.

    The order of documents (across all files) is reshuffled every epoch from (seed, epoch); a line longer
    than a sequence is cut into several. `state_dict()` taken between batches records the position
    (epoch, document, byte offset) and the partly filled sequences, so that a resumed batcher yields
    exactly the batches an uninterrupted one would have."""

    def __init__(self, corpus_dir: str | Path, tokenizer: Tokenizer, seq_len: int = 128, batch_size: int = 32,
                 seed: int = 0):
        if seq_len < 3:
            raise DataError(f"seq_len must be >= 3 ([CLS], one token, [SEP]), got {seq_len}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        corpus = Path(corpus_dir)
        if corpus.is_file():
            files = [corpus]
        elif corpus.is_dir():
            files = sorted(p for p in corpus.iterdir() if p.suffix == ".txt" and p.is_file())
            if not files:
                raise DataError(f"corpus directory {corpus} holds no .txt files")
        else:
            raise DataError(f"corpus directory not found: {corpus}")
        self.corpus_dir = corpus
        self.files = files
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._docs = self._index_documents()   # (n, 3) int64: file index, start byte, end byte
        self._total_bytes = sum(p.stat().st_size for p in files)
        if len(self._docs) == 0:
            raise DataError(f"corpus {corpus} holds no text (only blank lines)")
        self._handles: dict[int, object] = {}
        self._reset_position(epoch=0)

    # --- indexing and position ------------------------------------------------------------

    def _index_documents(self) -> np.ndarray:
        docs = []
        for file_index, path in enumerate(self.files):
            start = None
            offset = 0
            with open(path, "rb") as f:
                for line in f:
                    blank = not line.strip()
                    if blank and start is not None:
                        docs.append((file_index, start, offset))
                        start = None
                    elif not blank and start is None:
                        start = offset
                    offset += len(line)
            if start is not None:
                docs.append((file_index, start, offset))
        return np.array(docs, dtype=np.int64).reshape(-1, 3)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._docs))

    def _reset_position(self, epoch: int) -> None:
        self.epoch = epoch
        self._order_cache = self._order(epoch)
        self._doc_pos = 0                        # index into this epoch's document order
        self._offset = int(self._docs[self._order_cache[0], 1])
        self._buffer: list[int] = []             # tokens of the sequence being filled
        self._pending: list[list[int]] = []      # finished sequences not yet batched
        self._batches = 0

    @property
    def num_documents(self) -> int:
        return len(self._docs)

    def _handle(self, file_index: int):
        if file_index not in self._handles:
            self._handles[file_index] = open(self.files[file_index], "rb")
        return self._handles[file_index]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- packing --------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._buffer:
            self._pending.append(self._buffer)
            self._buffer = []

    def _add_line(self, ids: list[int]) -> None:
        room = self.seq_len - 2
        if len(self._buffer) + len(ids) <= room:
            self._buffer.extend(ids)
            return
        self._flush()
        while len(ids) > room:                   # a line longer than a sequence: cut it
            self._pending.append(ids[:room])
            ids = ids[room:]
        self._buffer = list(ids)

    def _step(self) -> None:
        """Read one line of the current document, or close the document and move to the next."""
        file_index, _, end = (int(v) for v in self._docs[self._order_cache[self._doc_pos]])
        if self._offset < end:
            handle = self._handle(file_index)
            handle.seek(self._offset)
            line = handle.readline()
            self._offset += len(line)
            text = line.decode("utf-8", errors="replace").strip()
            if text:
                ids = self.tokenizer.token_ids(text)
                if ids:
                    self._add_line(ids)
            return
        self._flush()                            # sentences are packed within a document only
        self._doc_pos += 1
        if self._doc_pos == len(self._docs):     # next epoch, in a new document order
            self.epoch += 1
            self._order_cache = self._order(self.epoch)
            self._doc_pos = 0
        self._offset = int(self._docs[self._order_cache[self._doc_pos], 1])

    def __iter__(self) -> "CorpusBatcher":
        return self

    def __next__(self) -> Batch:
        # Each step consumes a line or closes a document: more idle steps than that is a whole epoch
        # without a single token (text that normalises to nothing), which would otherwise loop forever.
        idle_limit = self._total_bytes + 2 * len(self._docs)
        idle = 0
        while len(self._pending) < self.batch_size:
            before = (len(self._pending), len(self._buffer))
            self._step()
            idle = idle + 1 if (len(self._pending), len(self._buffer)) == before else 0
            if idle > idle_limit:
                raise DataError(f"corpus {self.corpus_dir} yields no tokens")
        sequences, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
        self._batches += 1
        tok = self.tokenizer
        return tok.batch_from_ids([[tok.cls_id] + s + [tok.sep_id] for s in sequences])

    # --- resume ---------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"files": [p.name for p in self.files], "sizes": [p.stat().st_size for p in self.files],
                "seq_len": self.seq_len, "batch_size": self.batch_size, "seed": self.seed,
                "vocab": self.tokenizer.fingerprint()[:16]}

    def state_dict(self) -> dict:
        return {"version": 1, **self._identity(), "epoch": self.epoch, "doc_pos": self._doc_pos,
                "offset": self._offset, "buffer": list(self._buffer),
                "pending": [list(s) for s in self._pending], "batches": self._batches}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != 1:
            raise DataError("not a CorpusBatcher state (missing or unknown version)")
        identity = self._identity()
        for key, value in identity.items():
            if state.get(key) != value:
                raise DataError(f"corpus state does not match this batcher: {key} is {state.get(key)!r} in the "
                                f"state, {value!r} here (the corpus, tokenizer or batch settings changed)")
        if not 0 <= state["doc_pos"] < len(self._docs):
            raise DataError(f"corpus state: document position {state['doc_pos']} out of range")
        self._reset_position(int(state["epoch"]))
        self._doc_pos = int(state["doc_pos"])
        self._offset = int(state["offset"])
        self._buffer = [int(t) for t in state["buffer"]]
        self._pending = [[int(t) for t in s] for s in state["pending"]]
        self._batches = int(state["batches"])

    @property
    def batches_served(self) -> int:
        return self._batches


def corpus_dir(data_dir: str | Path | None = None) -> Path:
    """`<data root>/corpus`."""
    path = data_root(data_dir) / "corpus"
    if not path.is_dir():
        raise DataError(f"no corpus/ directory in the data directory {path.parent}")
    return path

