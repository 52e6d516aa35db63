"""What this host does with the distillation step's pieces, one thread each: why a step can reach a
smaller share of the 2-thread matmul rate on one host than on another.

Prints, in one run:
  - the 2-thread float32 matmul rate (the figure every benchmark divides by: 4096 x 768 @ 768 x 1536);
  - one-thread GEMM rates at the step's shapes (a 16 x 128 shard: 2048 tokens; tinybert4 312 / 1200,
    the teacher 384 / 1536), the products a shard thread runs;
  - nanoseconds per element of the fused kernels that cost most outside the GEMMs (the masked softmax
    with and without attention dropout, bias + GELU forward and backward) beside a NumPy pass over
    the same array (exp, add): the floor a memory-bound kernel would sit near.

    python -m tools.bench.probe_host [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "2")   # the matmul rate on 2 threads; the rest is pinned to 1 below

import numba  # noqa: E402
import numpy as np  # noqa: E402

from minitinybert.engine import kernels  # noqa: E402
from minitinybert.engine.process import single_threaded_blas, tune_process  # noqa: E402
from tools.bench.engine import matmul_gflops, median_seconds  # noqa: E402

GEMM_SHAPES = [  # (m, k, n): tokens x in -> out, as a shard's products run (forward, then the weight gradient)
    (2048, 312, 936), (2048, 312, 1200), (2048, 1200, 312), (312, 2048, 1200),
    (2048, 384, 1152), (2048, 384, 1536), (2048, 1536, 384),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    tune_process()
    rng = np.random.default_rng(0)

    print(f"float32 matmul, 2 threads (4096x768 @ 768x1536): {matmul_gflops(args.repeats):.1f} GFLOP/s")

    numba.set_num_threads(1)
    with single_threaded_blas():
        print("\none thread, GEMM at the step's shapes:")
        for m, k, n in GEMM_SHAPES:
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = rng.standard_normal((k, n), dtype=np.float32)
            print(f"  {m:5d} x {k:4d} @ {k:4d} x {n:4d}: "
                  f"{2 * m * k * n / median_seconds(lambda: x @ w, args.repeats) / 1e9:6.1f} GFLOP/s")

        print("\none thread, ns per element (kernel | NumPy exp pass | NumPy add pass over the same array):")
        scores = rng.standard_normal((16, 12, 128, 128), dtype=np.float32)
        mask = np.zeros((16, 128), np.float32)
        u = rng.standard_normal((2048, 1200), dtype=np.float32)
        bias = rng.standard_normal(1200, dtype=np.float32)
        y, cache = kernels.bias_gelu_forward(u, bias)
        cases = [
            ("masked softmax, 16x12x128x128", scores, lambda: kernels.masked_softmax_dropout_forward(
                scores, mask, 0.18, 0.0, None)),
            ("masked softmax + dropout 0.1", scores, lambda: kernels.masked_softmax_dropout_forward(
                scores, mask, 0.18, 0.1, np.random.default_rng(1))),
            ("bias + GELU forward, 2048x1200", u, lambda: kernels.bias_gelu_forward(u, bias)),
            ("bias + GELU backward", u, lambda: kernels.bias_gelu_backward(y, cache)),
        ]
        for name, array, fn in cases:
            per = 1e9 / array.size
            kernel = median_seconds(fn, args.repeats) * per
            exp = median_seconds(lambda: np.exp(array), args.repeats) * per
            add = median_seconds(lambda: array + 1.0, args.repeats) * per
            print(f"  {name:32s} {kernel:5.2f} | {exp:5.2f} | {add:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
