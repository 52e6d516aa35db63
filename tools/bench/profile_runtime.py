"""Where runtime.py's forward pass spends its time at one input shape: timers around each step.

    python -m tools.bench.profile_runtime MODEL.safetensors [--tokens 8] [--batch 1] [--threads 1] [--runs 500]

Wraps the products (float32 BLAS or the int8 path), the softmax, the layer norms, bias+GELU and the
embedding-row reads of a loaded model, runs the forward pass `--runs` times (the last layer for
[CLS] only, as predict() does) and prints the milliseconds per pass in each, then the median and
10th percentile of the unwrapped pass. The timers cost a little: compare shares, not sums.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np

from minitinybert import runtime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args(argv)
    model = runtime.load(args.model, threads=args.threads)
    ids = np.full((args.batch, args.tokens), 2023)
    ids[:, 0], ids[:, -1] = 101, 102
    model.forward(ids, hidden=False)                      # settles the kernels, grows the buffers
    spent = collections.Counter()

    def timed(owner, name, label):
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            result = inner(*a, **k)
            spent[label] += time.perf_counter() - t0
            return result
        setattr(owner, name, wrapper)
        return inner

    kernels = model._kernels
    originals = [(model, "_product", timed(model, "_product", "products (weights)"))]
    originals += [(kernels, n, timed(kernels, n, n)) for n in ("softmax", "add_layernorm", "bias_gelu")]
    originals.append((runtime, "_embedding_rows", timed(runtime, "_embedding_rows", "embedding rows")))
    t0 = time.perf_counter()
    for _ in range(args.runs):
        model.forward(ids, hidden=False)
    total = (time.perf_counter() - t0) / args.runs
    for owner, name, inner in originals:
        setattr(owner, name, inner)
    print(f"{args.batch}x{args.tokens}, threads={args.threads}, kernels {model.kernels}: "
          f"{total * 1e3:.2f} ms a pass with the timers")
    for label, seconds in spent.most_common():
        print(f"  {label:20s} {seconds / args.runs * 1e3:7.3f} ms  {seconds / args.runs / total:6.1%}")
    rest = total - sum(spent.values()) / args.runs
    print(f"  {'the rest':20s} {rest * 1e3:7.3f} ms  {rest / total:6.1%}  (attention products, reshapes, Python)")
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        model.forward(ids, hidden=False)
        times.append(time.perf_counter() - t0)
    print(f"without timers: median {np.median(times) * 1e3:.2f} ms, p10 {np.percentile(times, 10) * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
