"""The teacher's fine-tuning again in Hugging Face transformers (PyTorch eager), on the same batches:
is the teacher's SST-2 plateau (~89.5% dev accuracy) this package's or the model's?

Everything but the implementation is the package's: its task data, tokenizer, max length and
length-grouped batches in the same order (TaskBatches, same seed), and its recipe (AdamW with
betas 0.9/0.999, eps 1e-6, weight decay 0.01 on all but biases and LayerNorm; linear warm-up over
--warmup of the steps, then linear decay to 0; gradient norm clipped to 1; dropout 0.1). The model
is transformers' BertForSequenceClassification loaded from the teacher's directory, trained with
torch autograd and torch.optim.AdamW; its new head starts from torch's random numbers. Dev metrics
every --eval-every steps go to <--out>/teacher/log.jsonl, in the records of the package's own
log.jsonl, so that tools/reports/compare_evals.py reads the two side by side.

PyTorch and transformers are installed apart (never dependencies of the package):
    python3 -m venv --system-site-packages /tmp/torchenv && \
        /tmp/torchenv/bin/pip install torch==2.13.0 transformers
    /tmp/torchenv/bin/python -m tools.reference.finetune --task sst2 --workers 1 --seed 0 --out runs/ref/s0
    python -m tools.reports.compare_evals runs/ref/s0/teacher runs/v/default0/teacher

The other flags are `python -m minitinybert.distill finetune-teacher`'s (the recipe ones apply; --workers
sets torch's threads).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import BertForSequenceClassification

from minitinybert.data.batches import TaskBatches, predict_logits
from minitinybert.data.metrics import evaluate
from minitinybert.data.token_cache import token_table
from minitinybert.distill import build_parser, common_setup, load_dev_sets, stage_steps, task_max_length, task_teacher_lr
from minitinybert.engine.optim import linear_schedule


def tensors(input_ids, token_type_ids, attention_mask) -> dict:
    return {"input_ids": torch.from_numpy(input_ids.astype(np.int64)),
            "token_type_ids": torch.from_numpy(token_type_ids.astype(np.int64)),
            "attention_mask": torch.from_numpy(attention_mask.astype(np.int64))}


class AsPackageModel:
    """The torch model behind the package's `forward(...).logits` (NumPy, no gradients), so that the
    package's own `predict_logits` evaluates it as it evaluates a `Bert`."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    @torch.no_grad()
    def forward(self, input_ids, token_type_ids, attention_mask):
        return SimpleNamespace(logits=self.model(**tensors(input_ids, token_type_ids, attention_mask)).logits.numpy())


def dev_metrics(model, task, examples, tokenizer, max_length: int, table) -> dict:
    """The task's dev metrics of `model` in eval mode (dropout off)."""
    model.eval()
    logits = predict_logits(AsPackageModel(model), examples, tokenizer, max_length, tokens=table)
    model.train()
    return {k: float(v) for k, v in evaluate(task, logits, examples.labels).items()}


def optimizer_for(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch AdamW with the package's decay mask: no weight decay on biases and LayerNorm."""
    decayed, plain = [], []
    for name, p in model.named_parameters():
        (plain if name.endswith(".bias") or "LayerNorm" in name else decayed).append(p)
    return torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-6)


def main(argv=None) -> int:
    args = build_parser().parse_args(["finetune-teacher", *(sys.argv[1:] if argv is None else argv)])
    if not args.out:
        raise SystemExit("reference_finetune.py: give --out DIR (the log goes to DIR/teacher/log.jsonl)")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.workers or torch.get_num_threads())

    task, teacher_dir, tokenizer, load_examples = common_setup(args)
    if task.labels is None:
        raise SystemExit("reference_finetune.py: classification tasks only")
    train_set, dev = load_examples("train", limit=args.train_limit), load_dev_sets(task, load_examples)["dev"]
    max_length, steps, peak = task_max_length(args, task), stage_steps(args, task, "teacher"), task_teacher_lr(args, task)
    batches = TaskBatches(train_set, tokenizer, args.batch_size, max_length, args.seed, window=args.length_window)
    dev_table = token_table(dev, tokenizer, max_length)

    model = BertForSequenceClassification.from_pretrained(str(teacher_dir), num_labels=len(task.labels))
    model.train()
    print(f"[reference] transformers BertForSequenceClassification from {teacher_dir} on {task.name}: "
          f"{len(train_set)} examples, {steps} steps of {args.batch_size}, lr {peak:g}, seed {args.seed}",
          flush=True)
    opt = optimizer_for(model, peak, args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_schedule(s, steps, args.warmup))
    log_path = Path(args.out) / "teacher" / "log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        def record(entry: dict) -> None:
            log.write(json.dumps(entry) + "\n")
            log.flush()
        run(args, task, model, batches, (dev, tokenizer, max_length, dev_table), steps, opt, schedule, record)
    return 0


def run(args, task, model, batches, dev, steps: int, opt, schedule, record) -> None:
    """`steps` optimizer steps, dev metrics every --eval-every (the first best kept, as the package does)."""
    best, start, losses = (-math.inf, 0), time.perf_counter(), []
    for step in range(1, steps + 1):
        step_start = time.perf_counter()
        batch, labels = next(batches)[:2]
        inputs = tensors(batch.input_ids, batch.token_type_ids, batch.attention_mask)
        loss = model(**inputs, labels=torch.from_numpy(np.asarray(labels, np.int64))).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        record({"step": step, "loss": losses[-1], "seconds": time.perf_counter() - step_start})
        if step % args.eval_every == 0 or step == steps:
            metrics = dev_metrics(model, task, *dev)
            if metrics["main"] > best[0]:
                best = (metrics["main"], step)
            record({"step": step, "eval": metrics})
            print(f"[reference] step {step}: loss (last 100) {np.mean(losses[-100:]):.4f}, dev {task.main_metric} "
                  f"{metrics['main']:.4f}  ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    print(f"[reference] best dev {task.main_metric} {best[0]:.4f} at step {best[1]}", flush=True)
    record({"best": best[0], "best_step": best[1]})


if __name__ == "__main__":
    sys.exit(main())
