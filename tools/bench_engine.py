"""Speed of the engine: forward and forward+backward of tinybert4 and the teacher (MiniLM-L6 shape).

Prints sequences per second and achieved GFLOP/s beside this machine's own float32 matmul rate,
measured in the same run. Random weights: speed does not depend on their values.

    OMP_NUM_THREADS=2 python tools/bench_engine.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from minitinybert.config import BertConfig, preset
from minitinybert.model import Bert
from minitinybert.parallel import DataParallel
from minitinybert.process import tune_process
from minitinybert.tokenizer import Batch
from minitinybert.training import StepResult

TEACHER_SHAPE = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                           intermediate_size=1536)


def forward_flops(cfg: BertConfig, B: int, T: int) -> float:
    """Multiply-adds x 2 of the encoder's matrix products (everything else is small beside them)."""
    N, C, F, L = B * T, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = 2 * N * (4 * C * C + 2 * C * F) + 2 * 2 * B * T * T * C   # projections, FFN, QK^T and PV
    return L * per_layer + 2 * B * C * C                                   # + pooler


def median_seconds(fn, repeats: int) -> float:
    fn()                                   # warm-up (JIT, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_gflops(repeats: int) -> float:
    """Best sustained float32 GEMM rate, at shapes like the model's (tokens x hidden x FFN)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, 768), dtype=np.float32)
    b = rng.standard_normal((768, 1536), dtype=np.float32)
    out = np.empty((4096, 1536), np.float32)
    sec = median_seconds(lambda: np.matmul(a, b, out=out), repeats * 3)
    return 2 * 4096 * 768 * 1536 / sec / 1e9


def bench_model(name, cfg, B, T, repeats, peak):
    model = Bert(cfg, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    flops = forward_flops(cfg, B, T)

    def train_step():
        out = model.forward(ids, None, mask, rng=np.random.default_rng(1), keep_cache=True)
        model.backward(out, dhidden={cfg.num_hidden_layers: np.ones_like(out.hidden_states[-1])},
                       dscores={0: np.ones_like(out.attention_scores[0])})

    runner = DataParallel(model)

    def shard_step(b, rng, grads, share):
        out = model.forward(b.input_ids, None, b.attention_mask, rng=rng, keep_cache=True)
        model.backward(out, dhidden={cfg.num_hidden_layers: np.full_like(out.hidden_states[-1], share)},
                       dscores={0: np.full_like(out.attention_scores[0], share)}, grads=grads)
        return StepResult({}, len(b), 0)

    def sharded_step():
        runner(shard_step, Batch(ids, np.zeros_like(ids), mask), np.random.default_rng(1))

    rows = []
    for kind, fn, work in (("forward", lambda: model.forward(ids, None, mask), flops),
                           ("fwd+bwd", train_step, 3 * flops),
                           (f"fwd+bwd, {runner.workers} shards", sharded_step, 3 * flops)):
        if "shards" in kind and runner.workers == 1:
            continue
        sec = median_seconds(fn, repeats)
        gflops = work / sec / 1e9
        rows.append((name, f"{B}x{T}", kind, sec * 1e3, B / sec, gflops, gflops / peak))
    return rows


def main(argv=None):
    tune_process()                         # first: before any Numba kernel starts OpenMP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import numba
    peak = matmul_gflops(args.repeats)
    print(f"numba threads: {numba.get_num_threads()}; float32 matmul (4096x768 @ 768x1536): {peak:.1f} GFLOP/s")
    rows = []
    for name, cfg in (("tinybert4", preset("tinybert4")), ("teacher", TEACHER_SHAPE)):
        for B, T in ((32, 128), (1, 128)):
            rows += bench_model(name, cfg, B, T, args.repeats, peak)
    print(f"{'model':<10} {'batch':>7} {'pass':>19} {'ms':>9} {'seq/s':>9} {'GFLOP/s':>8} {'of matmul':>9}")
    for name, shape, kind, ms, sps, gf, ratio in rows:
        print(f"{name:<10} {shape:>7} {kind:>19} {ms:9.1f} {sps:9.1f} {gf:8.1f} {ratio:9.0%}")
    for step in (r for r in rows if r[0] == "tinybert4" and r[1] == "32x128" and r[2].startswith("fwd+bwd")):
        print(f"tinybert4 training step (32x128, {step[2]}) reaches {step[6]:.0%} of the matmul rate "
              f"(target: 60%)")


if __name__ == "__main__":
    main()
