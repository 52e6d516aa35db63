"""Does a classifier student collapse to one class? Dev-set diagnosis of checkpoints on a GLUE task.

    python -m tools.experiments.diagnose_student --task rte teacher=runs/rte/teacher/best student=runs/rte/task-prediction/best

For each checkpoint: accuracy, how many dev examples it puts in each class, the spread of its logit
margin (z1 - z0) and its correlation with the first checkpoint's (the teacher's), and how much its
final [CLS] vector varies across inputs (std across examples / RMS of the mean vector; a student whose
[CLS] barely moves cannot separate classes, whatever its head). Single-task, 2-class or regression.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from minitinybert.data.batches import iterate_batches, predict_logits
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.distill import build_parser, task_loader, task_max_length
from minitinybert.engine.weights import load_model


def cls_spread(model, examples, tokenizer, max_length: int, n: int = 64) -> float:
    subset = examples.subset(np.arange(min(n, len(examples))))
    batch, _ = next(iterate_batches(subset, tokenizer, len(subset), max_length))
    cls = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).hidden_states[-1][:, 0]
    return float(cls.std(0).mean() / np.sqrt((cls.mean(0) ** 2).mean()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("checkpoints", nargs="+", help="name=checkpoint directory; the first is the reference")
    args = parser.parse_args()
    task_args = build_parser().parse_args(["task", "--task", args.task] + (["--data", args.data] if args.data else []))
    task, load = task_loader(task_args, log=lambda *a: None)
    dev, max_length = load("dev"), task_max_length(task_args, task)
    reference = None
    for spec in args.checkpoints:
        name, path = spec.split("=", 1)
        model = load_model(path)
        tokenizer = Tokenizer.from_dir(path)
        logits = predict_logits(model, dev, tokenizer, max_length)
        spread = cls_spread(model, dev, tokenizer, max_length)
        if logits.shape[1] == 1:
            print(f"{name}: prediction mean {logits.mean():+.3f} std {logits.std():.3f}, [CLS] spread {spread:.3f}")
            continue
        predicted = logits.argmax(1)
        margin = logits[:, 1] - logits[:, 0]
        reference = margin if reference is None else reference
        corr = np.corrcoef(margin, reference)[0, 1] if margin is not reference and margin.std() > 0 else float("nan")
        print(f"{name}: accuracy {(predicted == dev.labels).mean():.4f}, predicted classes "
              f"{np.bincount(predicted, minlength=logits.shape[1]).tolist()} (gold "
              f"{np.bincount(dev.labels.astype(int), minlength=logits.shape[1]).tolist()}), margin mean "
              f"{margin.mean():+.3f} std {margin.std():.3f}, corr with {args.checkpoints[0].split('=')[0]} "
              f"{corr:+.3f}, [CLS] spread {spread:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
