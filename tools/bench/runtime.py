"""Edge runtime against ONNX Runtime on tinybert4 (4 layers, hidden 312, 12 heads, FFN 1200, vocab
30522, 2 labels; random weights): latency at batch 1 x 8 ... 128 tokens and 32x128, peak RSS,
start-up time and file size, for runtime.py float32 and int8 and ORT float32 and dynamic int8,
with ratios; then the tokenizer backends, and every target of the runtime issue, met or not.

    /tmp/torchenv/bin/python -m tools.bench.runtime [--rounds 3] [--seconds 1.5] [--threads 2,1]
        [--shapes 1x8,1x16,1x32,1x64,1x128,32x128] [--engines ...] [--json out.json]

Runs in the venv that has torch, transformers, onnx and onnxruntime (only this tool uses them):
    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 onnxruntime onnx \
        transformers numpy numba safetensors tokenizers
runtime.py is imported by file path, so it runs on that venv's NumPy (and its Numba, if any).
Every measurement runs in a fresh subprocess (so the peak RSS, VmHWM, is that configuration's
own), with OMP/OpenBLAS threads and ORT's intra-op threads set to the thread count; runtime.py
gets load(threads=N) except the "-blas" variant (threads=None: BLAS threads only).
Rows: runtime-f32 / runtime-int8 (Numba kernels; the last layer computed for the [CLS] position
only, as predict() does: same logits), runtime-f32-full (every position, as the ONNX graph does),
runtime-f32-numpy / runtime-int8-numpy (no Numba: a NumPy-only board), runtime-f32-blas,
runtime-f32-1t (threads=1 in every table: what the runtime's own threads bring),
runtime-int8-emb-numpy (NumPy only, int8 with quantized embeddings: the small-board memory
figures), ort-f32, ort-int8 (onnxruntime.quantization.quantize_dynamic, int8 weights).
The rounds are interleaved (runtime, ORT, runtime, ...) so that load from other processes hits
all alike; "latency" is the median over rounds of each run's median, "p10" the 10th percentile of
all iterations of all rounds (less sensitive to other processes' load). Latency is the model
alone on token ids (tokenization excluded: ORT takes ids). Start-up is measured inside a fresh
process: import (runtime.py + NumPy / onnxruntime) + load; "first" adds the first 1x32 forward
pass (runtime.py answers on NumPy while Numba loads in a thread of its own); "Numba ready" is when
its kernels serve (latency runs wait for it before timing); "cli" is the wall time of
`python runtime.py MODEL "text"` as a whole. Before timing, the transformers model (same weights)
is checked against the engine, and ORT and runtime.py against it. Each thread count's table ends
with the achieved GFLOP/s (2 per multiply-add of the products and attention a pass computes) and
weight GB/s (every linear weight read once a pass) at p10, beside the machine's peak measured in
the same rounds (a 2048^3 float32 product by OpenBLAS; a 256 MB read; int8: 4x the float32 rate,
VNNI's multiply-adds per instruction, derived). --runtime measures another runtime.py (a copy).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PY = REPO / "minitinybert" / "runtime.py"
SHAPES = [(1, 8), (1, 16), (1, 32), (1, 64), (1, 128), (32, 128)]
# runtime variants: file, and options. Default: Numba kernels, the runtime's thread pool, the last
# layer computed for [CLS] only (what predict() does; the logits are the same).
RUNTIME_VARIANTS = {
    "runtime-f32": dict(file="runtime-f32"),
    "runtime-int8": dict(file="runtime-int8"),
    "runtime-f32-full": dict(file="runtime-f32", hidden=True),      # every position of the last layer, as ORT
    "runtime-f32-numpy": dict(file="runtime-f32", numba=False),     # no Numba: what a NumPy-only board gets
    "runtime-f32-blas": dict(file="runtime-f32", blas=True),        # OpenBLAS's threads instead of ours
    "runtime-f32-1t": dict(file="runtime-f32", threads=1),          # one thread, whatever the table's count
    "runtime-int8-numpy": dict(file="runtime-int8", numba=False),   # NumPy only: int8 weights cast per product
    # a small board: NumPy only, int8 with quantized embeddings (the memory targets)
    "runtime-int8-emb-numpy": dict(file="runtime-int8-emb", numba=False),
}
ORT_ENGINES = ("ort-f32", "ort-int8")   # ort-int8: quantize_dynamic (int8 weights)
VOCAB_SIZE = 30522


# --- worker side: one configuration in a fresh process ---------------------------------------------

def _import_runtime(path=None):
    import importlib.util
    spec = importlib.util.spec_from_file_location("runtime", path or RUNTIME_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["runtime"] = module
    spec.loader.exec_module(module)
    return module


def _peak_rss_mb() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: ru_maxrss survives exec(), so a child
    of a big parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _make_runner(engine: str, path: str, threads: int, runtime_py=None):  # noqa: C901
    """(run(ids, types, mask) -> logits) after import + load; run.settle() waits for the runtime's Numba kernels
    (loaded in a thread: the first passes run on NumPy)."""
    if engine == "ort":
        import onnxruntime as ort  # noqa: F811
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def run(ids, types, mask):
            return session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        run.settle = lambda: None
        return run
    opts = RUNTIME_VARIANTS[engine]
    if not opts.get("numba", True):
        os.environ["MINITINYBERT_NUMBA"] = "0"
    rt = _import_runtime(runtime_py)
    # threads: the runtime's own pool over single-threaded BLAS calls, or (blas) one Python
    # thread and OpenBLAS's own threads (from OMP/OPENBLAS_NUM_THREADS)
    model = rt.load(path, threads=None if opts.get("blas") else opts.get("threads", threads))
    hidden = opts.get("hidden", False)

    def run(ids, types, mask):
        return model.forward(ids, types, mask, hidden=hidden)["logits"]
    run.settle = lambda: model.kernels
    return run


def peak_worker(threads: int) -> dict:
    """The machine's limits at this thread count: a large float32 matrix product (OpenBLAS, GFLOP/s) and a read of
    256 MB (NumPy sums, one per thread, GB/s): best of 5 each."""
    import threading

    import numpy as np
    a = np.ones((2048, 2048), np.float32)
    big = np.ones(64 * 2 ** 20, np.float32)
    parts = np.array_split(big, threads)

    def read():
        helpers = [threading.Thread(target=part.sum) for part in parts[1:]]
        for h in helpers:
            h.start()
        parts[0].sum()
        for h in helpers:
            h.join()

    def best(fn):
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)
    return {"gflops": 2 * 2048 ** 3 / best(lambda: a @ a) / 1e9, "read_gbs": big.nbytes / best(read) / 1e9}


def worker(spec: dict) -> dict:
    if spec["mode"] == "peak":
        return peak_worker(spec["threads"])
    t0 = time.perf_counter()
    run = _make_runner(spec["engine"], spec["path"], spec["threads"], spec.get("runtime"))
    t_load = time.perf_counter() - t0
    import numpy as np
    B, T = spec["shape"]
    # token ids from the standard library's generator: numpy.random is never imported by runtime.py, and
    # importing it here would add 6.8 MB (NumPy 2.4) to the peak RSS measured for every engine
    draw = random.Random(0)
    ids = np.array([[draw.randrange(1000, VOCAB_SIZE) for _ in range(T)] for _ in range(B)], dtype=np.int64)
    ids[:, 0] = 101
    types = np.zeros_like(ids)
    mask = np.ones_like(ids)
    t1 = time.perf_counter()
    run(ids, types, mask)
    t_first = time.perf_counter() - t1
    if spec["mode"] == "startup":
        run.settle()
        return {"startup": t_load, "first": t_load + t_first, "ready": time.perf_counter() - t0}
    run.settle()
    times = []
    deadline = time.perf_counter() + spec["seconds"]
    while len(times) < spec["min_iters"] or (time.perf_counter() < deadline and len(times) < 1000):
        t = time.perf_counter()
        run(ids, types, mask)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {"median_ms": median * 1e3, "min_ms": min(times) * 1e3, "iters": len(times),
            "times_ms": [t * 1e3 for t in times], "throughput": B / median, "peak_rss_mb": _peak_rss_mb()}


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env.pop("PYTHONPATH", None)
    return env


def spawn(spec: dict) -> dict:
    # the file as a script, not -m: the worker imports nothing of the package or of tools/, only
    # runtime.py by its path, so its start-up and peak RSS are that configuration's alone
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=thread_env(spec["threads"]), timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_seconds(model: Path, threads: int, runtime_py=RUNTIME_PY) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(runtime_py), str(model), "a short text to classify"],
                          capture_output=True, text=True, env=thread_env(threads), timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return time.perf_counter() - t


# --- preparation: weights, runtime files, ONNX, agreement checks --------------------------------------

def prepare(workdir: Path, log=print, runtime_py=None) -> dict:
    import numpy as np
    import torch
    from transformers import BertConfig as HFConfig
    from transformers import BertForSequenceClassification

    from minitinybert.engine.config import preset
    from minitinybert.export import export_model
    from minitinybert.engine.model import Bert

    workdir.mkdir(parents=True, exist_ok=True)
    cfg = preset("tinybert4", num_labels=2)
    model = Bert(cfg, seed=0)
    vocab_file = REPO / "weights" / "all-MiniLM-L6-v2" / "vocab.txt"
    if vocab_file.exists():
        tokens = [line.rstrip("\r\n") for line in open(vocab_file, encoding="utf-8")]
    else:
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(VOCAB_SIZE - 5)]
    assert len(tokens) == VOCAB_SIZE
    files = {}
    for name, dtype, qemb in (("runtime-f32", "float32", False), ("runtime-int8", "int8", False),
                              ("runtime-int8-emb", "int8", True)):
        files[name] = export_model(model, workdir / f"{name}.safetensors", tokens, True, dtype,
                                   quantize_embeddings=qemb, max_length=128)

    hf_cfg = HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                      num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                      max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
                      layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu", num_labels=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    hf = BertForSequenceClassification(hf_cfg).eval()
    state = {(k if k.startswith("classifier.") else "bert." + k): torch.from_numpy(np.array(v))
             for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)

    rng = np.random.default_rng(1)
    ids = rng.integers(1000, VOCAB_SIZE, (3, 20)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    types = np.zeros_like(ids)
    types[:, 10:] = 1
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types)).logits.numpy()
    engine = model.forward(ids, types, mask).logits
    log(f"check: transformers vs engine      max |diff| {np.abs(ref - engine).max():.2e}")
    assert np.abs(ref - engine).max() < 1e-4

    onnx_path = workdir / "tinybert4.onnx"
    with torch.no_grad():
        torch.onnx.export(hf, (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types)), str(onnx_path),
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids")} | {"logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    files["ort-f32"] = onnx_path
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic
    files["ort-int8"] = workdir / "tinybert4-int8.onnx"
    quantize_dynamic(str(onnx_path), str(files["ort-int8"]), weight_type=QuantType.QInt8)
    for name in ("ort-f32", "ort-int8"):
        session = ort.InferenceSession(str(files[name]), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        log(f"check: {name:<16} vs transformers max |diff| {np.abs(got - ref).max():.2e}")
        if name == "ort-f32":
            assert np.abs(got - ref).max() < 1e-4
    rt = _import_runtime(runtime_py)
    for name in ("runtime-f32", "runtime-int8", "runtime-int8-emb"):
        out = rt.load(files[name]).forward(ids, types, mask)["logits"]
        log(f"check: {name:<16} vs transformers max |diff| {np.abs(out - ref).max():.2e}")
        if name == "runtime-f32":
            assert np.abs(out - ref).max() < 1e-4
    return {k: str(v) for k, v in files.items()}


def tokenizer_speed(log=print) -> None:
    """runtime.py's WordPiece against the `tokenizers` library's (Rust; runtime.py's backend until it
    was measured slower) on SST-2 dev sentences (or a fixed text set): same ids, time each."""
    from tokenizers.implementations import BertWordPieceTokenizer
    rt = _import_runtime()
    tokens = [line.rstrip("\r\n") for line in open(REPO / "weights" / "all-MiniLM-L6-v2" / "vocab.txt",
                                                      encoding="utf-8")]
    dev = Path(os.environ.get("MINITINYBERT_DATA", "/work/shared/data")) / "glue" / "SST-2" / "dev.tsv"
    texts = ([line.split("\t")[0] for line in dev.read_text(encoding="utf-8").splitlines()[1:]] if dev.exists()
             else [f"sentence number {i}: a gripping, well-acted film (caf\u00e9 scene)" for i in range(872)])
    ours = rt.WordPieceTokenizer(tokens, True)
    rust = BertWordPieceTokenizer(str(REPO / "weights" / "all-MiniLM-L6-v2" / "vocab.txt"), lowercase=True)
    runners = {"runtime.py": ours.token_ids,
               "tokenizers": lambda batch: [e.ids for e in rust.encode_batch(batch, add_special_tokens=False)]}
    for batch in ([texts[0]], texts[:32], texts):   # one text (a device's request), a batch, the dev set
        times = {name: [] for name in runners}
        for _ in range(9):                          # interleaved; runtime.py's word cache emptied each time
            for name, run in runners.items():
                ours._cache.clear()
                t = time.perf_counter()
                ids = run(batch)
                times[name].append(time.perf_counter() - t)
                assert ids == ours.token_ids(batch)
        a, b = (statistics.median(times[name]) * 1e3 for name in runners)
        log(f"tokenizer, {len(batch):>4} texts: runtime.py {a:8.3f} ms, tokenizers (Rust) {b:8.3f} ms: {b / a:.2f}x")


# --- orchestration ----------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="/tmp/minitinybert-bench-runtime")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing budget per run")
    parser.add_argument("--threads", default="2,1", help="comma-separated thread counts, one table each")
    parser.add_argument("--shapes", default=",".join(f"{b}x{t}" for b, t in SHAPES))
    parser.add_argument("--engines", default="runtime-f32,runtime-int8,runtime-f32-numpy,runtime-int8-numpy,"
                                             "runtime-f32-blas,runtime-f32-1t,runtime-int8-emb-numpy,ort-f32,ort-int8",
                        help="any of " + ", ".join(list(RUNTIME_VARIANTS) + list(ORT_ENGINES)))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--runtime", default=str(RUNTIME_PY), help="the runtime.py to measure (default: this "
                        "checkout's; a copy measures a version apart)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    files = prepare(Path(args.workdir), runtime_py=args.runtime)
    for name, opts in RUNTIME_VARIANTS.items():
        files[name] = files[opts["file"]]
    args.shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    summary = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        summary.update(bench_threads(files, engines, threads, args))
    print()
    tokenizer_speed()
    print()
    targets(summary, args)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def p10(values) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.1 * len(values)))]


def kind(engine: str) -> str:
    return "ort" if engine.startswith("ort") else engine


def bench_threads(files: dict, engines: list, threads: int, args) -> dict:
    shapes = args.shapes
    engines = [e for e in engines if not (threads == 1 and e.endswith("-1t"))]     # the same as runtime-f32
    results = {(e, s): [] for e in engines for s in shapes}
    startup = {e: [] for e in engines}
    cli, peaks = [], []
    for r in range(args.rounds):
        peaks.append(spawn(dict(threads=threads, mode="peak")))
        for shape in shapes:
            for engine in engines:
                spec = dict(engine=kind(engine), path=files[engine], shape=list(shape), threads=threads,
                            mode="latency", seconds=args.seconds, min_iters=3 if shape[0] > 1 else 10,
                            runtime=args.runtime)
                results[(engine, shape)].append(spawn(spec))
        for engine in engines:
            spec = dict(engine=kind(engine), path=files[engine], shape=[1, 32], threads=threads, mode="startup",
                        runtime=args.runtime)
            startup[engine].append(spawn(spec))
        cli.append(cli_seconds(Path(files["runtime-f32"]), threads, args.runtime))
        print(f"threads={threads}: round {r + 1}/{args.rounds} done", file=sys.stderr)

    print(f"\ntinybert4 (L4 H312 A12 FFN1200 V30522, 2 labels), threads={threads}, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    sizes = {e: Path(p).stat().st_size / 1e6 for e, p in files.items()}
    summary = {}
    for shape in shapes:
        for engine in engines:
            runs = results[(engine, shape)]
            summary[f"threads={threads} {engine} {shape[0]}x{shape[1]}"] = dict(
                median_ms=statistics.median(x["median_ms"] for x in runs),
                p10_ms=p10([t for x in runs for t in x["times_ms"]]),
                peak_rss_mb=statistics.median(x["peak_rss_mb"] for x in runs))
    key = f"threads={threads} "
    cell = 15
    for title, field in (("latency ms, median (p10)", None), ("vs ORT float32, median (p10)", "ratio"),
                         ("int8 vs ORT dynamic int8, med (p10)", "ratio8"), ("peak RSS MB", "peak_rss_mb")):
        head = f"{title:<30}" + "".join(f"{f'{b}x{t}':>{cell}}" for b, t in shapes)
        print(head)
        print("-" * len(head))
        for engine in engines:
            if field == "ratio8" and "int8" not in engine:
                continue
            row = f"{engine:<30}"
            for b, t in shapes:
                against = "ort-int8" if field == "ratio8" else "ort-f32"
                m, o = summary[f"{key}{engine} {b}x{t}"], summary.get(f"{key}{against} {b}x{t}")
                if field is None:
                    text = f"{m['median_ms']:.2f} ({m['p10_ms']:.2f})"
                elif field in ("ratio", "ratio8"):
                    text = f"{m['median_ms'] / o['median_ms']:.2f} ({m['p10_ms'] / o['p10_ms']:.2f})" if o else ""
                else:
                    text = f"{m[field]:.1f}"
                row += f"{text:>{cell}}"
            print(row)
        print()
    limits(summary, engines, shapes, threads, peaks)
    head = f"{'engine':<30}{'file MB':>9}{'vs f32':>8}{'start-up s':>12}{'first s':>9}{'Numba ready s':>15}"
    print(head)
    print("-" * len(head))
    for engine in engines:
        su = statistics.median(x["startup"] for x in startup[engine])
        first = statistics.median(x["first"] for x in startup[engine])
        ready = statistics.median(x["ready"] for x in startup[engine])
        print(f"{engine:<30}{sizes[engine]:>9.2f}{sizes[engine] / sizes['runtime-f32']:>8.3f}{su:>12.3f}{first:>9.3f}"
              f"{ready:>15.3f}")
        summary[f"{key}{engine} startup"] = dict(startup_s=su, first_s=first, ready_s=ready, file_mb=sizes[engine])
    print(f"\nruntime.py CLI, whole process (python runtime.py MODEL 'text'): {statistics.median(cli):.3f} s")
    return summary


# tinybert4's sizes: what a forward pass computes and the weight bytes it reads
C, F, LAYERS, POOLER = 312, 1200, 4, 312 * 312 + 2 * 312
WEIGHTS = LAYERS * (4 * C * C + 2 * C * F) + POOLER          # linear-layer parameters (embedding rows aside)


def pass_flops(engine: str, b: int, t: int) -> int:
    """Floating-point (or integer) operations of one forward pass: 2 per multiply-add, the products and attention;
    the runtime's default runs the last layer for [CLS] only (ORT and runtime-f32-full: every position)."""
    n = b * t
    layer = 2 * n * (4 * C * C + 2 * C * F) + 4 * b * t * t * C
    last = layer if engine.startswith("ort") or engine.endswith("-full") else \
        2 * (2 * b * C * C + 2 * n * C * C + 2 * b * C * F) + 4 * b * t * C
    return (LAYERS - 1) * layer + last + 2 * b * POOLER


