"""Where a run's data comes from: the task's examples (GLUE's TSVs, the hub, any dataset, local
files), their token ids (the token cache), the general corpus, and the augmented training set.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.augment import ContextCandidates, EmbeddingCandidates, MlmCandidates, augment_examples
from ..data.hub import HubData, HubSource, glue_source, hub_name
from ..data.task_files import DATA_ENV, data_root, dataset_name, load_local, load_split, local_task
from ..data.tasks import get_task
from ..data.token_cache import default_cache_dir, token_table
from ..data.tokenizer import Tokenizer
from ..engine.teacher import resolve_teacher
from ..engine.weights import load_model
from ..training.world import get_world
from .config import RunConfig
from .recipe import AUGMENT_COPIES, AUGMENT_FROM_PASSES, stage_steps

DEFAULT_TASK = "sst2"


def default_out(config: RunConfig) -> str:
    """runs/<task>, or runs/<name> for local data and --dataset; runs/embedding for `embed`."""
    if config.command == "embed":
        return str(Path("runs") / "embedding")
    if config.name or is_own_task(config):
        name = config.name or (dataset_name(config.train_file) if config.train_file
                               else hub_name(config.dataset, config.config))
        return str(Path("runs") / name)
    return str(Path("runs") / (config.task or DEFAULT_TASK).lower().replace("-", ""))


def task_loader(config: RunConfig, log=print, every_rank: bool = True):
    """(task, load(split, limit=None) -> Examples), from the first of
      --train-file/--dev-file   local csv/tsv/jsonl files (read through `datasets`);
      --dataset ID              any dataset through datasets.load_dataset (a hub id, a folder in the
                                hub's layout, a save_to_disk directory), --config, its splits and columns;
      --data / $MINITINYBERT_DATA   GLUE's TSVs in the data directory: the offline path, when given;
      --task alone              the task's config of GLUE on the hub (nyu-mll/glue).

    Local files and --dataset without --task are a task of their own, named --name or after the
    file or dataset, with the classes --labels names (in that order), else those of --task, else
    those the data holds (a ClassLabel's names, or the labels sorted); --regression makes it a
    regression. With --task, --dataset is a copy of GLUE in the hub's layout (the task's config,
    columns and splits, each of which the options can change). `every_rank`: every MPI rank
    loads (rank 0 first, the others from its copy), not rank 0 alone."""
    if config.dataset and (config.train_file or config.dev_file):
        raise ValueError("--dataset and --train-file/--dev-file are two sources of task data: choose one")
    if config.train_file or config.dev_file:
        if not (config.train_file and config.dev_file):
            raise ValueError("local data needs both --train-file and --dev-file")
        text_column, label_column = config.text_column or "sentence", config.label_column or "label"
        if is_own_task(config):
            labels = config.labels.split(",") if config.labels else None
            task = local_task(config.train_file, text_column, config.pair_column, label_column,
                              labels=labels, regression=config.regression, name=config.name)
        else:
            task = get_task(config.task)
            task = replace(task, name=config.name or task.name, display_name=config.name or task.display_name)
        files = {"train": config.train_file, "dev": config.dev_file}

        def load(split, limit=None):
            examples = load_local(files[split], task, text_column, config.pair_column, label_column)
            return examples.subset(np.arange(min(limit, len(examples)))) if limit else examples
        return load("dev").task, load
    if config.dataset or not (config.data or os.environ.get(DATA_ENV)):
        return _hub_loader(config, log, every_rank)
    task = get_task(config.task or DEFAULT_TASK)
    return task, lambda split, limit=None: load_split(task, split, config.data, limit=limit, log=log)


def hub_source(config: RunConfig) -> HubSource:
    """Where --dataset (or, without it, GLUE on the hub) holds the task's splits and columns."""
    if config.task or not config.dataset:       # GLUE, or a copy of it in the hub's layout
        glue = glue_source(config.task or DEFAULT_TASK, config.dataset)
        splits = dict(glue.splits)
        splits.update({split: name for split, name in (("train", config.train_split), ("dev", config.dev_split))
                       if name})
        return HubSource(glue.dataset, config.config or glue.config, tuple(splits.items()),
                         config.text_column or glue.text_column, config.pair_column or glue.pair_column,
                         config.label_column or glue.label_column)
    return HubSource(config.dataset, config.config, (("train", config.train_split or "train"),
                                                 ("dev", config.dev_split or "validation")),
                     config.text_column, config.pair_column, config.label_column or "label")


def _hub_loader(config: RunConfig, log, every_rank: bool = True):
    source = hub_source(config)
    data = HubData(source, log)

    def root_first():                   # rank 0 downloads; the other ranks find its copy in the cache
        return get_world().root_first() if every_rank else contextlib.nullcontext()
    if is_own_task(config):
        labels = config.labels.split(",") if config.labels else None
        with root_first():
            task = data.make_task(labels, config.regression, config.name)
    else:
        task = get_task(config.task or DEFAULT_TASK)
        named = dict(source.splits)       # a dev set the source does not name is not evaluated
        task = replace(task, name=config.name or task.name, display_name=config.name or task.display_name,
                       more_dev_files=tuple((s, f) for s, f in task.more_dev_files if s in named))

    def load(split, limit=None):
        with root_first():
            return data.examples(task, split, limit)
    return task, load


def is_own_task(config: RunConfig) -> bool:
    """Local data that is a task of its own, not a GLUE task's (whose labels and metrics --task lends)."""
    return bool(config.train_file or config.dataset) and bool(config.labels or config.regression or not config.task)


def load_dev_sets(task, load) -> dict:
    """{split: Examples} for every dev set of the task ("dev", then MNLI's "dev_mismatched")."""
    return {split: load(split) for split in task.dev_splits}


def common_setup(config: RunConfig, log=print):
    task, load = task_loader(config, log)
    with get_world().root_first():      # one download, then the others find it
        teacher_dir = resolve_teacher(config.teacher)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    return task, teacher_dir, tokenizer, load


# --- token ids, the corpus, augmentation -------------------------------------------------------------


def token_cache_dir(config: RunConfig) -> Path | None:
    """Where token ids are kept (tokens.py): --token-cache, else the default; None for "off"."""
    if config.token_cache == "off":
        return None
    return Path(config.token_cache) if config.token_cache else default_cache_dir()


def task_tokens(config: RunConfig, examples, tokenizer, max_length: int, log=None):
    """The examples' token ids from the token cache (tokenized into it the first time); under MPI,
    rank 0 writes the file and the other ranks read it."""
    with get_world().root_first():
        return token_table(examples, tokenizer, max_length, token_cache_dir(config), log)


def augment_cache_dir(config: RunConfig) -> Path:
    """Where the augmented texts and the teacher's logits on them are cached: --augment-cache, shared by
    runs that name it (their keys keep different teachers and data apart), else <out>/augment-cache."""
    return Path(config.augment_cache) if config.augment_cache else Path(config.out) / "augment-cache"


def corpus_dir(config: RunConfig) -> Path:
    if not (config.corpus or config.data or os.environ.get(DATA_ENV)):
        raise ValueError(f"the general stage needs a corpus: pass --corpus (a directory, or a .txt, .jsonl or "
                         f".parquet file), or --data DIR (or set {DATA_ENV}) holding corpus/")
    corpus = Path(config.corpus) if config.corpus else data_root(config.data) / "corpus"
    if not corpus.exists():
        raise FileNotFoundError(f"general corpus directory not found: {corpus}")
    return corpus


CANDIDATE_SOURCES = {"mlm": (MlmCandidates, "the teacher's MLM head"),
                     "context": (ContextCandidates, "whole words nearest the teacher's in-context word states"),
                     "embedding": (EmbeddingCandidates, "nearest neighbours in the teacher's input embeddings")}

def augment_copies(config: RunConfig, task, n_train: int, log) -> int:
    """--n-aug, else AUGMENT_COPIES when the task stage passes over the training set at least
    AUGMENT_FROM_PASSES times, else 0."""
    if config.n_aug is not None:
        return config.n_aug
    stage = "prediction" if config.skip_intermediate else "intermediate"
    passes = stage_steps(config, task, stage) * config.batch_size / max(n_train, 1)
    copies = AUGMENT_COPIES if passes >= AUGMENT_FROM_PASSES else 0
    log(f"[task] {stage} stage: {passes:.1f} passes over the {n_train} training examples, so "
        f"{f'{copies} augmented copies of each' if copies else 'no augmentation'} (copies pay from "
        f"{AUGMENT_FROM_PASSES:g} passes; --n-aug N to choose)")
    return copies


def augmented_train_set(config: RunConfig, task, teacher_dir, tokenizer, load_examples, log):
    """The training examples (the first --augment-limit, if given) and up to n augmented copies of each
    text (augment_copies; cached; duplicates dropped; pair tasks: both texts)."""
    train_set = load_examples("train", limit=config.augment_limit)
    n_aug = augment_copies(config, task, len(train_set), log)
    if n_aug <= 0:
        return train_set
    pretrained = load_model(teacher_dir)
    source = config.candidates if config.candidates != "auto" else ("mlm" if pretrained.config.mlm_head else "context")
    kind, description = CANDIDATE_SOURCES[source]
    log(f"[task] augmenting {len(train_set)} examples x {n_aug} (p {config.augment_p}, candidates: {description})")
    with get_world().root_first():      # rank 0 writes the cache; the others read it (or make their own)
        return augment_examples(train_set, kind(pretrained, tokenizer), n_aug=n_aug, p=config.augment_p,
                                seed=config.seed, cache_dir=augment_cache_dir(config), progress=get_world().is_root)
