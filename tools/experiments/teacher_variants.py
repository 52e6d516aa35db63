"""Teacher fine-tuning with one thing changed: the recipe variants the README measured against the
default and did not adopt, kept so that their rows can be run again.

    python -m tools.experiments.teacher_variants VARIANT [finetune-teacher flags ...]

Variants (each runs `python -m minitinybert.distill finetune-teacher` with the other flags):
  pooler-identity  all-MiniLM-L6-v2's pooler was never trained (its bias is all zero, its weight
                   small noise); it starts as the identity instead, so the head first sees [CLS].
                   The teacher with that pooler is written to a scratch directory and given to
                   distill as --teacher-init (its encoder and pooler, a new head from --seed): the
                   default run's start but for the pooler.

Removed: three variants changed what the package computes from inside (its pooling, its optimizer,
the weights it evaluates), which only patching the package's internals could do, and the package
offers no hook for them. Each last ran at commit c6e7ebb (tools/teacher_variants.py there):
  mean-pooling     the head reads the mean of the last layer's hidden states over the real tokens
                   (the pooling sentence-transformers trained this teacher with), not [CLS]
  ema              the dev evaluations, and best/, on the exponential moving average of the weights
  llrd             layer-wise learning rates: the embeddings and layer l of L at factor^(L-l) of the
                   peak rate
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from minitinybert import distill
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.engine.weights import load_model, save_checkpoint

VARIANTS = ("pooler-identity",)


def identity_pooler_teacher(teacher_dir: Path, directory: Path) -> Path:
    """The pre-trained teacher of `teacher_dir`, its untrained pooler made the identity, saved in `directory`."""
    bert = load_model(teacher_dir)
    if bert.config.num_labels:
        raise SystemExit(f"{teacher_dir} has a task head: pooler-identity starts from the pre-trained teacher")
    weight, bias = bert.params["pooler.dense.weight"], bert.params["pooler.dense.bias"]
    if np.any(bias):
        raise SystemExit(f"{teacher_dir}: its pooler was trained (its bias is not all zero); pooler-identity "
                         f"replaces an untrained one")
    weight[...] = np.eye(weight.shape[0], dtype=weight.dtype)
    return save_checkpoint(bert, directory, vocab_from=teacher_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="other flags go to `python -m minitinybert.distill finetune-teacher`")
    parser.add_argument("variant", choices=VARIANTS)
    args, rest = parser.parse_known_args(argv)
    recipe = distill.build_parser().parse_args(["finetune-teacher", *rest])   # bad flags fail before any work
    if recipe.teacher_init:
        parser.error("pooler-identity sets --teacher-init itself: leave it out")
    print(f"[teacher variant] {args.variant}: the untrained pooler starts as the identity", flush=True)
    # a fresh copy for every sitting: the same teacher gives the same copy, so --resume stays exact
    with tempfile.TemporaryDirectory(prefix="pooler-identity-") as scratch:
        start = identity_pooler_teacher(resolve_teacher(recipe.teacher), Path(scratch) / "teacher")
        return distill.main(["finetune-teacher", *rest, "--teacher-init", str(start)])


if __name__ == "__main__":
    sys.exit(main())