def limits(summary: dict, engines: list, shapes: list, threads: int, peaks: list) -> None:
    """Achieved rates at p10 beside the machine's: GFLOP/s (GOP/s for int8) against the float32 matrix product
    peak (int8: 4x it, the multiply-adds per instruction of AVX-512 VNNI vpdpbusd against vfmadd231ps: derived, not
    measured), and weight GB/s (each pass reads every linear weight once) against the read peak."""
    gflops, read = max(p["gflops"] for p in peaks), max(p["read_gbs"] for p in peaks)
    summary[f"threads={threads} peak"] = dict(gflops=gflops, read_gbs=read)
    print(f"achieved at p10: GFLOP/s (% of peak) | weight GB/s (% of peak); peak {gflops:.0f} GFLOP/s float32 "
          f"(2048^3 sgemm), {4 * gflops:.0f} GOP/s int8 (4x: VNNI), {read:.1f} GB/s read (256 MB sum)")
    head = f"{'':<24}" + "".join(f"{f'{b}x{t}':>22}" for b, t in shapes)
    print(head)
    print("-" * len(head))
    for engine in engines:
        if engine.endswith("-numpy") or engine.endswith("-blas") or engine.endswith("-1t"):
            continue
        int8 = "int8" in engine
        row = f"{engine:<24}"
        for b, t in shapes:
            m = summary[f"threads={threads} {engine} {b}x{t}"]
            rate, gbs = pass_flops(engine, b, t) / m["p10_ms"] / 1e6, WEIGHTS * (1 if int8 else 4) / m["p10_ms"] / 1e6
            m.update(gflops=rate, weight_gbs=gbs)
            cell = f"{rate:.0f} ({100 * rate / gflops / (4 if int8 else 1):.0f}%) | {gbs:.1f} ({100 * gbs / read:.0f}%)"
            row += f"{cell:>22}"
        print(row)
    print()


