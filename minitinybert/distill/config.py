"""The run configuration: every setting of a distillation run, typed, frozen, built once.

`python -m minitinybert.distill` parses its flags into a RunConfig (cli.py) and hands it to the
stages (stages.py), which read it and nothing else. A program builds one the same way, or directly:

    config = RunConfig(command="task", task="rte", out="runs/rte", workers=2)
    stages.run_task(config)

The fields are the command line's options (`--general-steps` is `general_steps`), with the same
defaults; None where the recipe decides by task (recipe.py) or the run's directory by its data.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class RunConfig:
    command: str = "all"                   # finetune-teacher, general, task, all, summary, embed
    # data and models
    task: str | None = None
    data: str | None = None
    dataset: str | None = None
    config: str | None = None              # --dataset's configuration
    train_split: str | None = None
    dev_split: str | None = None
    token_cache: str | None = None
    teacher: str | None = None
    student: str = "tinybert4"
    out: str | None = None
    finetuned_teacher: str | None = None
    teacher_init: str | None = None
    general_student: str | None = None
    general_dir: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    text_column: str | None = None
    pair_column: str | None = None
    label_column: str | None = None
    labels: str | None = None
    name: str | None = None
    regression: bool = False
    corpus: str | None = None
    corpus_column: str = "text"
    corpus_streaming: bool = False
    # training
    batch_size: int = 32
    workers: int | None = None
    length_window: int = 100
    max_length: int | None = None
    general_seq_len: int = 128
    general_segments: int = 2
    student_init: str = "auto"
    teacher_steps: int | None = None
    general_steps: int = 800
    intermediate_steps: int | None = None
    prediction_steps: int | None = None
    teacher_lr: float | None = None
    general_lr: float = 5e-4
    intermediate_lr: float = 2e-4
    prediction_lr: float = 1e-4
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    train_limit: int | None = None
    seed: int = 0
    # distillation
    w_embedding: float = 1.0
    w_hidden: float = 1.0
    w_attention: float = 1.0
    w_prediction: float = 1.0
    w_hard: float = 0.0
    temperature: float = 1.0
    skip_intermediate: bool = False
    regression_target: str = "teacher"
    mapping: tuple[int, ...] | None = None
    shared_projection: bool = False
    # augmentation
    n_aug: int | None = None
    augment_p: float = 0.4
    augment_limit: int | None = None
    candidates: str = "auto"
    augment_cache: str | None = None
    # the embedding stage (`embed`; defaults: the measured run of docs/embeddings.md)
    embed_objective: str = "cosine"        # cosine or mse
    embed_steps: int = 1200
    embed_lr: float = 3e-4
    embed_seq_len: int = 32
    embed_rows: str = "lines"              # lines (a line a row) or packed (lines packed into sequences)
    embed_texts: str = "auto"              # GLUE tasks whose training sentences join the corpus; auto, none
    w_sentence: float = 1.0
    embed_layers: float = 0.0
    sts_file: str | None = None
    eval_limit: int | None = None
    embed_eval_every: int = 300
    # checkpoints
    resume: bool = False
    save_every: int = 100
    eval_every: int = 100
    stop_after: int | None = None

    @classmethod
    def from_namespace(cls, namespace) -> RunConfig:
        """From parsed flags (argparse's Namespace): every field from the attribute of its name."""
        values = {f.name: getattr(namespace, f.name) for f in fields(cls) if hasattr(namespace, f.name)}
        if values.get("mapping") is not None:
            values["mapping"] = tuple(values["mapping"])
        return cls(**values)

    def replace(self, **changes) -> RunConfig:
        return replace(self, **changes)
