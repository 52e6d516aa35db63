"""TinyBERT's pipeline (Jiao et al., 2019), stage by stage:

  finetune-teacher  the teacher gets a task head and is fine-tuned on the task;
  general           the student learns the teacher's layers on the corpus (general.py);
  task              (1) the same intermediate-layer losses on the task's augmented training set,
                    from the general student; (2) prediction-layer distillation to the fine-tuned
                    teacher's logits, computed once before the stage; the best checkpoint by dev metric;
  all               each in turn, then `summarize`: teacher against student.

Each stage reads one run configuration (config.RunConfig) and nothing from the command line.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data.batches import TaskBatches
from ..data.tokenizer import Tokenizer
from ..engine.files import sha256_of, write_atomic
from ..engine.model import Bert
from ..engine.weights import checkpoint_file, load_model
from ..training.world import get_world
from . import general
from .config import RunConfig
from .general import general_student_dir, is_scratch, run_general
from .logits_cache import teacher_logits
from .models import task_teacher_and_student, teacher_from_another_task
from .recipe import (LossWeights, check_pair, describe_mapping, labels_of, layer_mapping, loss_weights, stage_dir,
                     stage_steps, task_max_length, task_teacher_lr, with_labels)
from .sources import (augment_cache_dir, augmented_train_set, common_setup, corpus_dir, load_dev_sets, task_loader,
                      task_tokens, token_cache_dir)
from .stage_runner import stage_evaluator, train_stage
from .steps import finetune_step, intermediate_step, make_evaluator, prediction_step

GENERAL_SOURCE = "general-student.json"     # which general student a task run started from


def _needs_teacher_logits(config: RunConfig, w: LossWeights, task) -> bool:
    """Whether the prediction stage uses the teacher's logits (not for --w-prediction 0, nor for a
    regression task with --regression-target gold): if not, the teacher's pass is skipped."""
    return bool(w.prediction) and not (labels_of(task) == 1 and config.regression_target == "gold")


def run_finetune_teacher(config: RunConfig, log=print) -> Path | None:
    """The teacher gets a task head and is fine-tuned on the task; the best checkpoint by dev metric."""
    task, teacher_dir, tokenizer, load_examples = common_setup(config, log)
    if config.teacher_init:
        teacher = teacher_from_another_task(config.teacher_init, teacher_dir, tokenizer, task, config.seed, log)
    else:
        teacher = load_model(teacher_dir, num_labels=labels_of(task), seed=config.seed, log=log)
    teacher.config = with_labels(teacher.config, task)
    train_set, dev = load_examples("train", limit=config.train_limit), load_dev_sets(task, load_examples)
    max_length = task_max_length(config, task)
    log(f"[teacher] fine-tuning {teacher_dir} on {task.name}: {len(train_set)} examples, max length {max_length}")
    tokens = task_tokens(config, train_set, tokenizer, max_length, log)
    state = train_stage(config, "teacher", teacher, stage_steps(config, task, "teacher"), task_teacher_lr(config, task),
                        TaskBatches(train_set, tokenizer, config.batch_size, max_length, config.seed,
                                    window=config.length_window, tokens=tokens),
                        lambda batch, rng, **k: finetune_step(teacher, batch[0], batch[1], rng, **k),
                        evaluate=stage_evaluator(config, teacher, dev, tokenizer, max_length, log),
                        vocab_from=teacher_dir, log=log)
    if not state.done:
        return None
    best = stage_dir(config, "teacher") / "best"
    log(f"[teacher] best dev {task.main_metric} {state.best_metric:.4f} at step {state.best_step}: {best}")
    return best


