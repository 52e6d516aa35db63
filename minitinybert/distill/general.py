"""The general student: TinyBERT's task-independent part, distilled once and reused by every task.

A general run records what made it in `general.json` (in its directory and in final/): the
teacher (sha256 of its weights file, its configuration, the vocabulary), the student's
configuration, the corpus (name, size and sha256 of every file) and the settings that shape the
result (sequence length, batch size, learning rate and schedule, seed, loss weights, layer
mapping), which together are its *recipe*, plus the steps it has made. The recipe's hash names
the run's directory: by default <parent of --out>/general/<student>-<fingerprint>/, so that
`all --task cola` finds, in runs/general/, the student `all --task sst2` distilled. Steps are not
part of the recipe: a run is continued for more steps in its own directory.

The general stage (`run_general`): the student, cut from the teacher's weights (subclone.py) or
from BERT's init, learns the teacher's embedding output, hidden states and attention scores on the
corpus, in that directory; a finished run of the same recipe is found and reused.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.corpus import CorpusBatcher, corpus_files
from ..data.tokenizer import Tokenizer
from ..engine.config import BertConfig, ConfigError
from ..engine.files import sha256_of, write_atomic
from ..engine.model import Bert
from ..engine.teacher import resolve_teacher
from ..engine.weights import checkpoint_file, load_model
from ..training.loop import TrainingError
from ..training.parallel import DataParallel
from ..training.runlock import writer_lock
from ..training.world import get_world
from . import subclone
from .config import RunConfig
from .recipe import check_pair, describe_mapping, layer_mapping, loss_weights, student_config
from .sources import corpus_dir
from .stage_runner import train_stage
from .steps import intermediate_step

RECORD = "general.json"
RECORD_FORMAT = "minitinybert-general/1"


FULL_HASH_BYTES = 256 << 20     # larger corpus files are identified by samples of their bytes
SAMPLES, SAMPLE_BYTES = 64, 1 << 20


def file_identity(path: Path) -> dict:
    """Name, size and sha256 of a corpus file; for a file over 256 MB (a Wikipedia dump), the
    sha256 of its size and 64 evenly spaced 1 MB samples instead, so that `all` does not read
    gigabytes to find its general student."""
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return {"name": path.name, "bytes": size, "sha256": sha256_of(path)}
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for k in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * k // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return {"name": path.name, "bytes": size, "sha256_sampled": h.hexdigest()}


def make_recipe(teacher_weights: Path, teacher_config: dict, vocab: str, student_config: dict, corpus: Path,
                settings: dict) -> dict:
    """Everything a general student's weights depend on, but the number of steps (and the worker
    count, which changes only the dropout stream)."""
    return {"teacher": {"weights_sha256": sha256_of(teacher_weights), "config": teacher_config, "vocab": vocab},
            "student": student_config,
            "corpus": [file_identity(p) for p in corpus_files(corpus)[0]],
            **settings}


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_dir(out: str | Path, student_name: str, recipe: dict) -> Path:
    """<parent of out>/general/<student>-<fingerprint>: beside the task runs (runs/general/ for runs/sst2)."""
    name = Path(student_name).stem if str(student_name).endswith(".json") else str(student_name)
    return Path(out).resolve().parent / "general" / f"{name}-{fingerprint(recipe)}"


def checkpoint_of(path: str | Path) -> Path:
    """A general student's checkpoint directory, given it or the run directory holding final/."""
    path = Path(path)
    return path / "final" if (path / "final" / "model.safetensors").exists() else path


def read_record(directory: str | Path) -> dict | None:
    """The general.json of a run or checkpoint directory, or None when it has none."""
    path = Path(directory) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable general-student record ({e}); delete it") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or "recipe" not in record:
        raise ValueError(f"{path} is not a general-student record (format {RECORD_FORMAT}); delete it")
    return record


def write_record(directory: str | Path, recipe: dict, steps: int, complete: bool, **details) -> dict:
    """Writes general.json atomically; returns what it wrote."""
    record = {"format": RECORD_FORMAT, "fingerprint": fingerprint(recipe), "steps": int(steps),
              "complete": bool(complete), **details, "recipe": recipe}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / RECORD, json.dumps(record, indent=1) + "\n")
    return record


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The recipe entries in which two recipes differ ("teacher.weights_sha256", "corpus", ...)."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict) and key != "config":
            out += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


