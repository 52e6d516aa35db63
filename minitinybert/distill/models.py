"""The models a stage starts from: the teacher (fine-tuned, or started from another task's), the
student (a general student with a task head, or BERT's init), checked to fit each other.
"""
from __future__ import annotations

from pathlib import Path

from ..data.tokenizer import Tokenizer
from ..engine.config import BertConfig, ConfigError
from ..engine.files import sha256_of
from ..engine.model import Bert
from ..engine.weights import checkpoint_file, load_model
from . import general
from .config import RunConfig
from .recipe import labels_of, stage_dir, student_config, with_labels


def teacher_from_another_task(init_dir, teacher_dir: Path, tokenizer: Tokenizer, task, seed: int, log) -> Bert:
    """The encoder and pooler of `init_dir` (the teacher fine-tuned on another task), with a new head:
    an intermediate task before the target one (Phang et al., "STILTs", arXiv 1811.01088). It must be
    the --teacher fine-tuned: the same architecture and vocabulary."""
    init_dir = Path(init_dir)
    if not init_dir.exists():
        raise FileNotFoundError(f"--teacher-init: checkpoint directory not found: {init_dir}")
    start = load_model(init_dir, num_labels=labels_of(task), seed=seed, log=log, keep_head=False)
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    teacher_config = BertConfig.from_json(teacher_dir)
    differs = [k for k in shape if getattr(start.config, k) != getattr(teacher_config, k)]
    if differs or Tokenizer.from_dir(init_dir).fingerprint() != tokenizer.fingerprint():
        raise ConfigError(f"--teacher-init {init_dir} is not the teacher fine-tuned on another task: its "
                          f"{', '.join(differs) or 'vocabulary'} differ{'s' if len(differs) < 2 else ''} "
                          f"from the teacher's")
    log(f"[teacher] starting from the encoder of {init_dir} (its task head dropped, a new one for {task.name})")
    return start


def new_student(config: RunConfig, teacher_config: BertConfig, log=print, num_labels: int = 0) -> Bert:
    """A student from scratch (BERT's seeded init, --general-student scratch), with TinyBERT's
    projections to the teacher's width."""
    student_cfg = student_config(config, teacher_config).replace(num_labels=num_labels)
    student = Bert(student_cfg, seed=config.seed)
    log(f"student {config.student} from scratch: {student_cfg.num_hidden_layers} layers, hidden "
        f"{student_cfg.hidden_size}, {student.num_parameters / 1e6:.1f}M parameters (with projections)")
    return student


def task_teacher_and_student(config: RunConfig, task, general_ckpt: Path, teacher_dir: Path, log) -> tuple[Bert, Bert]:
    """The fine-tuned teacher and the general student (its task head added), checked to fit the task."""
    teacher_ckpt = Path(config.finetuned_teacher) if config.finetuned_teacher else stage_dir(config, "teacher") / "best"
    scratch = general_ckpt is None
    if not teacher_ckpt.exists():
        raise FileNotFoundError(f"fine-tuned teacher not found at {teacher_ckpt}: run the 'finetune-teacher' "
                                f"stage first, or pass its path")
    record = None if scratch else general.read_record(general_ckpt)
    if record is not None and record["recipe"]["teacher"]["weights_sha256"] != sha256_of(checkpoint_file(teacher_dir)):
        log(f"[task] warning: the general student {general_ckpt} was distilled from another teacher than "
            f"{teacher_dir} (this task's teacher before fine-tuning)")
    teacher = load_model(teacher_ckpt, log=log)
    if teacher.config.num_labels != labels_of(task):
        raise ConfigError(f"the teacher at {teacher_ckpt} has a {teacher.config.num_labels}-output head; task "
                          f"{task.name} needs {labels_of(task)}: fine-tune the teacher on this task first")
    if scratch:   # no general distillation: BERT's seeded init, with the projections to the teacher
        student = new_student(config, teacher.config, log, num_labels=labels_of(task))
    else:
        student = load_model(general_ckpt, num_labels=labels_of(task), seed=config.seed, log=log)
    student.config = with_labels(student.config, task)
    if not student.config.fit_size:
        raise ConfigError(f"{general_ckpt} has no fit_dense projections: it is not a general-distillation student")
    return teacher, student
