"""Task data through `datasets.load_dataset`: a GLUE task by name (its config of nyu-mll/glue on the
Hugging Face Hub), or any text-classification dataset by id, with named columns and splits.

The same call reads a local folder laid out as the hub serves a dataset (Parquet, CSV or JSON files
per split, with or without a card's `configs:`) and a `save_to_disk` directory: a copy made where
there is a network works offline. What `load_dataset` downloads stays in the datasets cache
($HF_DATASETS_CACHE), and HF_DATASETS_OFFLINE=1 reads that copy without asking the network.

Labels become the task's ids by name: a ClassLabel's names are matched to the task's classes (the
hub's MNLI counts entailment, neutral, contradiction; GLUE's TSVs, and so our ids, contradiction,
entailment, neutral), so a model trained on either copy calls each class the same.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .task_files import DATA_ENV, label_name, labels_in_values, load_split, map_labels, own_task, root_cause
from .tasks import GLUE_HUB_ID, GLUE_ON_HUB, DataError, Examples, TaskSpec, get_task

TEXT_COLUMNS = ("sentence", "text")      # tried in turn when no text column is named


@dataclass(frozen=True)
class HubSource:
    """Where a task's examples are: a dataset (hub id, local folder or save_to_disk directory), its
    config, the dataset's split for each of ours ("train", "dev", MNLI's "dev_mismatched"), and the
    columns holding the text, the second text and the label."""
    dataset: str
    config: str | None
    splits: tuple[tuple[str, str], ...]
    text_column: str | None              # None: the first of TEXT_COLUMNS the dataset has
    pair_column: str | None
    label_column: str = "label"

    def split_of(self, split: str) -> str:
        splits = dict(self.splits)
        if split not in splits:
            raise DataError(f"{self.describe()}: no split is named for {split!r} (splits given: {splits})")
        return splits[split]

    def describe(self) -> str:
        return self.dataset + (f" (config {self.config})" if self.config else "")

    @property
    def is_glue(self) -> bool:
        return self.dataset in (GLUE_HUB_ID, "glue", "nyu-mll/glue")


def glue_source(task: str | TaskSpec, dataset: str | None = None) -> HubSource:
    """Where GLUE task `task` is in `dataset`, a copy of GLUE in the hub's layout (default: GLUE on
    the hub, nyu-mll/glue)."""
    task = get_task(task)
    layout = GLUE_ON_HUB[task.name]
    return HubSource(dataset or GLUE_HUB_ID, layout.config, layout.splits, layout.text_column, layout.pair_column,
                     layout.label_column)


def glue_dev_set(task: str | TaskSpec, data_dir=None, limit: int | None = None, log=None) -> Examples:
    """A GLUE task's dev set (MNLI: matched) from the data directory (`data_dir`, else
    $MINITINYBERT_DATA) when there is one, else from GLUE on the hub."""
    task = get_task(task)
    if data_dir or os.environ.get(DATA_ENV):
        return load_split(task, "dev", data_dir, limit=limit, log=log)
    return HubData(glue_source(task), log).examples(task, "dev", limit)


def hub_name(dataset: str, config: str | None = None) -> str:
    """A run's name for a dataset: "imdb" for stanfordnlp/imdb, "tweet_eval-emotion" with a config."""
    name = Path(str(dataset).rstrip("/\\")).name or "dataset"
    return name + (f"-{config}" if config else "")