def describe(record: dict) -> str:
    """One line: steps, start, teacher, corpus."""
    recipe = record["recipe"]
    corpus = recipe.get("corpus", [])
    size = sum(f["bytes"] for f in corpus) / 1e6
    start = "from the teacher's weights" if recipe.get("student_init") == "subclone" else "from random init"
    return (f"{record['steps']} steps at {recipe.get('seq_len')} tokens x {recipe.get('batch_size')} {start}, "
            f"teacher {recipe['teacher']['weights_sha256'][:12]}, corpus of {len(corpus)} file(s), {size:.1f} MB")


# --- the general stage ------------------------------------------------------------------------------


def run_general(config: RunConfig, log=print) -> Path | None:
    """General distillation: a student (cut from the teacher's weights, or from random init:
    --student-init) learns the teacher's embedding output, hidden states and attention scores on the
    general corpus. A finished run of the same recipe (py) with at least --general-steps
    steps is reused as it is; --resume continues an interrupted run, or extends a finished one to
    more steps."""
    plan = general_plan(config, log)
    inside = plan.directory.resolve().is_relative_to(Path(config.out).resolve())     # --out's lock covers it
    with nullcontext() if inside else writer_lock(plan.directory, log):     # one run per general student too
        return _run_general(config, plan, log)


def _run_general(config: RunConfig, plan, log) -> Path | None:
    world = get_world()
    found = world.root_call(read_record, plan.directory)       # rank 0 reads, every rank decides alike
    if found is not None and found["fingerprint"] != plan.fingerprint:
        changed = ", ".join(differences(found["recipe"], plan.recipe)) or "the recipe"
        raise ConfigError(f"{plan.directory} holds a general student made differently ({changed} differ): "
                          f"choose another --general-dir")
    if found is not None and found["complete"]:
        final = plan.directory / "final"
        if found["steps"] >= config.general_steps and world.root_call(final.exists):
            asked = "" if found["steps"] == config.general_steps else f" (asked for {config.general_steps})"
            log(f"[general] reusing the general student in {plan.directory}: {describe(found)}{asked}; "
                f"the same teacher, student, corpus and settings")
            return final
        if not config.resume:
            raise TrainingError(f"{plan.directory} holds a finished {found['steps']}-step general student: pass "
                                f"--resume to extend it to {config.general_steps} steps, or --general-steps "
                                f"{found['steps']} to use it as it is")
    teacher = load_model(plan.teacher_dir, log=log)
    student = Bert(plan.student_config, seed=config.seed)
    log(f"[general] student {config.student}: {plan.student_config.num_hidden_layers} layers, hidden "
        f"{plan.student_config.hidden_size}, {student.num_parameters / 1e6:.1f}M parameters (with projections); "
        f"run directory {plan.directory}")
    continuing = config.resume and world.root_call((plan.directory / "last").exists)    # its state replaces these
    if plan.init == "subclone" and not continuing:
        student.params.data[...] = world.root_call(subclone_start, config, plan, teacher)
        kept = ", ".join(str(t + 1) for t in subclone.kept_layers(plan.student_config.num_hidden_layers, plan.mapping))
        log(f"[general] student initialised from the teacher's weights (subclone.py; {plan.init_reason}): "
            f"teacher layers {kept}, its most used dimensions")
    elif not continuing:
        log(f"[general] student from BERT's random init ({plan.init_reason})")
    w = loss_weights(config)
    check_pair(teacher, student, w)
    log(f"[general] mapping {describe_mapping(plan.mapping)}")
    runner = DataParallel(student, config.workers, world)
    corpus = CorpusBatcher(corpus_dir(config), plan.tokenizer, seq_len=config.general_seq_len,
                           batch_size=config.batch_size, seed=config.seed, shards=runner.shards,
                           streaming=config.corpus_streaming, column=config.corpus_column,
                           segments=config.general_segments)
    details = {"teacher_dir": str(plan.teacher_dir), "corpus_dir": str(corpus_dir(config)), "student": config.student,
               "shards": runner.shards.total}
    cycles = found.get("cycles", []) if found else []
    world.root_call(write_record, plan.directory, plan.recipe, found["steps"] if found else 0, False,
                    cycles=cycles, **details)
    state = train_stage(config, "general", student, config.general_steps, config.general_lr, corpus,
                        lambda batch, rng, **k: intermediate_step(teacher, student, batch, rng, plan.mapping, w, **k),
                        vocab_from=plan.teacher_dir, log=log, runner=runner, directory=plan.directory)
    if not state.done:
        return None
    cycles = cycles + [state.step] if not cycles or cycles[-1] != state.step else cycles
    for where in (plan.directory, plan.directory / "final"):
        record = world.root_call(write_record, where, plan.recipe, state.step, True, cycles=cycles,
                                 **details)
    log(f"[general] general student ready in {plan.directory / 'final'}: {describe(record)}")
    return plan.directory / "final"


