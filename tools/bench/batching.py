"""Random against length-grouped batches for one SST-2 epoch of teacher fine-tuning, in the same run:
tokens computed against real tokens, attention work, and seconds.

    OMP_NUM_THREADS=2 MINITINYBERT_DATA=../shared/data python -m tools.bench.batching [--steps N]

Token counts cover the whole epoch (the batches as `distill finetune-teacher` draws them for epoch 0,
teacher tokenizer, max length 64, batch 32). Seconds: training steps of the teacher as the stage runs
them (drawing and tokenizing the batch, forward and backward in --workers shards, clipping, AdamW),
random and grouped alternated step by step on the same model, after two untimed warm-up steps each.
Without --steps, the whole epoch of each (about 20 minutes on 2 cores); with --steps N, the first N
batches of each stream, and the epoch's seconds projected as seconds per batch times the epoch's
batches (the first N batches of an epoch are a random sample of its batches, in both streams).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from minitinybert.data.batches import DEFAULT_WINDOW, TaskBatches
from minitinybert.data.task_files import load_split
from minitinybert.data.tasks import get_task
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.distill import finetune_step
from minitinybert.engine.optim import AdamW, clip_grad_norm
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.engine.weights import load_model
from minitinybert.training.parallel import DataParallel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="timed steps of each stream (default: the whole epoch)")
    ap.add_argument("--data", default=None, help="data directory (default $MINITINYBERT_DATA)")
    ap.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="grouping window in batches")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    teacher_dir = resolve_teacher(None)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    train = load_split(get_task("sst2"), "train", args.data)
    lengths = tokenizer.lengths(train.texts, None, args.max_length)
    streams = {"random": TaskBatches(train, tokenizer, args.batch_size, args.max_length, args.seed, window=0),
               "grouped": TaskBatches(train, tokenizer, args.batch_size, args.max_length, args.seed,
                                      window=args.window)}
    per_epoch = streams["random"].per_epoch
    steps = per_epoch if args.steps is None else min(args.steps, per_epoch)
    real, real_attention = int(lengths.sum()), int((lengths ** 2).sum())
    print(f"SST-2 train: {len(train)} examples, {real} real tokens at max length {args.max_length}; "
          f"{per_epoch} batches of {args.batch_size} an epoch; grouping window {args.window} batches")

    counts = {}
    for name, stream in streams.items():
        batches = stream.epoch_batches(0)
        widths = np.array([lengths[b].max() for b in batches])
        rows = np.array([len(b) for b in batches])
        first = slice(0, 10)
        counts[name] = {"computed": int((rows * widths).sum()), "attention": int((rows * widths ** 2).sum()),
                        "first10": (rows[first] * widths[first]).sum() / sum(lengths[b].sum() for b in batches[first])}

    model = load_model(teacher_dir, num_labels=2, seed=args.seed)
    runner = DataParallel(model, args.workers)
    optimizer = AdamW(model.params, lr=1e-5)
    rng = np.random.default_rng(args.seed)

    def train_step(stream) -> float:
        t0 = time.perf_counter()
        batch, labels = next(stream)
        runner(lambda b, r, **k: finetune_step(model, b[0], b[1], r, **k), (batch, labels), rng)
        clip_grad_norm(model.grads.data, 1.0)
        optimizer.step(model.grads.data)
        return time.perf_counter() - t0

    for stream in streams.values():          # warm-up (kernel compilation, allocator), then a fresh epoch
        train_step(stream), train_step(stream)
        stream.load_state_dict(stream.state_dict() | {"epoch": 0, "index": 0})
    seconds = {name: 0.0 for name in streams}
    for step in range(steps):
        order = list(streams) if step % 2 == 0 else list(streams)[::-1]      # A B, B A, ...: drift cancels
        for name in order:
            seconds[name] += train_step(streams[name])
        if (step + 1) % 50 == 0:
            print(f"  {step + 1}/{steps} steps: random {seconds['random']:.1f} s, grouped {seconds['grouped']:.1f} s",
                  flush=True)
    runner.close()

    projected = "" if steps == per_epoch else " (projected)"
    print(f"\n| batches | tokens computed | computed / real | first 10 steps | attention work / real's | "
          f"seconds, {steps} steps | s/step | epoch seconds{projected} |")
    print("|---|---|---|---|---|---|---|---|")
    for name in streams:
        c = counts[name]
        print(f"| {name} | {c['computed'] / 1e6:.2f}M | {c['computed'] / real:.3f} | {c['first10']:.3f} | "
              f"{c['attention'] / real_attention:.2f} | {seconds[name]:.1f} | {seconds[name] / steps:.3f} | "
              f"{seconds[name] / steps * per_epoch:.0f} |")
    print(f"\ngrouped against random: {counts['random']['computed'] / counts['grouped']['computed']:.2f}x fewer tokens "
          f"computed, {seconds['random'] / seconds['grouped']:.2f}x faster per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
