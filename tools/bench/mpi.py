"""Data parallelism over processes: step time, Allreduce time and its share of the step for one process
and for K processes on this machine (the same global batch), and what that predicts for K machines.

    MINITINYBERT_DATA=/work/shared/data python -m tools.bench.mpi [--ranks 2] [--steps 10]
        [--batch-size 32] [--seq-len 128]

One job, `mpiexec -n K python -m tools.bench.mpi --rank ...`, runs the general-distillation step as
`distill general` does (MiniLM-L6 teacher forward, tinybert4 student with per-layer projections
forward + backward, clipping, AdamW) through DataParallel on batches of the shared corpus read by
CorpusBatcher, in turn: a step of the K processes (each computing its shards with cores // K threads),
then a step of rank 0 alone with all the cores as one process (the others wait), and so on, so that a
change in the machine's load hits both alike. Rank 0 reports the median over the steps of:
  step        the whole step (batch, forward/backward, Allreduce, clipping, AdamW);
  wait        time at a barrier before the Allreduce (the slowest rank's lag; 0 for one process);
  allreduce   the Allreduce of the flat gradient buffer itself (float32, in place);
  alone       the same Allreduce with nothing around it.
Then, from the one-process figures, the expected efficiency of K machines joined by a 10 or 25 Gbit/s
link, with a ring Allreduce (each rank sends and receives 2 (K-1)/K of the buffer):
    T_K = T_opt + (T_1 - T_opt) / K + 2 (K-1)/K * bytes / bandwidth        E_K = T_1 / (K T_K)
where T_opt is the optimizer step (clipping + AdamW), which every rank repeats in full, and the
compute is assumed to divide by K. The Allreduce is not overlapped with the backward pass; the
'overlapped' column bounds what sending each layer's gradient as soon as the backward pass has made it
could give: only the encoder layers' share of the buffer (`early`) is ready before the backward pass
ends; the word embeddings' gradient (two thirds of the buffer) is made last, and the projections' after
it, so    T_K = T_opt + T_fwd/K + max(T_bwd/K, early * T_allreduce) + (1 - early) * T_allreduce.
`--step-seconds T` models
machines whose one-process step takes T instead (optimizer share kept): measure T on a cluster node
with `--ranks 1`, or use a quiet machine's figure when this one is busy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def rank_main(args) -> None:
    import numba

    from minitinybert.engine.config import preset
    from minitinybert.data.corpus import CorpusBatcher
    from minitinybert.data.task_files import data_root
    from minitinybert.distill import LossWeights, intermediate_step, layer_mapping
    from minitinybert.engine.model import Bert
    from minitinybert.engine.optim import AdamW, clip_grad_norm
    from minitinybert.engine.process import blas_thread_control
    from minitinybert.training.parallel import DataParallel
    from minitinybert.engine.teacher import resolve_teacher
    from minitinybert.data.tokenizer import Tokenizer
    from minitinybert.engine.weights import load_model
    from minitinybert.training.world import World, get_world

    world = get_world()
    with world.root_first():
        teacher_dir = resolve_teacher(None, log=lambda *a: None)
    teacher = load_model(teacher_dir)
    tokenizer = Tokenizer.from_dir(teacher_dir)
    config = preset("tinybert4").replace(vocab_size=teacher.config.vocab_size, fit_size=teacher.config.hidden_size)
    student = Bert(config, seed=0)
    optimizer = AdamW(student.params, lr=1e-4)
    mapping, weights = layer_mapping(4, teacher.config.num_hidden_layers), LossWeights()
    rng = np.random.default_rng(0)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // world.size)

    def step(batch, rng, **k):
        return intermediate_step(teacher, student, batch, rng, mapping, weights, **k)

    def setup(world, workers):
        runner = DataParallel(student, workers, world)
        batches = CorpusBatcher(data_root(None) / "corpus", tokenizer, seq_len=args.seq_len,
                                batch_size=args.batch_size, seed=0, shards=runner.shards)
        return runner, batches

    timings = {"wait": 0.0, "allreduce": 0.0}
    allreduce = world.allreduce_sum_

    def timed_allreduce(array):    # the barrier first: waiting for the slowest rank is not transfer
        t0 = time.perf_counter()
        world.barrier()
        t1 = time.perf_counter()
        allreduce(array)
        timings["wait"] += t1 - t0
        timings["allreduce"] += time.perf_counter() - t1
        return array

    world.allreduce_sum_ = timed_allreduce
    configs = {world.size: setup(world, threads)}
    if world.is_root:                # one process with all the cores, on rank 0 while the others wait
        configs[1] = setup(World(), cores)

    def use_threads(n):
        numba.set_num_threads(n)
        if blas_thread_control():
            blas_thread_control()[0](n)

    rows = {k: [] for k in configs}
    for i in range(args.warmup + args.steps):
        for k in (world.size, 1):            # interleaved, so that a change in the machine's load hits both
            if k == 1 and world.size > 1:
                if not world.is_root:
                    world.barrier()
                    continue
                use_threads(cores)
            runner, batches = configs[k]
            timings.update(wait=0.0, allreduce=0.0)
            t0 = time.perf_counter()
            runner(step, next(batches), rng)
            t1 = time.perf_counter()
            clip_grad_norm(student.grads.data, 1.0)
            optimizer.step(student.grads.data, lr=1e-4)
            t2 = time.perf_counter()
            if i >= args.warmup:
                rows[k].append({"step": t2 - t0, "optimizer": t2 - t1, **timings})
            if k == 1 and world.size > 1:
                use_threads(threads)
                world.barrier()
            if world.size == 1:
                break

    alone = []                               # the Allreduce alone, nothing around it
    for _ in range(5 if world.size > 1 else 0):
        world.barrier()
        t0 = time.perf_counter()
        allreduce(student.grads.data)
        alone.append(time.perf_counter() - t0)
    if world.is_root:
        for k in sorted(rows):
            medians = {key: float(np.median([r[key] for r in rows[k]])) for key in rows[k][0]}
            encoder = sum(v.size for name, v in student.params.views.items() if name.startswith("encoder."))
            early = encoder / student.params.size
            print(json.dumps({"K": k, "threads": configs[k][0].workers, "bytes": int(student.grads.data.nbytes),
                              "early": early,
                              "allreduce_alone": float(np.median(alone)) if k > 1 else 0.0, **medians}), flush=True)


def measure(k: int, args) -> list[dict]:
    """[one process, k processes]: both measured in one mpiexec -n k job, step by step in turn."""
    cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(k), sys.executable, "-m", "tools.bench.mpi", "--rank",
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len)]
    env = {key: v for key, v in os.environ.items() if key not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"mpiexec -n {k} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.strip().splitlines() if line.startswith("{")]


def model_table(one: dict, backward_share: float, step_seconds: float | None = None) -> list[str]:
    """Expected efficiency on K machines, from the one-process figures (see the module docstring)."""
    t1, t_opt, size, early = one["step"], one["optimizer"], one["bytes"], one["early"]
    if step_seconds:
        t1, t_opt = step_seconds, t_opt * step_seconds / t1
    compute = t1 - t_opt
    lines = [f"{'K':>4} {'link':>9} {'allreduce s':>12} {'step s':>8} {'efficiency':>11} {'overlapped':>11}"]
    for gbit in (10, 25):
        bandwidth = gbit * 1e9 / 8
        for k in (2, 4, 8, 16, 32, 64):
            t_ar = 2 * (k - 1) / k * size / bandwidth
            t_k = t_opt + compute / k + t_ar
            overlapped = t_opt + compute * (1 - backward_share) / k + max(compute * backward_share / k,
                                                                          early * t_ar) + (1 - early) * t_ar
            lines.append(f"{k:>4} {gbit:>4} Gb/s {t_ar:>12.3f} {t_k:>8.3f} {t1 / (k * t_k):>10.0%} "
                         f"{t1 / (k * overlapped):>10.0%}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2, help="processes, compared with one (default 2)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--backward-share", type=float, default=0.6,
                        help="share of the compute that is the backward pass, for the overlap bound (default 0.6)")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="model machines whose one-process step takes this long (default: as measured)")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank:
        rank_main(args)
        return 0
    results = measure(args.ranks, args)
    print(f"general distillation step, tinybert4 + projections <- MiniLM-L6, global batch {args.batch_size} x "
          f"{args.seq_len}, {len(os.sched_getaffinity(0))} cores; medians of {args.steps} steps")
    print(f"gradient buffer: {results[0]['bytes'] / 1e6:.1f} MB float32")
    print(f"{'K':>3} {'threads':>8} {'step s':>8} {'seq/s':>7} {'speedup':>8} {'wait s':>8} {'allreduce s':>12} "
          f"{'share':>6} {'alone s':>8}")
    for r in results:
        print(f"{r['K']:>3} {r['threads']:>8} {r['step']:>8.3f} {args.batch_size / r['step']:>7.1f} "
              f"{results[0]['step'] / r['step']:>7.2f}x {r['wait']:>8.4f} {r['allreduce']:>12.4f} "
              f"{r['allreduce'] / r['step']:>6.1%} {r['allreduce_alone']:>8.4f}")
    one = results[0]
    t1 = args.step_seconds or one["step"]
    t_opt = one["optimizer"] * t1 / one["step"]
    print(f"\nexpected on K machines (T_1 {t1:.3f} s{'' if args.step_seconds else ' as measured'}, optimizer "
          f"{t_opt:.3f} s, ring Allreduce of {one['bytes'] / 1e6:.0f} MB; 'overlapped': the bound with the "
          f"encoder layers' {one['early']:.0%} of it sent during the backward pass, {args.backward_share:.0%} of the "
          f"compute):")
    print("\n".join(model_table(one, args.backward_share, args.step_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
