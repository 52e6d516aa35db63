"""The recipe: the settings a run takes when the command line leaves them out.

The tuned per-task defaults are data (TASK_DEFAULTS); the measurements that chose them are in
docs/recipe.md. Everything here reads a run configuration (config.RunConfig, or anything with its
attribute names) and decides nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..engine.config import BertConfig, ConfigError, preset
from .config import RunConfig


@dataclass(frozen=True)
class TaskDefaults:
    """Optimizer steps of batch 32 per task stage, and the teacher's peak learning rate."""
    teacher_steps: int
    intermediate_steps: int
    prediction_steps: int
    teacher_lr: float


# Tasks without an entry (the large ones, your own data) take SST-2's. Why these: docs/recipe.md.
TASK_DEFAULTS = {"sst2": TaskDefaults(2000, 1500, 1000, 5e-5), "cola": TaskDefaults(1500, 2000, 1500, 1e-4),
                 "stsb": TaskDefaults(1000, 3000, 1000, 1e-4), "mrpc": TaskDefaults(600, 1500, 600, 1e-4),
                 "rte": TaskDefaults(400, 2000, 500, 1e-4), "wnli": TaskDefaults(100, 300, 100, 1e-4)}

# Augmented copies pay only once the task stage repeats its training set (docs/recipe.md).
AUGMENT_COPIES = 4
AUGMENT_FROM_PASSES = 3.0


def _task_default(config: RunConfig, task, name: str):
    """--<name> as given on the command line, else the task's default (TASK_DEFAULTS, else SST-2's)."""
    given = getattr(config, name)
    if given is not None:
        return given
    return getattr(TASK_DEFAULTS.get(task.name, TASK_DEFAULTS["sst2"]), name)


def stage_steps(config: RunConfig, task, stage: str) -> int:
    """The optimizer steps of a task stage: "teacher", "intermediate" or "prediction"."""
    return _task_default(config, task, f"{stage}_steps")


def task_teacher_lr(config: RunConfig, task) -> float:
    """The teacher fine-tuning's peak learning rate."""
    return _task_default(config, task, "teacher_lr")


def default_help(name: str, what: str) -> str:
    by_task = ", ".join(f"{task} {getattr(d, name):g}" for task, d in TASK_DEFAULTS.items())
    return f"{what} (default by task: {by_task}; other tasks and own data as sst2)"


def task_max_length(config: RunConfig, task) -> int:
    return config.max_length or (64 if task.pair_column is None else 128)



# --- the losses and the layer mapping -------------------------------------------------------------


def layer_mapping(student_layers: int, teacher_layers: int, explicit: list[int] | None = None) -> list[int]:
    """g(0..M): which teacher hidden state each student hidden state learns (0 is the embeddings).

    Uniform: g(m) = round(m N / M), rounding halves up, so it also works when N is not a multiple
    of M (6 -> 4 gives 0, 2, 3, 5, 6). `explicit` lists g(1..M) (1-based teacher layers)."""
    M, N = student_layers, teacher_layers
    if explicit is None:
        return [int(math.floor(m * N / M + 0.5)) for m in range(M + 1)]
    if len(explicit) != M:
        raise ValueError(f"the mapping lists {len(explicit)} teacher layers; the student has {M}")
    if any(not 1 <= g <= N for g in explicit):
        raise ValueError(f"mapped teacher layers must lie in 1..{N}, got {explicit}")
    return [0] + [int(g) for g in explicit]


def describe_mapping(g: list[int]) -> str:
    pairs = ", ".join(f"S{m}<-T{t}" for m, t in enumerate(g))
    attn = ", ".join(f"S{m}<-T{g[m]}" for m in range(1, len(g)))
    return f"hidden states (0 = embeddings): {pairs}; attention (layers, 1-based): {attn}"


@dataclass
class LossWeights:
    embedding: float = 1.0
    hidden: float = 1.0
    attention: float = 1.0
    prediction: float = 1.0
    hard: float = 0.0          # mix of the gold-label loss in prediction distillation


def loss_weights(config: RunConfig) -> LossWeights:
    return LossWeights(config.w_embedding, config.w_hidden, config.w_attention, config.w_prediction, config.w_hard)


# --- the student -----------------------------------------------------------------------------------


def labels_of(task):
    return 1 if task.labels is None else len(task.labels)


def with_labels(config: BertConfig, task) -> BertConfig:
    labels = {} if task.labels is None else {i: name for i, name in enumerate(task.class_names)}
    return config.replace(num_labels=labels_of(task), id2label=labels)


def student_config(config: RunConfig, teacher_config: BertConfig) -> BertConfig:
    """The student's configuration (--student), with TinyBERT's projections to the teacher's width."""
    base = BertConfig.from_json(config.student) if str(config.student).endswith(".json") else preset(config.student)
    return base.replace(vocab_size=teacher_config.vocab_size, fit_size=teacher_config.hidden_size,
                        fit_shared=config.shared_projection, do_lower_case=teacher_config.do_lower_case)


def check_pair(teacher, student, w: LossWeights):
    """A teacher and student the losses `w` can join."""
    t, s = teacher.config, student.config
    if w.attention and t.num_attention_heads != s.num_attention_heads:
        raise ConfigError(f"the attention loss needs as many heads in the student ({s.num_attention_heads}) as "
                          f"in the teacher ({t.num_attention_heads}); choose another student or --w-attention 0")
    if t.vocab_size != s.vocab_size:
        raise ConfigError(f"teacher and student vocabularies differ ({t.vocab_size} vs {s.vocab_size})")


# --- the run directory ------------------------------------------------------------------------------

STAGE_DIRS = {"teacher": "teacher", "general": "general", "intermediate": "task-intermediate",
              "prediction": "task-prediction"}


def stage_dir(config: RunConfig, stage: str) -> Path:
    return Path(config.out) / STAGE_DIRS[stage]
