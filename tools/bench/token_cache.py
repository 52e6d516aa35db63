"""What the token cache saves on SST-2: tokenizing the 67,349 training sentences against reading
their Arrow file.

    python -m tools.bench.token_cache [--data DIR] [--teacher DIR] [--repeat 3] [--work DIR]

Tokenizer: the default teacher's (all-MiniLM-L6-v2's vocabulary), max length 64 as the pipeline's
SST-2 default. The peers, measured in the same run: the tokenizer over all sentences in memory
(what a stage pays at its start without the cache: the length pass that length-grouped batching
needs), and over one epoch in batches of 32 (what TaskBatches paid before the cache, every epoch
of every stage, on top of that pass). Each figure is the median of --repeat runs, in wall-clock
seconds and in CPU seconds of the process (all its threads): on a shared machine the second says
what the work costs, the first what one waited.

The teacher and task stages' start-up with an empty and a filled cache (the README's figures) was
measured by stopping distill's stages where their training loop began, which takes distill's
internals, not its public API; it last ran at commit c6e7ebb (tools/bench_token_cache.py there).
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

from minitinybert.data.task_files import load_split
from minitinybert.data.token_cache import token_table, tokenize_in_memory
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.engine.teacher import resolve_teacher


class Clock:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = (time.perf_counter() - self.wall, time.process_time() - self.cpu)


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
    times = {k: [] for k in ("map", "read", "memory", "epoch")}
    print(f"SST-2 train: {len(train)} sentences, max length 64, vocabulary of {teacher_dir}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

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
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