def targets(summary: dict, args) -> None:
    """Each target of the runtime issue, from this run's figures."""
    def get(threads, engine, shape, field="median_ms"):
        return summary.get(f"threads={threads} {engine} {shape[0]}x{shape[1]}", {}).get(field)

    for threads in [int(t) for t in args.threads.split(",")]:
        for shape in args.shapes:
            rt, ort = get(threads, "runtime-f32", shape), get(threads, "ort-f32", shape)
            rt10, ort10 = get(threads, "runtime-f32", shape, "p10_ms"), get(threads, "ort-f32", shape, "p10_ms")
            if rt and ort:
                ok = rt <= ort and rt10 <= ort10
                print(f"target f32 <= 1.0x ORT f32, {threads} thread(s), {shape[0]}x{shape[1]}: median {rt / ort:.2f}x, "
                      f"p10 {rt10 / ort10:.2f}x: {'met' if ok else 'NOT met'}")
        for shape in args.shapes:
            i8, f32 = get(threads, "runtime-int8", shape), get(threads, "runtime-f32", shape)
            i8p, f32p = get(threads, "runtime-int8", shape, "p10_ms"), get(threads, "runtime-f32", shape, "p10_ms")
            if i8 and f32:
                print(f"target int8 faster than f32, {threads} thread(s), {shape[0]}x{shape[1]}: "
                      f"median {i8 / f32:.2f}x, p10 {i8p / f32p:.2f}x: "
                      f"{'met' if i8 < f32 and i8p < f32p else 'NOT met'}")
        for shape in [s for s in args.shapes if s[0] == 1 and s[1] <= 64]:
            i8, ort8 = get(threads, "runtime-int8", shape), get(threads, "ort-int8", shape)
            i8p, ort8p = get(threads, "runtime-int8", shape, "p10_ms"), get(threads, "ort-int8", shape, "p10_ms")
            if i8 and ort8:
                print(f"target int8 <= ORT dynamic int8, {threads} thread(s), 1x{shape[1]}: "
                      f"median {i8 / ort8:.2f}x, p10 {i8p / ort8p:.2f}x: "
                      f"{'met' if i8 <= ort8 and i8p <= ort8p else 'NOT met'}")
        for engine in ("runtime-f32", "runtime-int8"):
            first = summary.get(f"threads={threads} {engine} startup", {}).get("first_s")
            if first:
                print(f"target first forward pass of a fresh process (import + load + 1x32) <= 0.5 s, {engine}, "
                      f"{threads} thread(s): {first:.3f} s {'met' if first <= 0.5 else 'NOT met'}")
        for shape, limit in (((1, 128), 50), ((32, 128), 100)):
            rss = get(threads, "runtime-int8-emb-numpy", shape, "peak_rss_mb")
            if rss:
                print(f"target NumPy-only int8 (quantized embeddings) peak RSS <= {limit} MB, {threads} thread(s), "
                      f"{shape[0]}x{shape[1]}: {rss:.1f} MB {'met' if rss <= limit else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
