"""Distillation: TinyBERT's stages behind one typed run configuration.

    config.py        RunConfig: every setting of a run, frozen, built once from the command line
    recipe.py        the tuned per-task defaults (data), loss weights, layer mapping, the student
    sources.py       where the data comes from: task examples, token ids, the corpus, augmentation
    steps.py         one step of each stage: the losses on a batch, their gradients
    stage_runner.py  the training loop around a step, the evaluator
    models.py        the teacher and student a task stage starts from
    general.py       the general stage and the general student it makes, found and reused
    stages.py        the pipeline: teacher fine-tuning, general, task, all, summary
    cli.py           `python -m minitinybert.distill`
    subclone.py, logits_cache.py   a student cut from the teacher; the teacher's logits, cached

What tools and tests use is exported here.
"""
from .cli import build_parser, main, parse_config
from .config import RunConfig
from .general import general_plan, general_student_dir, run_general
from .models import new_student
from .recipe import (AUGMENT_COPIES, AUGMENT_FROM_PASSES, STAGE_DIRS, TASK_DEFAULTS, LossWeights, layer_mapping,
                     stage_dir, stage_steps, task_max_length, task_teacher_lr)
from .sources import augment_copies, common_setup, load_dev_sets, task_loader
from .stage_runner import train_stage
from .stages import run_all, run_finetune_teacher, run_task, summarize
from .steps import finetune_step, intermediate_step, make_evaluator, prediction_step

__all__ = ["AUGMENT_COPIES", "AUGMENT_FROM_PASSES", "STAGE_DIRS", "TASK_DEFAULTS", "LossWeights", "RunConfig",
           "augment_copies", "build_parser", "common_setup", "finetune_step", "general_plan", "general_student_dir",
           "intermediate_step", "layer_mapping", "load_dev_sets", "main", "make_evaluator", "new_student",
           "parse_config", "prediction_step", "run_all", "run_finetune_teacher", "run_general", "run_task",
           "stage_dir", "stage_steps", "summarize", "task_loader", "task_max_length", "task_teacher_lr",
           "train_stage"]
