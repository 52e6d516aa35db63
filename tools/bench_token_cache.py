"""What the token cache saves on SST-2: tokenizing the 67,349 training sentences against reading
their Arrow file, and each task stage's start-up (from the stage's call to its first training
step: models, examples, token ids of the training and dev sets) with an empty and a filled cache.

    python tools/bench_token_cache.py [--data DIR] [--teacher DIR] [--repeat 3] [--work DIR]

Tokenizer: the default teacher's (all-MiniLM-L6-v2's vocabulary), max length 64 as the pipeline's
SST-2 default. The peers, measured in the same run: the tokenizer over all sentences in memory
(what a stage pays at its start without the cache: the length pass that length-grouped batching
needs), and over one epoch in batches of 32 (what TaskBatches paid before the cache, every epoch
of every stage, on top of that pass). The task
stage's start-up: the first 6,000 training examples and --n-aug 4 copies of each (duplicates
dropped; embedding candidates, the augmentation made once beforehand and read from its cache, not
measured), stand-in checkpoints (the weights do not change the start-up). Each figure is the median of --repeat runs, in wall-clock seconds and
in CPU seconds of the process (all its threads): on a shared machine the second says what the work
costs, the first what one waited.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minitinybert import distill  # noqa: E402
from minitinybert.datafiles import load_split  # noqa: E402
from minitinybert.teacher import resolve_teacher  # noqa: E402
from minitinybert.tokenizer import Tokenizer  # noqa: E402
from minitinybert.tokens import token_table, tokenize_in_memory  # noqa: E402
from minitinybert.weights import load_model, save_checkpoint  # noqa: E402


class StartedTraining(Exception):
    """Raised where the stage would start its first step."""


class Clock:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = (time.perf_counter() - self.wall, time.process_time() - self.cpu)


def stage_startup(argv: list[str], said: list | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds from the stage's call to its first `_train_stage` (the loop's first step);
    the stage's log lines go to `said`."""
    real = distill._train_stage

    def stop(*args, **kwargs):
        raise StartedTraining
    args = distill.build_parser().parse_args(argv)
    run = {"finetune-teacher": distill.run_finetune_teacher, "task": distill.run_task}[args.command]
    distill._train_stage = stop
    try:
        with Clock() as clock:
            try:
                run(args, log=(said.append if said is not None else lambda *a: None))
            except StartedTraining:
                pass
            else:
                raise RuntimeError("the stage never reached its training loop")
        return clock.seconds
    finally:
        distill._train_stage = real


def median(values) -> tuple[float, float]:
    return statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MINITINYBERT_DATA"))
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("pass --data DIR (holding glue/SST-2) or set MINITINYBERT_DATA")
    teacher_dir = resolve_teacher(args.teacher, log=lambda *a: None)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    train = load_split("sst2", "train", args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-token-cache-"))
    work.mkdir(parents=True, exist_ok=True)
    times = {k: [] for k in ("map", "read", "memory", "epoch", "teacher cold", "teacher warm", "task cold",
                             "task warm")}
    print(f"SST-2 train: {len(train)} sentences, max length 64, vocabulary of {teacher_dir}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    # stand-ins for the task stage's checkpoints, and its augmentation cached once
    ckpt = work / "checkpoints"
    base = ["--data", args.data, "--teacher", str(teacher_dir), "--task", "sst2"]
    if not (ckpt / "teacher").exists():
        save_checkpoint(load_model(teacher_dir, num_labels=2), ckpt / "teacher", vocab_from=teacher_dir)
        probe = distill.build_parser().parse_args(["task", *base, "--out", str(work / "x")])
        teacher = load_model(teacher_dir)
        save_checkpoint(distill.new_student(probe, teacher.config, log=lambda *a: None), ckpt / "general",
                        vocab_from=teacher_dir)
    task_args = ["task", *base, "--out", str(work / "run"), "--finetuned-teacher", str(ckpt / "teacher"),
                 "--general-student", str(ckpt / "general"), "--augment-limit", "6000", "--n-aug", "4",
                 "--candidates", "embedding"]
    print("augmenting 6000 examples x 4 once (cached, not measured) ...", flush=True)
    said = []
    stage_startup([*task_args, "--token-cache", "off"], said)
    print(next(line for line in said if "training examples" in line), flush=True)

    for round_ in range(args.repeat):
        cache = work / f"tokens-{round_}"
        shutil.rmtree(cache, ignore_errors=True)
        with Clock() as clock:
            token_table(train, tokenizer, 64, cache)
        times["map"].append(clock.seconds)
        with Clock() as clock:
            token_table(train, tokenizer, 64, cache)
        times["read"].append(clock.seconds)
        with Clock() as clock:
            tokenize_in_memory(train, tokenizer, 64)
        times["memory"].append(clock.seconds)
        with Clock() as clock:
            for lo in range(0, len(train), 32):
                tokenizer.encode(train.texts[lo:lo + 32], max_length=64)
        times["epoch"].append(clock.seconds)
        stages = work / f"stages-{round_}"
        shutil.rmtree(stages, ignore_errors=True)
        teacher_args = ["finetune-teacher", *base, "--out", str(work / "run-teacher"), "--token-cache", str(stages)]
        times["teacher cold"].append(stage_startup(teacher_args))
        times["teacher warm"].append(stage_startup(teacher_args))
        times["task cold"].append(stage_startup([*task_args, "--token-cache", str(stages)]))
        times["task warm"].append(stage_startup([*task_args, "--token-cache", str(stages)]))
        print(f"round {round_ + 1} (wall/CPU s): " + ", ".join(f"{k} {v[-1][0]:.2f}/{v[-1][1]:.2f}"
                                                              for k, v in times.items()), flush=True)

    m = {k: median(v) for k, v in times.items()}
    print(f"\nmedian of {args.repeat}, wall / CPU seconds (load average now {os.getloadavg()[0]:.1f}):")
    rows = [("tokenizing 67,349 sentences with Dataset.map into the Arrow cache", "map"),
            ("reading them back from the cache", "read"),
            ("peer: the tokenizer over all of them in memory", "memory"),
            ("peer: one epoch in batches of 32 (TaskBatches per epoch before the cache)", "epoch")]
    for label, key in rows:
        print(f"  {label:<74} {m[key][0]:6.2f} / {m[key][1]:6.2f}")
    print(f"  cache read against Dataset.map: {m['map'][0] / m['read'][0]:.0f}x less wall, "
          f"{m['map'][1] / m['read'][1]:.0f}x less CPU")
    for stage in ("teacher", "task"):
        cold, warm = m[f"{stage} cold"], m[f"{stage} warm"]
        print(f"  {stage + ' stage start-up':<22} empty cache {cold[0]:6.2f} / {cold[1]:6.2f}, filled "
              f"{warm[0]:6.2f} / {warm[1]:6.2f}: saved {cold[0] - warm[0]:5.2f} / {cold[1] - warm[1]:5.2f} "
              f"({cold[0] / warm[0]:.1f}x / {cold[1] / warm[1]:.1f}x)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
