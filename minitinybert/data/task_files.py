"""Reading a task's examples from files: the GLUE TSVs in the data directory, or local csv/tsv/jsonl.

The data directory is never baked in: it comes from an explicit `data_dir` argument (the `--data`
flag of the command line) or the MINITINYBERT_DATA environment variable. Its layout is
`glue/<TASK>/{train,dev}.tsv` (original GLUE files; MNLI has dev_matched.tsv and dev_mismatched.tsv)
and `corpus/*.txt` (the general corpus, read by corpus.py).

A user's own dataset (`load_local`, `local_task`) is named after its file and takes its classes
from it, unless told otherwise.
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


def _check_text_file(path: Path) -> None:
    """UTF-16 files (Excel's "Unicode Text") read as UTF-8 give mojibake or obscure parse errors: say so."""
    with open(path, "rb") as f:
        start = f.read(2)
    if start in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path} is UTF-16 text (as Excel's \"Unicode Text\" saves it); save it as UTF-8 "
                        f"(\"CSV UTF-8\", or tab-delimited text in UTF-8)")


def read_tsv(path: Path) -> list[list[str]]:
    """Rows of a tab-separated file. "utf-8-sig" drops a leading byte-order mark (MRPC's files and
    Excel's have one: it would stick to the first column's name); the csv module ends rows at \n,
    \r\n or \r alike. GLUE sentences hold bare quotes: quoting must be off or rows would swallow
    each other."""
    _check_text_file(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _column_index(task: TaskSpec, header: list[str] | None, column: str | int, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise DataError(f"{path}: no column {column!r} for task {task.name} (header: {header})")
    return header.index(column)


def load_split(task: str | TaskSpec, split: str, data_dir: str | Path | None = None,
               limit: int | None = None, log=None) -> Examples:
    """A split ("train", "dev", or another dev set such as MNLI's "dev_mismatched") of a GLUE task,
    read from its file under `<data root>/glue/`. `log` hears of rows skipped (QQP's short rows)."""
    task = get_task(task)
    relative = task.file_of(split)
    if relative is None:
        raise DataError(f"task {task.name} has no {split} file")
    path = data_root(data_dir) / relative
    if not path.is_file():
        raise DataError(f"{task.display_name or task.name} {split} file not found: {path}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    rows = read_tsv(path)
    header = None
    first_line = 1
    if task.has_header:
        if not rows:
            raise DataError(f"{path} is empty (expected a header row)")
        header, rows, first_line = rows[0], rows[1:], 2
    columns = [_column_index(task, header, c, path) for c in (task.text_column, task.label_column)]
    pair_index = None if task.pair_column is None else _column_index(task, header, task.pair_column, path)
    # with a header every row must match it; without one, the columns we read must exist
    width = len(header) if header is not None else max(columns + [pair_index or 0]) + 1
    texts, pairs, raw_labels, lines, skipped = [], [] if pair_index is not None else None, [], [], []
    for offset, row in enumerate(rows):
        if limit is not None and len(texts) == limit:
            break
        line = first_line + offset
        if not row:                      # a blank line (one at the end of a file, say) holds nothing
            continue
        if len(row) < width and task.skip_short_rows:
            skipped.append(line)
            continue
        if len(row) < width or (header is not None and len(row) != width):
            raise DataError(f"{path}: line {line} has {len(row)} tab-separated fields, expected {width}")
        texts.append(row[columns[0]])
        if pairs is not None:
            pairs.append(row[pair_index])
        raw_labels.append(row[columns[1]])
        lines.append(line)
    if skipped and log is not None:
        log(f"{path}: skipped {len(skipped)} line(s) with fewer than {width} fields (first: line {skipped[0]}), "
            f"as the reference code does")
    labels = map_labels(raw_labels, task, path, rows=lines, unit="line")
    return Examples(texts, pairs, labels, task, source=str(path))


def label_name(value) -> str | None:
    """A label as the name it goes by: "pos", "1" (from 1, 1.0 or "1 "), "true"; None if it cannot be one."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value.strip()
    return None


def _is_integer(name: str) -> bool:
    return name.lstrip("-").isdigit()


def map_labels(raw: Sequence, task: TaskSpec, path, rows: Sequence[int] | None = None,
                unit: str = "row") -> np.ndarray:
    """Label names or ids -> int64 ids; scores -> float32. Errors name the row (`rows[i]`, default i + 1)."""
    where = (lambda i: rows[i]) if rows is not None else (lambda i: i + 1)
    if task.labels is None:
        out = np.empty(len(raw), dtype=np.float32)
        for i, value in enumerate(raw):
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{path}: {unit} {where(i)}: score {value!r} is not a number") from None
            if not np.isfinite(out[i]):
                raise DataError(f"{path}: {unit} {where(i)}: score {value!r} is not finite")
        return out
    by_name = {name: index for index, name in enumerate(task.labels)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, value in enumerate(raw):
        name = label_name(value)
        index = by_name.get(name) if name is not None else None
        if index is None and name is not None and _is_integer(name):
            index = int(name)            # an id, when the file codes the names' positions
        if index is None or not 0 <= index < len(task.labels):
            raise DataError(f"{path}: {unit} {where(i)}: unknown label {value!r} for task {task.name} "
                            f"(labels: {', '.join(task.labels)}, or their ids 0..{len(task.labels) - 1})")
        out[i] = index
    return out


# --- local files ---------------------------------------------------------------------------------

SPLIT_STEMS = {"train", "training", "dev", "devel", "valid", "validation", "val", "test", "eval"}


def dataset_name(path: str | Path) -> str:
    """A local dataset's name from its file: the stem ("reviews.csv" -> "reviews"), or the folder's
    name when the stem only names a split ("paraphrase/train.tsv" -> "paraphrase")."""
    path = Path(path).resolve()
    if path.stem.lower() in SPLIT_STEMS and path.parent.name:
        return path.parent.name
    return path.stem


def local_task(train_path: str | Path, text_column: str, pair_column: str | None = None,
               label_column: str = "label", labels: Sequence[str] | None = None, regression: bool = False,
               name: str | None = None) -> TaskSpec:
    """The task of a user's own dataset: called `name`, else after its file (`dataset_name`); its
    classes are `labels` in that order, else the distinct labels of the training file, sorted
    (integers by value: "2" before "10"); `regression`: float scores, Pearson and Spearman."""
    name = name or dataset_name(train_path)
    if not regression and labels is None:
        labels = _labels_in_file(Path(train_path), label_column)
    return own_task(name, text_column, pair_column, label_column, None if regression else labels)


def own_task(name: str, text_column: str, pair_column: str | None, label_column: str,
             labels: Sequence[str] | None) -> TaskSpec:
    """A dataset's own task: classes `labels` in id order (accuracy, and F1 for two), or, for
    None, a regression on float scores (Pearson and Spearman)."""
    if labels is None:
        return TaskSpec(name, None, None, True, text_column, pair_column, label_column, None,
                        ("pearson", "spearman"), "pearson", name)
    labels = tuple(str(x).strip() for x in labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise DataError(f"labels must be at least two distinct names, got {list(labels)}")
    metrics = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
    return TaskSpec(name, None, None, True, text_column, pair_column, label_column, labels, metrics,
                    "accuracy", name)


def _labels_in_file(path: Path, label_column: str) -> tuple[str, ...]:
    values = _read_table(path)
    if label_column not in values:
        raise DataError(f"{path}: no label column {label_column!r}; the file has columns {list(values)}")
    return labels_in_values(values[label_column], path, label_column)


def labels_in_values(values: Sequence, where, label_column: str) -> tuple[str, ...]:
    """The distinct labels of a column, sorted (integers by value: "2" before "10"); `where` names
    the file or dataset in errors."""
    names = set()
    for i, value in enumerate(values):
        name = label_name(value)
        if not name:
            raise DataError(f"{where}: row {i + 1}: column {label_column!r} holds {value!r}, not a label")
        names.add(name)
    scores = [n for n in names if is_number(n) and not _is_integer(n)]
    if scores:
        raise DataError(f"{where}: column {label_column!r} holds scores such as {scores[0]}: pass --regression "
                        f"for a regression task, or --labels to name the classes")
    if len(names) < 2:
        raise DataError(f"{where}: column {label_column!r} holds a single label ({', '.join(names) or 'none'}); "
                        f"a classifier needs at least two")
    return tuple(sorted(names, key=lambda n: (0, int(n), "") if _is_integer(n) else (1, 0, n)))


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_local(path: str | Path, task_or_labels, text_column: str, pair_column: str | None = None,
               label_column: str = "label") -> Examples:
    """Examples from a local .csv, .tsv or .json/.jsonl file (read with `datasets`).

    `task_or_labels`: a task name or TaskSpec (its name, labels and metrics), a sequence of label
    names (classification), or None (regression on float scores). Labels in the file may be names
    or ids. A task made here is named after the file (see `local_task` for one named otherwise,
    or with the file's own labels)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if isinstance(task_or_labels, (str, TaskSpec)):
        base = get_task(task_or_labels)
        task = replace(base, train_file=None, dev_file=None, more_dev_files=(), has_header=True,
                       text_column=text_column, pair_column=pair_column, label_column=label_column)
    else:
        task = local_task(path, text_column, pair_column, label_column, labels=task_or_labels,
                          regression=task_or_labels is None)
    values = _read_table(path)
    columns = list(values)
    for role, column in (("text", text_column), ("pair", pair_column), ("label", label_column)):
        if column is not None and column not in columns:
            raise DataError(f"{path}: no {role} column {column!r}; the file has columns {columns}")
    texts = _strings(values[text_column], path, text_column)
    pairs = None if pair_column is None else _strings(values[pair_column], path, pair_column)
    labels = map_labels(values[label_column], task, path, unit="row")
    return Examples(texts, pairs, labels, task, source=str(path))


def _read_table(path: Path) -> dict[str, list]:
    """Column name -> values of a local file, read with `datasets`. CSV follows RFC 4180 quoting
    (fields with commas, quotes or line breaks in double quotes, "" for a quote); TSV has no
    quoting (as GLUE's); JSON lines are objects. All as text: "NA" stays a sentence, "007" stays
    "007". A byte-order mark and \r\n line ends are fine everywhere."""
    # `datasets` brings pandas and pyarrow (a second to import): only local files need it
    import datasets

    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json", ".jsonl"):
        raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv, .json or .jsonl)")
    _check_text_file(path)
    datasets.disable_progress_bars()
    try:
        if suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            # the header as the `datasets` reader sees it: without the byte-order mark
            with open(path, encoding="utf-8-sig", newline="") as f:
                header = next(csv.reader(f, delimiter=delimiter, quoting=quoting), None)
            if not header:
                raise DataError(f"{path} is empty (expected a header row)")
            duplicated = sorted({c for c in header if header.count(c) > 1})
            if duplicated:
                raise DataError(f"{path}: the header names column(s) {duplicated} more than once: {header}")
            features = datasets.Features({name: datasets.Value("string") for name in header})
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", delimiter=delimiter,
                                       features=features, quoting=quoting, keep_default_na=False, na_filter=False)
        else:
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except Exception as e:  # pandas / pyarrow parse errors, wrapped by `datasets`: say what went wrong
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {root_cause(e)}") from None
    return {name: list(ds[name]) for name in ds.column_names}


def root_cause(error: BaseException) -> str:
    """The innermost error's message: `datasets` wraps the parser's ("Expected 2 fields in line 3,
    saw 3") in "An error occurred while generating the dataset"."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return " ".join(str(error).split()) or type(error).__name__


def _strings(values, path, column) -> list[str]:
    out = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{path}: row {i + 1}: column {column!r} holds {value!r}, not a string")
        out.append(value)
    return out