def run_task(config: RunConfig, log=print, general_ckpt: Path | None = None) -> Path | None:
    """Task distillation from the general student: (1) the intermediate-layer losses on the augmented
    training set, (2) prediction-layer distillation to the fine-tuned teacher's logits; the best
    checkpoint by dev metric."""
    task, teacher_dir, tokenizer, load_examples = common_setup(config, log)
    if general_ckpt is None:
        general_ckpt = general_student_dir(config, log)          # None: --general-student scratch
    teacher, student = task_teacher_and_student(config, task, general_ckpt, teacher_dir, log)
    w = loss_weights(config)
    check_pair(teacher, student, w)
    mapping = _logged_mapping(config, teacher, student, "task", log)
    max_length = task_max_length(config, task)
    train_set = augmented_train_set(config, task, teacher_dir, tokenizer, load_examples, log)
    dev = load_dev_sets(task, load_examples)
    log(f"[task] {len(train_set)} training examples (augmented copies included, if any), "
        f"{' + '.join(str(len(d)) for d in dev.values())} dev")
    # the augmented set's token ids, and the set itself as a dataset, in one Arrow file both stages read
    tokens = task_tokens(config, train_set, tokenizer, max_length, log)

    if general_ckpt is not None and not config.skip_intermediate:   # recorded in the intermediate stage's directory
        get_world().root_call(_write_general_source, config, general_ckpt)
    if config.skip_intermediate:
        log("[task] --skip-intermediate: prediction-layer distillation starts from the general student")
    else:
        steps = stage_steps(config, task, "intermediate")
        state = train_stage(config, "intermediate", student, steps, config.intermediate_lr,
                            TaskBatches(train_set, tokenizer, config.batch_size, max_length, config.seed,
                                        window=config.length_window, tokens=tokens),
                            lambda batch, rng, **k: intermediate_step(teacher, student, batch[0], rng, mapping, w,
                                                                      **k),
                            vocab_from=teacher_dir, log=log)
        if not state.done:
            return None

    prediction_steps = stage_steps(config, task, "prediction")
    batches = TaskBatches(train_set, tokenizer, config.batch_size, max_length, config.seed, window=config.length_window,
                          tokens=tokens)
    if _needs_teacher_logits(config, w, task):
        with get_world().root_first():      # rank 0 computes and caches them; the others read the cache
            logits = teacher_logits(teacher, train_set, tokenizer, max_length, cache_dir=augment_cache_dir(config),
                                    log=log, tokens=tokens, needed=batches.first_steps(prediction_steps),
                                    workers=config.workers)
    else:                                   # the teacher's output is unused: the gold labels stand in
        logits = np.zeros((len(train_set), labels_of(task)), np.float32)
    del teacher                                   # the prediction stage runs the student alone
    batches.attach(logits)

    if not config.skip_intermediate:
        student = load_model(stage_dir(config, "intermediate") / "final", log=log)
        student.config = with_labels(student.config, task)
    state = train_stage(config, "prediction", student, prediction_steps, config.prediction_lr, batches,
                        lambda batch, rng, **k: prediction_step(student, batch[0], batch[1],
                                                                _computed_logits(batch[2]), rng, w, config.temperature,
                                                                regression_target=config.regression_target, **k),
                        evaluate=stage_evaluator(config, student, dev, tokenizer, max_length, log),
                        vocab_from=teacher_dir, log=log)
    if not state.done:
        return None
    best = stage_dir(config, "prediction") / "best"
    if state.best_metric is not None:
        log(f"[task] best student dev {task.main_metric} {state.best_metric:.4f} at step {state.best_step}: {best}")
    return best


def _computed_logits(rows: np.ndarray) -> np.ndarray:
    """The batch's cached teacher logits, which the cache computed for the stage's steps alone."""
    if np.isnan(rows).any():
        raise RuntimeError("the prediction stage drew an example whose teacher logits were not computed "
                           "(logits_cache: rows the stage draws); please report this")
    return rows