class HubData:
    """A dataset opened once (all its splits, through `datasets`), read as a task's examples."""

    def __init__(self, source: HubSource, log=None):
        self.source, self.log = source, log
        self._splits = None

    def splits(self):
        """The DatasetDict: load_from_disk for a save_to_disk directory, else load_dataset."""
        if self._splits is None:
            self._splits = open_dataset(self.source, self.log)
        return self._splits

    def split(self, split: str):
        name = self.source.split_of(split)
        splits = self.splits()
        if name not in splits:
            raise DataError(f"{self.source.describe()} has no split {name!r}; its splits: {', '.join(splits)}"
                            f" (choose with --{'train' if split == 'train' else 'dev'}-split)")
        ds = splits[name]
        return ds.flatten_indices() if getattr(ds, "_indices", None) is not None else ds

    def text_column(self) -> str:
        if self.source.text_column is not None:
            return self.source.text_column
        columns = self.split("train").column_names
        found = [c for c in TEXT_COLUMNS if c in columns]
        if not found:
            raise DataError(f"{self.source.describe()} has no column named {' or '.join(TEXT_COLUMNS)}: name the "
                            f"text column with --text-column (its columns: {', '.join(columns)})")
        return found[0]

    def make_task(self, labels=None, regression: bool = False, name: str | None = None) -> TaskSpec:
        """The dataset as a task of its own: its classes are `labels` (in that order), else the
        training split's ClassLabel names, else the distinct labels it holds (sorted); `regression`:
        float scores."""
        source = self.source
        train = self.split("train")
        text = self.text_column()
        self._check_columns(train, "train", text)
        if not regression and labels is None:
            feature = train.features[source.label_column]
            where = f"{source.describe()}, split {source.split_of('train')}"
            if _is_class_label(feature):
                labels = feature.names
            elif str(getattr(feature, "dtype", "")).startswith("float"):
                raise DataError(f"{where}: column {source.label_column!r} holds scores ({feature.dtype}): pass "
                                f"--regression for a regression task, or --labels to name the classes")
            else:
                labels = labels_in_values(train.data.table.column(source.label_column).to_pylist(), where,
                                          source.label_column)
        return own_task(name or hub_name(source.dataset, source.config), text, source.pair_column,
                        source.label_column, None if regression else labels)

    def examples(self, task: TaskSpec, split: str, limit: int | None = None) -> Examples:
        """The examples of our split `split` ("train", "dev", ...), the first `limit` of them if given."""
        if limit is not None and limit < 0:
            raise DataError(f"limit must be >= 0, got {limit}")
        source = self.source
        ds = self.split(split)
        text = self.text_column()
        self._check_columns(ds, split, text)
        where = f"{source.describe()}, split {source.split_of(split)}"
        table = ds.data.table
        if limit is not None:
            table = table.slice(0, limit)
        texts = _strings(table.column(text).to_pylist(), where, text)
        pairs = None if source.pair_column is None else _strings(table.column(source.pair_column).to_pylist(),
                                                                 where, source.pair_column)
        labels = _label_ids(table.column(source.label_column), ds.features[source.label_column], task, where)
        return Examples(texts, pairs, labels, task, source=where)

    def _check_columns(self, ds, split: str, text: str) -> None:
        source = self.source
        for role, column in (("text", text), ("pair", source.pair_column), ("label", source.label_column)):
            if column is not None and column not in ds.column_names:
                raise DataError(f"{source.describe()}, split {source.split_of(split)}: no {role} column {column!r}; "
                                f"its columns: {', '.join(ds.column_names)} (choose with --{role}-column)")
        for column in (text, source.pair_column):
            if column is not None and getattr(ds.features[column], "dtype", None) not in ("string", "large_string"):
                raise DataError(f"{source.describe()}: column {column!r} holds {ds.features[column]}, not text")


def open_dataset(source: HubSource, log=None):
    """All splits of the source's dataset, as a DatasetDict. A failure says, in one line, what was
    tried and how to work offline."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(source.dataset)
    saved = local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file())
    how = "datasets.load_from_disk" if saved else "datasets.load_dataset"
    if log is not None:
        log(f"[data] {source.describe()}: {how}")
    try:
        with _quiet_retries():
            if saved:
                found = datasets.load_from_disk(str(local))
                if isinstance(found, datasets.Dataset):
                    raise DataError(f"{local} holds a single Dataset (save_to_disk of one split): save a "
                                    f"DatasetDict with its splits (train, validation, ...)")
                return found
            return datasets.load_dataset(source.dataset, source.config, **_cache_of_folder(local))
    except DataError:
        raise
    except Exception as e:       # datasets, huggingface_hub, fsspec, pyarrow: say what went wrong, and what to do
        raise DataError(f"could not load {source.describe()} with {how}: {_message(e)}"
                        f"{offline_hint(source, e)}") from None


def _message(error: BaseException) -> str:
    """What went wrong: datasets' own words ("Couldn't reach 'nyu-mll/glue' on the Hub", "BuilderConfig
    'x' not found. Available: [...]"), or the parser's under its "error occurred while generating"."""
    text = " ".join(str(error).split())
    return root_cause(error) if not text or "while generating the dataset" in text else text


