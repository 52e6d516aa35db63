"""The embedding stage: a student whose sentence embedding is the teacher's, distilled one sentence a row.

    python -m minitinybert.distill embed [general's options] [--embed-steps N] [--embed-objective cosine|mse]
    mpiexec -n K python -m minitinybert.distill embed ...       # data-parallel, as the other stages

The teacher's sentence embedding is its own pipeline, read from the sentence-transformers files it
ships (engine/pooling.py: modules.json, 1_Pooling/config.json, Normalize, sentence_bert_config.json):
for all-MiniLM-L6-v2, the mean of the last hidden states over real tokens, L2-normalised. The
student's is the same pooling of its own last hidden states, mapped to the teacher's width by
TinyBERT's last projection (fit_denses.M, which the general stage trained to map the student's last
hidden states onto the teacher's: a linear map commutes with the mean, so it starts as a fit of the
pooled vector too), then normalised. The objective (engine/losses.py): the cosine distance
(default) or the MSE of the two embeddings, weighted by --w-sentence, alone (--embed-layers 0,
default) or added to TinyBERT's layer losses (embedding output, hidden states, attention scores,
weighted by --w-embedding/--w-hidden/--w-attention) times --embed-layers.

The student starts from the general student (--general-student, else the one `general`/`all` made
for these settings in runs/general/), else from the teacher's weights cut to the student's size
(subclone.py) when there is none. Rows: one sentence each (--embed-rows lines; or packed), cut at
--embed-seq-len tokens, one segment, from the general corpus's lines and the training sentences of the
GLUE tasks --embed-texts names (auto: those in the data directory but the scored one; texts only). The run
resumes exactly (--resume) and runs under mpiexec like the general stage (the training loop,
parallel.py). At the end, zero-shot STS-B dev Spearman of cosine for teacher and
student (--sts-file, default <data>/glue/STS-B/dev.tsv) is printed and written to <out>/summary.json;
the student is in <out>/final with `embedding.json` (pooling, normalisation, maximum length, which
projection), which export.py carries into the runtime file and the sentence-transformers folder.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.corpus import CorpusBatcher, corpus_files
from ..data.sts import read_similarity_file, similarity_scores
from ..data.task_files import DATA_ENV, data_root, load_split
from ..data.tasks import TASKS, get_task
from ..data.tokenizer import Tokenizer
from ..engine import losses
from ..engine.config import ConfigError
from ..engine.files import write_atomic
from ..engine.model import Bert
from ..engine.pooling import (EMBEDDING_FILE, SentenceConfig, embed_backward, embed_forward, ensure_sentence_files,
                              read_model_sentence_config)
from ..engine.teacher import resolve_teacher
from ..engine.weights import load_model, save_checkpoint
from ..training.loop import LoopConfig, StepResult, train
from ..training.parallel import DataParallel
from ..training.world import get_world
from .config import RunConfig
from .general import checkpoint_of, describe, general_plan, read_record, subclone_start
from .recipe import layer_mapping
from .sources import corpus_dir
from .steps import layer_losses, weighted_layer_loss

OBJECTIVES = ("cosine", "mse")
ROWS = ("lines", "packed")
TEXTS_FILE = "task-sentences.txt"      # in <out>/: the --embed-texts sentences, a sentence a document


# --- the sentence embedding of a model ---------------------------------------------------------------

def projection_names(config: RunConfig) -> tuple[str, str] | None:
    """The student's projection to the teacher's width, applied to its pooled embedding: TinyBERT's last
    fit_dense (None without projections)."""
    if not config.fit_size:
        return None
    prefix = "fit_dense" if config.fit_shared else f"fit_denses.{config.num_hidden_layers}"
    return prefix + ".weight", prefix + ".bias"


read_embedding_config = read_model_sentence_config


def model_projection(model: Bert, prefix: str | None):
    if not prefix:
        return None
    return model.params[prefix + ".weight"], model.params[prefix + ".bias"]


def embed_texts(model: Bert, tokenizer: Tokenizer, texts: list[str], sentence: SentenceConfig, projection=None,
                batch_size: int = 64, max_length: int | None = None) -> np.ndarray:
    """(N, D) sentence embeddings by the training engine (eval mode), texts sorted by length into batches."""
    limit = min(max_length or sentence.max_seq_length or 128, model.config.max_position_embeddings)
    lengths = tokenizer.lengths(texts, max_length=limit)
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer.encode([texts[i] for i in rows], max_length=limit)
        width = int(batch.attention_mask.sum(axis=1).max())
        ids, types, mask = (a[:, :width] for a in (batch.input_ids, batch.token_type_ids, batch.attention_mask))
        hidden = model.forward(ids, types, mask).hidden_states[-1]
        vectors = embed_forward(hidden, mask, sentence, projection)[0]
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[rows] = vectors
    return out


# --- the stage's corpus ------------------------------------------------------------------------------

def text_tasks(config: RunConfig) -> list[str]:
    """The GLUE tasks of --embed-texts: "auto" is every task whose train file is in the data directory but the
    one the stage is scored on (a task whose file is --sts-file: STS-B by default), so that the zero-shot
    score is on text of no split the student read; names add any task, that one too."""
    setting = str(_option(config, "embed_texts")).strip().lower()
    if setting in ("", "none"):
        return []
    if setting == "auto":
        if not (config.data or os.environ.get(DATA_ENV)):
            return []
        root, scored = data_root(config.data), sts_file(config)

        def is_scored(spec) -> bool:
            files = [spec.train_file, spec.dev_file, *(f for _, f in spec.more_dev_files)]
            return scored is not None and any(f and (root / f).resolve() == scored.resolve() for f in files)
        return [name for name, spec in TASKS.items() if (root / spec.train_file).is_file() and not is_scored(spec)]
    names = [get_task(name.strip()).name for name in setting.split(",") if name.strip()]
    return list(dict.fromkeys(names))


def task_sentences(tasks: list[str], data: str | None) -> list[str]:
    """The training sentences of `tasks` (both sides of a pair), each once, in reading order; never labels."""
    sentences = {}
    for name in tasks:
        examples = load_split(name, "train", data)
        for text in examples.texts + (examples.pairs or []):
            text = " ".join(text.split())
            if text:
                sentences.setdefault(text, None)
    return list(sentences)


def embedding_corpus(config: RunConfig, out: Path) -> tuple[Path, list[str]]:
    """(the corpus the stage reads, the tasks whose sentences it holds). With --embed-texts, <out>/corpus/:
    links to the general corpus's .txt files and to <out>/task-sentences.txt (a sentence a document, so
    that packed rows never join two of them). Written again only when the sentences changed, so that a
    resumed run finds the same files. Run by the root process alone."""
    general = corpus_dir(config)
    tasks = text_tasks(config)
    if not tasks:
        return general, []
    files, kind = corpus_files(general)
    if kind != "text":
        raise ConfigError(f"--embed-texts adds sentences to a .txt corpus, and {general} is {kind}: "
                          f"pass --embed-texts none, or a .txt corpus")
    sentences = task_sentences(tasks, config.data)
    texts = out / TEXTS_FILE
    body = "\n\n".join(sentences) + "\n"
    if not texts.is_file() or texts.read_text(encoding="utf-8") != body:
        write_atomic(texts, body)
    folder = out / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    links = {path.name: path.resolve() for path in files}
    if TEXTS_FILE in links:
        raise ConfigError(f"the general corpus already holds a file named {TEXTS_FILE}: rename it")
    links[TEXTS_FILE] = texts.resolve()
    for old in folder.iterdir():
        if old.name not in links or not old.is_symlink() or old.resolve() != links[old.name]:
            old.unlink()
    for name, target in links.items():
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(target)
    return folder, tasks


def stage_batches(config: RunConfig, out: Path, tokenizer: Tokenizer, runner: DataParallel, world, log):
    """(the stage's CorpusBatcher over this process's shards, the tasks whose sentences it reads, its rows)."""
    rows = _option(config, "embed_rows")
    if rows not in ROWS:
        raise ConfigError(f"--embed-rows must be one of {', '.join(ROWS)}, got {rows!r}")
    source, tasks = world.root_call(embedding_corpus, config, out)
    seq_len = int(_option(config, "embed_seq_len"))
    log(f"[embedding] corpus {corpus_dir(config)}" + (f" + the training sentences of {', '.join(tasks)} "
        f"({out / TEXTS_FILE})" if tasks else "") + f"; {'a line' if rows == 'lines' else 'packed lines'} a row "
        f"of {seq_len} tokens")
    corpus = CorpusBatcher(source, tokenizer, seq_len=seq_len, batch_size=config.batch_size, seed=config.seed,
                           shards=runner.shards, streaming=config.corpus_streaming, column=config.corpus_column,
                           segments=1, pack=rows == "packed")
    return corpus, tasks, rows


# --- one step ----------------------------------------------------------------------------------------

@dataclass
class EmbeddingWeights:
    sentence: float = 1.0
    embedding: float = 0.0     # TinyBERT's layer losses, already multiplied by --embed-layers
    hidden: float = 0.0
    attention: float = 0.0


def embedding_step(teacher: Bert, student: Bert, batch, rng, mapping: list[int], w: EmbeddingWeights,
                   objective: str, teacher_sentence: SentenceConfig, student_sentence: SentenceConfig,
                   grads=None, share: float = 1.0) -> StepResult:
    """The sentence-embedding loss (and TinyBERT's layer losses when weighted); gradients into `grads`
    scaled by `share`, as distill's intermediate_step."""
    mask = batch.attention_mask
    t_out = teacher.forward(batch.input_ids, batch.token_type_ids, mask)
    s_out = student.forward(batch.input_ids, batch.token_type_ids, mask, rng=rng, keep_cache=True)
    P, cfg = student.params, student.config
    names = projection_names(cfg)
    t_emb = embed_forward(t_out.hidden_states[-1], mask, teacher_sentence)[0]
    projection = (P[names[0]], P[names[1]]) if names else None
    s_emb, cache = embed_forward(s_out.hidden_states[-1], mask, student_sentence, projection)
    forward, backward = ((losses.embedding_cosine_forward, losses.embedding_cosine_backward) if objective == "cosine"
                         else (losses.embedding_mse_forward, losses.embedding_mse_backward))
    loss, loss_cache = forward(s_emb, t_emb)
    dh_last, dproj = embed_backward(cache, backward(loss_cache, w.sentence * share))
    L = cfg.num_hidden_layers
    dhidden, dscores, extra = {L: dh_last}, {}, []
    if dproj is not None:
        extra.append((names[0], dproj[0]))
        extra.append((names[1], dproj[1]))
    terms = {"loss_sentence": loss, **layer_losses(t_out, s_out, student, mapping, w, share, dhidden, dscores, extra)}
    total = w.sentence * loss + weighted_layer_loss(terms, w)
    grads = student.backward(s_out, dhidden=dhidden, dscores=dscores, grads=grads)
    for name, g in extra:                        # after backward, which zeroes the buffer
        grads[name][...] += g
    B, T = batch.input_ids.shape
    return StepResult({"loss": total, **terms}, B, int(mask.sum()), B * T)


# --- the stage ---------------------------------------------------------------------------------------

def _option(config: RunConfig, name):
    """config's setting `name`, else RunConfig's default (a config made before the stage's options)."""
    value = getattr(config, name, None)
    return getattr(RunConfig, name) if value is None else value


def sts_file(config: RunConfig) -> Path | None:
    """--sts-file, else <data>/glue/STS-B/dev.tsv when there; None: no evaluation."""
    if _option(config, "sts_file"):
        return Path(config.sts_file)
    if config.data or os.environ.get(DATA_ENV):
        path = data_root(config.data) / "glue" / "STS-B" / "dev.tsv"
        return path if path.is_file() else None
    return None


def starting_student(config: RunConfig, teacher: Bert, teacher_dir: Path, log) -> tuple[Bert, list[int], str]:
    """(student, layer mapping, where it came from): the general student, else a subclone of the teacher."""
    if getattr(config, "general_student", None):
        path = checkpoint_of(config.general_student)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"general student not found at {path}")
        plan = None
    else:
        plan = general_plan(config, log)
        path = plan.directory / "final"
    if (path / "model.safetensors").exists():
        student = load_model(path)
        record = read_record(path)
        how = f"the general student in {path}" + (f" ({describe(record)})" if record else "")
        mapping = layer_mapping(student.config.num_hidden_layers, teacher.config.num_hidden_layers,
                                    config.mapping)
        return student, mapping, how
    if plan.init != "subclone":
        raise ConfigError(f"no general student in {path} and the student cannot be cut from the teacher "
                          f"({plan.init_reason}): run `python -m minitinybert.distill general` first")
    student = Bert(plan.student_config, seed=config.seed)
    student.params.data[...] = subclone_start(config, plan, teacher)
    how = f"the teacher's weights cut to {config.student} (subclone.py; no general student in {plan.directory})"
    return student, plan.mapping, how