def summarize(config: RunConfig, log=print) -> dict:
    """Teacher vs student: dev metric, ratio, size, and forward speed on the dev set, measured here."""
    task, load_examples = task_loader(config, log, every_rank=False)    # rank 0 alone summarizes
    teacher_best, student_best = stage_dir(config, "teacher") / "best", stage_dir(config, "prediction") / "best"
    teacher, student = load_model(teacher_best), load_model(student_best)
    tokenizer = Tokenizer.from_dir(teacher_best)
    dev = load_dev_sets(task, load_examples)
    dev_size = sum(len(d) for d in dev.values())
    max_length = task_max_length(config, task)
    report = {"task": task.name, "metric": task.main_metric}
    for name, model in (("teacher", teacher), ("student", student)):
        evaluator = make_evaluator(model, dev, tokenizer, max_length, token_cache_dir(config))
        t0 = time.perf_counter()
        metrics = evaluator()
        seconds = time.perf_counter() - t0
        encoder = sum(v.size for n, v in model.params.views.items() if not n.startswith(("fit_dense", "cls.")))
        report[name] = {"dev": metrics, "parameters": int(encoder), "dev_seconds": seconds,
                        "sequences_per_s": dev_size / seconds}
    report["ratio"] = report["student"]["dev"]["main"] / report["teacher"]["dev"]["main"]
    report["size_ratio"] = report["teacher"]["parameters"] / report["student"]["parameters"]
    report["speed_ratio"] = report["teacher"]["dev_seconds"] / report["student"]["dev_seconds"]
    source = stage_dir(config, "intermediate") / GENERAL_SOURCE
    if source.exists():
        report["general_student"] = json.loads(source.read_text())
    out = Path(config.out)
    write_atomic(out / "summary.json", json.dumps(report, indent=1) + "\n")
    log(f"\n{task.name} dev {task.main_metric}: teacher {report['teacher']['dev']['main']:.4f}, student "
        f"{report['student']['dev']['main']:.4f} ({report['ratio']:.1%} of the teacher)")
    log(f"student: {report['student']['parameters'] / 1e6:.1f}M parameters ({report['size_ratio']:.1f}x smaller), "
        f"{report['speed_ratio']:.1f}x faster on the dev set ({report['student']['sequences_per_s']:.0f} vs "
        f"{report['teacher']['sequences_per_s']:.0f} sequences/s)")
    log(f"written: {out / 'summary.json'}")
    return report


def run_all(config: RunConfig, log=print) -> dict | None:
    """Each stage in turn; a stage that stops early (Ctrl-C, --stop-after) ends the pipeline, and
    `all --resume` picks it up where it stopped, reusing the stages already complete. The general
    stage is skipped for --general-student, and reuses a general student of the same recipe."""
    general_ckpt = None
    if is_scratch(config):
        log("[general] --general-student scratch: no general distillation, the student starts from BERT's init")
    elif config.general_student:                      # checked before the teacher's long stage
        general_ckpt = general_student_dir(config, log)
        record = get_world().root_call(general.read_record, general_ckpt)
        log(f"[general] using the general student {general_ckpt}" + (f": {general.describe(record)}" if record else ""))
    else:
        corpus_dir(config)           # a missing corpus stops the run now, not after the teacher's stage
    if run_finetune_teacher(config, log) is None:
        return _paused(log)
    if not is_scratch(config):
        general_ckpt = general_ckpt or run_general(config, log)
        if general_ckpt is None:
            return _paused(log)
    if run_task(config, log, general_ckpt) is None:
        return _paused(log)
    return summarize(config, log) if get_world().is_root else None


def _paused(log) -> None:
    log("pipeline paused: run the same command with --resume to continue")


def _write_general_source(config: RunConfig, general_ckpt: Path) -> None:
    """Records, beside the task distillation, which general student it started from."""
    record = general.read_record(general_ckpt) or {}
    source = {"path": str(Path(general_ckpt).resolve()),
              "weights_sha256": sha256_of(checkpoint_file(general_ckpt)),
              **{k: record[k] for k in ("fingerprint", "steps", "cycles") if k in record}}
    path = stage_dir(config, "intermediate") / GENERAL_SOURCE
    if not path.exists():                             # a resumed run keeps the student it started from
        write_atomic(path, json.dumps(source, indent=1) + "\n")


def _logged_mapping(config: RunConfig, teacher: Bert, student: Bert, stage: str, log) -> list[int]:
    mapping = layer_mapping(student.config.num_hidden_layers, teacher.config.num_hidden_layers, config.mapping)
    log(f"[{stage}] mapping {describe_mapping(mapping)}")
    return mapping