def _cache_of_folder(folder: Path) -> dict:
    """load_dataset's cache_dir for a local folder: one per state of its files. With a dataset card
    naming configs, `datasets` (5.x) keys a folder's Arrow cache by the folder's name and the card's
    file patterns, not by the files: two copies named alike, or files rewritten in place, would read
    each other's cache."""
    if not folder.is_dir():
        return {}
    import datasets

    h = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts):
        stat = path.stat()
        h.update(f"\0{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return {"cache_dir": str(Path(datasets.config.HF_DATASETS_CACHE) / "minitinybert-folders" / h.hexdigest()[:24])}


def offline_hint(source: HubSource, error: BaseException) -> str:
    if Path(source.dataset).exists() or not _is_network_error(error):
        return ""
    import datasets

    cache = datasets.config.HF_DATASETS_CACHE
    local = ("pass --data DIR holding GLUE's TSVs (glue/<TASK>/train.tsv, dev.tsv; or set MINITINYBERT_DATA)"
             if source.is_glue else "pass --dataset FOLDER (a copy in the hub's layout) or --train-file/--dev-file")
    if datasets.config.HF_HUB_OFFLINE:
        return (f". HF_DATASETS_OFFLINE is set and {cache} holds no copy of it: load it once with the network, "
                f"or {local}")
    return f". Offline: {local}, or set HF_DATASETS_OFFLINE=1 to read the copy an earlier download left in {cache}"


def _is_network_error(error: BaseException) -> bool:
    """The hub could not be reached (no network, offline mode, a timeout), by the exception chain's
    class names: datasets, huggingface_hub, requests and httpx each raise their own."""
    while error is not None:
        name = type(error).__name__
        if isinstance(error, (ConnectionError, TimeoutError)) or any(
                word in name for word in ("Connection", "Offline", "Timeout", "LocalEntryNotFound", "HTTP")):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def _quiet_retries():
    """huggingface_hub logs each retry of an unreachable host ("Retrying in 8s"): our one line says it."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_class_label(feature) -> bool:
    return type(feature).__name__ == "ClassLabel"


def _strings(values: list, where: str, column: str) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{where}: row {i + 1}: column {column!r} holds {value!r}, not a string")
    return values


def _label_ids(column, feature, task: TaskSpec, where: str) -> np.ndarray:
    """A label column as the task's label ids (int64), or scores (float32) for a regression task."""
    if task.is_regression:
        if _is_class_label(feature):
            raise DataError(f"{where}: label column holds classes ({', '.join(feature.names)}), not scores: "
                            f"drop --regression")
        return map_labels(column.to_pylist(), task, where, unit="row")
    if not _is_class_label(feature):
        return map_labels(column.to_pylist(), task, where, unit="row")
    codes = column.to_numpy(zero_copy_only=False)
    unlabelled = np.flatnonzero(codes < 0)
    if len(unlabelled):
        raise DataError(f"{where}: {len(unlabelled)} of {len(codes)} rows have no label (-1, as the hub's test "
                        f"splits), first row {unlabelled[0] + 1}: choose a labelled split")
    ours = np.array([_class_id(name, task, where) for name in feature.names], dtype=np.int64)
    return ours[codes.astype(np.int64)]


def _class_id(name: str, task: TaskSpec, where: str) -> int:
    """The task's id of a ClassLabel name: by the task's class names ("negative"), its labels as the
    files spell them ("0"), or an integer name taken as the id."""
    for names in (task.label_names, task.labels):
        if names and name in names:
            return names.index(name)
    spelled = label_name(name)
    if spelled is not None and spelled.lstrip("-").isdigit() and 0 <= int(spelled) < len(task.labels):
        return int(spelled)
    raise DataError(f"{where}: class {name!r} is not one of task {task.name}'s labels "
                    f"({', '.join(task.class_names)})")