SUBCLONE_SAMPLES = 2      # batches of the general corpus the teacher's hidden dimensions are ranked on

def subclone_start(config: RunConfig, plan, teacher: Bert) -> np.ndarray:
    """The student's weights taken from the teacher's (subclone.py), ranked on batches of its own
    corpus reader (the training batches are not consumed)."""
    samples = CorpusBatcher(corpus_dir(config), plan.tokenizer, seq_len=config.general_seq_len, batch_size=8,
                            seed=config.seed, streaming=config.corpus_streaming, column=config.corpus_column,
                            segments=config.general_segments)
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


def general_plan(config: RunConfig, log=print) -> GeneralPlan:
    """The general student this command's settings make: its recipe, and the directory it lives in
    (--general-dir, else <parent of --out>/general/<student>-<fingerprint>)."""
    with get_world().root_first():      # one download, then the others find it
        teacher_dir = resolve_teacher(config.teacher)
    teacher_config = BertConfig.from_json(teacher_dir)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    student = student_config(config, teacher_config)
    mapping = layer_mapping(student.num_hidden_layers, teacher_config.num_hidden_layers, config.mapping)
    init, why = subclone.resolve_mode(config.student_init, teacher_config, student)
    settings = {"seq_len": config.general_seq_len, "batch_size": config.batch_size, "lr": config.general_lr,
                "warmup": config.warmup, "weight_decay": config.weight_decay, "max_grad_norm": config.max_grad_norm,
                "seed": config.seed, "mapping": mapping, "corpus_streaming": config.corpus_streaming,
                "corpus_column": config.corpus_column,
                **({"segments": 2} if config.general_segments == 2 else {}),   # recipes before pairs: 1 segment
                **({"student_init": init} if init != "random" else {}),     # random: as recipes before it
                "loss_weights": {"embedding": config.w_embedding, "hidden": config.w_hidden,
                                 "attention": config.w_attention}}
    recipe = get_world().root_call(make_recipe, checkpoint_file(teacher_dir), teacher_config.to_dict(),
                                   tokenizer.fingerprint(), student.to_dict(), corpus_dir(config), settings)
    if config.general_dir:
        directory = Path(config.general_dir)
    elif (Path(config.out) / "general" / "last").exists():
        directory = Path(config.out) / "general"     # a run made before general students were shared
        log(f"[general] using the general stage in {directory} (made inside this run's directory)")
    else:
        directory = default_dir(config.out, config.student, recipe)
    return GeneralPlan(teacher_dir, tokenizer, student, mapping, recipe, fingerprint(recipe), directory,
                       init, why)


def general_student_dir(config: RunConfig, log=print) -> Path | None:
    """The general student the task stage starts from: --general-student (a checkpoint, or a general
    run directory holding final/), else the one general_plan finds for these settings; None for
    --general-student scratch (a student from BERT's init)."""
    if is_scratch(config):
        return None
    if config.general_student:
        path = checkpoint_of(config.general_student)
        if not path.exists():
            raise FileNotFoundError(f"general student not found at {path}")
        return path
    plan = general_plan(config, log)
    path = plan.directory / "final"
    if not path.exists():
        raise FileNotFoundError(f"general student not found at {path}: run the 'general' stage first (or 'all'), "
                                f"or pass --general-student DIR")
    return path


def is_scratch(config: RunConfig) -> bool:
    """--general-student scratch: no general student, BERT's init."""
    return config.general_student == "scratch"
