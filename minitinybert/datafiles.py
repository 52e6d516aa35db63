"""Reading a task's examples from files: the GLUE TSVs in the data directory, or local csv/tsv/jsonl.

The data directory is never baked in: it comes from an explicit `data_dir` argument (the `--data`
flag of the command line) or the MINITINYBERT_DATA environment variable. Its layout is
`glue/<TASK>/{train,dev}.tsv` (original GLUE files) and `corpus/*.txt` (the general corpus, read by
corpus.py).
"""
from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .tasks import DataError, Examples, TaskSpec, get_task

DATA_ENV = "MINITINYBERT_DATA"


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
    # `datasets` brings pandas and pyarrow (a second to import): only local files need it
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
