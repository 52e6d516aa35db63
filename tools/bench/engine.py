"""Speed of the engine: forward and forward+backward of tinybert4 and the teacher (MiniLM-L6 shape).

Prints sequences per second and achieved GFLOP/s beside this machine's own float32 matmul rate,
measured in the same run. Random weights: speed does not depend on their values.

Then the attention core's two implementations, A B A B in the same run (medians): the default
(per-head products by BLAS, split over threads, around the fused softmax kernel) against the
Numba kernel fused per (batch, head) block (tools/experiments/fused_attention.py), alone and inside the
whole model's training step, at 32 x 128 with 2 shards as distill runs it.

    OMP_NUM_THREADS=2 python -m tools.bench.engine [--repeats 5] [--skip-models] [--skip-attention]
"""
from __future__ import annotations

import argparse
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from minitinybert.data.tokenizer import Batch
from minitinybert.engine import kernels, ops
from minitinybert.engine.config import BertConfig, preset
from minitinybert.engine.model import Bert
from minitinybert.engine.process import single_threaded_blas, tune_process
from minitinybert.training.loop import StepResult
from minitinybert.training.parallel import DataParallel
from tools.experiments.fused_attention import fused_attention_backward, fused_attention_forward

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


ATTENTION = {"batched BLAS": (kernels.attention_forward, kernels.attention_backward),
             "fused Numba": (fused_attention_forward, fused_attention_backward)}


@contextlib.contextmanager
def attention_implementation(name):
    """The model calls kernels.attention_forward/backward: swap in one implementation for the duration."""
    saved = kernels.attention_forward, kernels.attention_backward
    kernels.attention_forward, kernels.attention_backward = ATTENTION[name]
    try:
        yield
    finally:
        kernels.attention_forward, kernels.attention_backward = saved


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run A B A B ... (B A B A every other round) after a warm-up:
    the machine is shared, and interleaving exposes both to the same load."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_attention(name, cfg, B, T, repeats):
    """The attention core alone, as the model calls it (strided q, k, v of a fused QKV product,
    context and gradients written into the model's layouts), masked padding, dropout on."""
    H, D = cfg.num_attention_heads, cfg.head_size
    rng = np.random.default_rng(0)

    def inputs(rows):
        qkv = rng.standard_normal((rows, T, 3, H, D), dtype=np.float32)
        mask = np.ones((rows, T), np.int32)
        mask[::3, T - T // 4:] = 0
        return [qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3)] + [ops.key_mask_bias(mask, np.float32)]

    def heads(a):  # (rows, T, n * H * D) -> its (rows, H, T, D) views
        n = a.shape[-1] // (H * D)
        return [a.reshape(a.shape[0], T, n, H, D)[:, :, i].transpose(0, 2, 1, 3) for i in range(n)]

    def step(impl, q, k, v, bias, backward=True):
        forward_fn, backward_fn = ATTENTION[impl]
        context = np.empty((q.shape[0], T, H * D), np.float32)
        _, scores, cache = forward_fn(q, k, v, bias, cfg.attention_probs_dropout_prob, np.random.default_rng(1),
                                      out=heads(context)[0])
        if backward:
            dqkv = np.empty((q.shape[0], T, 3 * H * D), np.float32)
            backward_fn(heads(context)[0], cache, scores, out=heads(dqkv))

    whole, halves = inputs(B), [inputs(B // 2), inputs(B - B // 2)]
    pool = ThreadPoolExecutor(2, initializer=lambda: numba.set_num_threads(1))   # as DataParallel's shards

    def sharded(impl):
        with single_threaded_blas():
            for job in [pool.submit(step, impl, *half) for half in halves]:
                job.result()

    cases = {"forward (eval)": lambda impl: ATTENTION[impl][0](*whole[:4]),
             "fwd+bwd": lambda impl: step(impl, *whole),
             "fwd+bwd, 2 shards": sharded}
    rows = []
    for case, run in cases.items():
        med = interleaved_medians({impl: (lambda impl=impl: run(impl)) for impl in ATTENTION}, repeats)
        rows.append((name, f"{B}x{T}", f"core, {case}", med))
    pool.shutdown()
    return rows


def bench_model_attention(name, cfg, B, T, repeats):
    """The whole training step (2 shards, as distill) with each attention implementation."""
    model = Bert(cfg, seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    runner = DataParallel(model, 2)

    def shard_step(b, rng, grads, share):
        out = model.forward(b.input_ids, None, b.attention_mask, rng=rng, keep_cache=True)
        model.backward(out, dhidden={cfg.num_hidden_layers: np.full_like(out.hidden_states[-1], share)},
                       dscores={i: np.full_like(s, share) for i, s in enumerate(out.attention_scores)}, grads=grads)
        return StepResult({}, len(b), 0)

    def run(impl):
        with attention_implementation(impl):
            runner(shard_step, Batch(ids, np.zeros_like(ids), mask), np.random.default_rng(1))

    med = interleaved_medians({impl: (lambda impl=impl: run(impl)) for impl in ATTENTION}, repeats)
    runner.close()
    return [(name, f"{B}x{T}", "model fwd+bwd, 2 shards", med)]


def main(argv=None):
    tune_process()                         # first: before any Numba kernel starts OpenMP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-models", action="store_true", help="only the attention comparison")
    ap.add_argument("--skip-attention", action="store_true", help="only the models")
    args = ap.parse_args(argv)
    peak = matmul_gflops(args.repeats)
    print(f"numba threads: {numba.get_num_threads()}; float32 matmul (4096x768 @ 768x1536): {peak:.1f} GFLOP/s")
    models = (("tinybert4", preset("tinybert4")), ("teacher", TEACHER_SHAPE))
    if not args.skip_models:
        rows = []
        for name, cfg in models:
            for B, T in ((32, 128), (1, 128)):
                rows += bench_model(name, cfg, B, T, args.repeats, peak)
        print(f"{'model':<10} {'batch':>7} {'pass':>19} {'ms':>9} {'seq/s':>9} {'GFLOP/s':>8} {'of matmul':>9}")
        for name, shape, kind, ms, sps, gf, ratio in rows:
            print(f"{name:<10} {shape:>7} {kind:>19} {ms:9.1f} {sps:9.1f} {gf:8.1f} {ratio:9.0%}")
        for step in (r for r in rows if r[0] == "tinybert4" and r[1] == "32x128" and r[2].startswith("fwd+bwd")):
            print(f"tinybert4 training step (32x128, {step[2]}) reaches {step[6]:.0%} of the matmul rate "
                  f"(target: 60%)")
    if not args.skip_attention:
        rows = []
        for name, cfg in models:
            rows += bench_attention(name, cfg, 32, 128, 2 * args.repeats + 1)
            rows += bench_model_attention(name, cfg, 32, 128, 2 * args.repeats + 1)
        blas, fused = ATTENTION
        print(f"\nattention, interleaved medians (head size: tinybert4 {models[0][1].head_size}, "
              f"teacher {models[1][1].head_size})")
        print(f"{'model':<10} {'batch':>7} {'pass':>26} {blas + ' ms':>16} {fused + ' ms':>16} {'fused / BLAS':>13}")
        for name, shape, kind, med in rows:
            print(f"{name:<10} {shape:>7} {kind:>26} {med[blas] * 1e3:16.1f} {med[fused] * 1e3:16.1f} "
                  f"{med[fused] / med[blas]:13.2f}")


if __name__ == "__main__":
    main()