def run_embedding(config: RunConfig, log=print) -> Path | None:
    """The embedding stage (see the module's docstring); returns <out>/final, or None when stopped early."""
    world = get_world()
    objective = _option(config, "embed_objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"--embed-objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    with world.root_first():
        teacher_dir = resolve_teacher(config.teacher)
    teacher_sentence = world.root_call(ensure_sentence_files, teacher_dir)
    teacher_sentence = teacher_sentence or SentenceConfig("mean", True, None)
    teacher = load_model(teacher_dir, log=log)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    out = Path(config.out)
    continuing = config.resume and world.root_call((out / "last").exists)
    student, mapping, how = starting_student(config, teacher, teacher_dir, log)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ConfigError("teacher and student vocabularies differ")
    names = projection_names(student.config)
    width_s, width_t = student.config.hidden_size, teacher.config.hidden_size
    if names is None and width_s != width_t:
        raise ConfigError(f"the student ({width_s}) and the teacher ({width_t}) differ in width and the student has "
                          f"no projection (fit_dense) to map its embedding")
    student_sentence = SentenceConfig(teacher_sentence.pooling, teacher_sentence.normalize,
                                      teacher_sentence.max_seq_length)
    layers = float(_option(config, "embed_layers"))
    w = EmbeddingWeights(float(_option(config, "w_sentence")), layers * config.w_embedding, layers * config.w_hidden,
                         layers * config.w_attention)
    if w.attention and student.config.num_attention_heads != teacher.config.num_attention_heads:
        raise ConfigError("the attention loss needs as many heads in the student as in the teacher: --w-attention 0")
    log(f"[embedding] teacher {teacher_dir}: {teacher_sentence.pooling} pooling"
        f"{', normalised' if teacher_sentence.normalize else ''}, max_seq_length {teacher_sentence.max_seq_length}")
    log(f"[embedding] student from {'its last checkpoint (--resume)' if continuing else how}; objective: {objective} "
        f"x {w.sentence:g}" + (f" + layer losses x {layers:g}" if layers else " alone")
        + (f"; its embedding through {names[0].rsplit('.', 1)[0]} to width {width_t}" if names else ""))
    runner = DataParallel(student, config.workers, world)
    corpus, tasks, rows = stage_batches(config, out, tokenizer, runner, world, log)
    sts = sts_file(config)
    limit = _option(config, "eval_limit")
    pairs = world.root_call(read_similarity_file, sts, limit) if sts else None
    prefix = names[0].rsplit(".", 1)[0] if names else None

    def score(model, sentence, projection):
        return similarity_scores(lambda texts: embed_texts(model, tokenizer, texts, sentence, projection), pairs)

    evaluate = (lambda: score(student, student_sentence, model_projection(student, prefix))) if pairs else None
    steps = int(_option(config, "embed_steps"))
    loop = LoopConfig(total_steps=steps, lr=float(_option(config, "embed_lr")), warmup=config.warmup,
                      weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                      save_every=config.save_every, eval_every=int(_option(config, "embed_eval_every")),
                      stop_after=config.stop_after, seed=config.seed)
    started = time.time()
    state = train("embedding", student, out, loop, corpus,
                  lambda batch, rng: runner(lambda b, r, **k: embedding_step(
                      teacher, student, b, r, mapping, w, objective, teacher_sentence, student_sentence, **k),
                      batch, rng),
                  evaluate=evaluate, vocab_from=teacher_dir, resume=config.resume, log=log, world=runner.world)
    runner.close()
    if not state.done:
        return None
    final = out / "final"
    if not world.is_root:
        return final
    record = {**student_sentence.to_dict(), "projection": prefix, "objective": objective, "steps": state.step,
              "teacher": str(teacher_dir), "start": how, "texts": tasks, "rows": rows}
    save_checkpoint(student, final, vocab_from=teacher_dir,
                    extra_files={EMBEDDING_FILE: json.dumps(record, indent=1) + "\n"})
    summary = {"stage": "embedding", "final": str(final), "objective": objective, "steps": state.step,
               "start": how, "texts": tasks, "rows": rows, "seq_len": _option(config, "embed_seq_len"),
               "minutes_in_steps": _minutes(out / "log.jsonl"),
               "wall_minutes_this_run": round((time.time() - started) / 60, 2)}
    if pairs is not None:
        t0 = time.perf_counter()
        summary["sts"] = {"file": pairs.source, "pairs": len(pairs),
                          "teacher": score(teacher, teacher_sentence, None),
                          "student": score(student, student_sentence, model_projection(student, prefix))}
        t, s = summary["sts"]["teacher"]["spearman"], summary["sts"]["student"]["spearman"]
        summary["sts"]["student_over_teacher"] = s / t if t else None
        log(f"[embedding] zero-shot {Path(pairs.source).parent.name}/{Path(pairs.source).name} Spearman of cosine "
            f"({len(pairs)} pairs): teacher {t:.4f}, student {s:.4f} ({100 * s / t:.1f}% of the teacher) "
            f"[{time.perf_counter() - t0:.0f} s]")
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    log(f"[embedding] student ready in {final}; summary in {out / 'summary.json'}")
    return final


def _minutes(log_file: Path) -> float | None:
    try:
        rows = [json.loads(x) for x in log_file.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return None
    return round(sum(r.get("seconds", 0.0) for r in rows if "seconds" in r) / 60, 2)
