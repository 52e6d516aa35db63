"""Few-token (batch 1, N <= 64) product kernels for the runtime, measured: can pure Numba (no intrinsics, no asm: the
runtime must also run on arm64) beat the runtime's 4x4 block kernel, in particular with int8 x int8 products?

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m tools.experiments.int8_kernels [--reps 200] [--quick]

Compared, on the tinybert4 shapes (weights (O, I) packed to I a multiple of 16, tokens xt (N, I padded) float32):

  int8 weights (row scales), float32 out = scale[o] * (w @ xt.T):
    cur-4x4      the runtime's block kernel (kernel_set("numba").block_product): each int8 weight converted to
                 float32, 4 rows x 4 tokens, FMAs
    q8-RxT       activations quantized per token (s = max|x| / 127, x_q = rint(x / s), int8), int32 accumulators of
                 int32(w) * int32(x_q), R rows x T tokens, out = acc * scale[o] * s[n]; quantization timed in
    q16-4x4      the same with x_q stored as int16 (int8 values): LLVM then emits vpdpwssd (at 128 bits, see asm)
    q8-1x1       one accumulator: the only form where LLVM makes a 256-bit vpmaddwd reduction
    np-int8      the runtime's NumPy path (weights cast to float32 in blocks, BLAS)
  float32 weights:
    f32-4x4      cur kernel on float32 weights; f32-2x8, f32-1x8, f32-1x16: other blockings (weight rows read once
                 for N <= 8 / 16)
    matmul       numpy.matmul(w, x) (OpenBLAS; x (I, N) feature-major as the runtime holds it)

Every kernel has a plain NumPy twin; the check compares them. Then the median microseconds per shape, and the
instructions LLVM emitted (counted over the whole function: the hot loops are where they occur; see --asm).
The generated kernels are written out from one template (source text, exec'd) so that the R x T variants are
the same code; they carry the runtime's edge handling (rows and tokens past the end clamp to the last one).
"""
from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np

from minitinybert import runtime

F32 = np.float32
SHAPES = ((936, 312), (312, 312), (1200, 312), (312, 1200))
TOKENS = (1, 8, 16, 32, 64)
ASM_OPS = ("vpdpbusd", "vpdpwssd", "vpmaddwd", "vpmulld", "vfmadd", "vcvtdq2ps", "vpmovsxbd", "vpmovsxbw",
           "vpmovsxwd", "vpmovzxwd")


# --- kernels (the runtime's block kernel through its public kernel_set; the others written here) -----------------

def quantize_tokens(xt, xq, s):
    """Per token: s[n] = max|xt[n]| / 127, xq[n] = rint(xt[n] * (127 / max|xt[n]|)) (0 for an all-zero token)."""
    for n in range(xt.shape[0]):
        m = np.float32(0.0)
        for i in range(xt.shape[1]):
            m = max(m, abs(xt[n, i]))
        inv = np.float32(127.0) / m if m > 0 else np.float32(0.0)
        s[n] = m / np.float32(127.0)
        for i in range(xt.shape[1]):
            xq[n, i] = np.rint(xt[n, i] * inv)


def np_quantize_tokens(xt, dtype=np.int8):
    m = np.abs(xt).max(axis=1)
    inv = np.where(m > 0, F32(127.0) / np.where(m > 0, m, F32(1.0)), F32(0.0)).astype(F32)
    return np.rint(xt * inv[:, None]).astype(dtype), (m / F32(127.0)).astype(F32)


def block_source(R, T, integer):
    """A block kernel k(w, xt, scale, tscale, out), R weight rows x T tokens, scalar accumulators (LLVM vectorises
    the inner loop over i, one vector per accumulator): float32 FMAs, or int32(w) * int32(x) in int32 (every sum
    truncated with np.int32: Numba's int32 arithmetic is int64), out = acc * scale[o] (* tscale[n] if integer)."""
    cv, z = ("np.int32", "np.int32(0)") if integer else ("np.float32", "np.float32(0.0)")
    acc = [f"a{r}_{t}" for r in range(R) for t in range(T)]
    src = ["def k(w, xt, scale, tscale, out):",
           "    (O, N), I = out.shape, w.shape[1]",
           f"    for o in range(0, O, {R}):",
           "        " + ", ".join(f"w{r}" for r in range(R)) + " = "
           + ", ".join(f"w[min(o + {r}, O - 1)]" for r in range(R)),
           f"        for n in range(0, N, {T}):",
           "            " + ", ".join(f"x{t}" for t in range(T)) + " = "
           + ", ".join(f"xt[min(n + {t}, N - 1)]" for t in range(T)),
           "            " + " = ".join(acc) + f" = {z}",
           "            for i in range(I):"]
    src += [f"                u{r} = {cv}(w{r}[i])" for r in range(R)]
    src += [f"                v{t} = {cv}(x{t}[i])" for t in range(T)]
    src += [f"                a{r}_{t} = np.int32(a{r}_{t} + u{r} * v{t})" if integer else
            f"                a{r}_{t} += u{r} * v{t}" for r in range(R) for t in range(T)]
    for r in range(R):
        src.append(f"            if o + {r} < O:")
        src += [f"                if n + {t} < N: out[o + {r}, n + {t}] = np.float32(a{r}_{t}) * scale[o + {r}]"
                + (f" * tscale[n + {t}]" if integer else "") for t in range(T)]
    return "\n".join(src)


_WORKSPACE = runtime.workspace()


def np_int8_matmul(q, scale, x, out):
    """The runtime's NumPy int8 path (kernel_set("numpy").int8_matmul): weight blocks cast to float32, BLAS, row
    scales."""
    runtime.kernel_set("numpy").int8_matmul(q, scale, x, out, _WORKSPACE)


# --- building, checking, timing ---------------------------------------------------------------------------------

def build():
    import numba
    fast = numba.njit(nogil=True, error_model="numpy", fastmath=True)
    runtime_kernel = runtime.kernel_set("numba").block_product          # the runtime's own, compiled afresh here
    k = {"cur": fast(runtime_kernel.py_func), "quant": fast(quantize_tokens)}   # (a disk-cached one shows no asm)
    for name, (R, T, integer) in {"q8-4x4": (4, 4, 1), "q8-2x8": (2, 8, 1), "q8-1x1": (1, 1, 1),
                                  "f32-2x8": (2, 8, 0), "f32-1x8": (1, 8, 0), "f32-1x16": (1, 16, 0)}.items():
        scope = {"np": np}
        exec(block_source(R, T, integer), scope)     # noqa: S102 (our own template)
        k[name] = fast(scope["k"])
    return k


def kernels(k, wq, scale, wf, x, xt):
    """{name: (run(out), numpy twin())}: out (O, N) float32; x (I, N) is xt's unpadded transpose."""
    O, N = wq.shape[0], xt.shape[0]
    ones, q8, q16, s = np.ones(O, F32), np.empty(xt.shape, np.int8), np.empty(xt.shape, np.int16), np.empty(N, F32)
    nones = np.ones(N, F32)

    def quantized(name, xq):
        def run(out):
            k["quant"](xt, xq, s)
            k[name](wq, xq, scale, s, out)
        return run

    def twin_int():
        q, t = np_quantize_tokens(xt)
        return (wq.astype(np.int32) @ q.T.astype(np.int32)).astype(F32) * scale[:, None] * t[None, :]

    twin_cur = lambda: (wq.astype(F32) @ xt.T) * scale[:, None]             # noqa: E731
    twin_f32 = lambda: wf @ xt.T                                           # noqa: E731
    wf_i = wf[:, :x.shape[0]]
    return {
        "cur-4x4": (lambda out: k["cur"](wq, xt, scale, out), twin_cur),
        "q8-4x4": (quantized("q8-4x4", q8), twin_int),
        "q8-2x8": (quantized("q8-2x8", q8), twin_int),
        "q16-4x4": (quantized("q8-4x4", q16), twin_int),
        "q8-1x1": (quantized("q8-1x1", q8), twin_int),
        "np-int8": (lambda out: np_int8_matmul(wq[:, :x.shape[0]], scale, x, out), twin_cur),
        "f32-4x4": (lambda out: k["cur"](wf, xt, ones, out), twin_f32),
        "f32-2x8": (lambda out: k["f32-2x8"](wf, xt, ones, nones, out), twin_f32),
        "f32-1x8": (lambda out: k["f32-1x8"](wf, xt, ones, nones, out), twin_f32),
        "f32-1x16": (lambda out: k["f32-1x16"](wf, xt, ones, nones, out), twin_f32),
        "matmul": (lambda out: np.matmul(wf_i, x, out=out), twin_f32),
    }


def case(rng, O, I, N):
    Ip = -(-I // 16) * 16
    wq = np.zeros((O, Ip), np.int8)
    wq[:, :I] = rng.integers(-127, 128, (O, I))
    scale = (rng.random(O, dtype=F32) * F32(0.02) + F32(0.001)).astype(F32)
    wf = (wq * scale[:, None]).astype(F32)
    x = (rng.standard_normal((I, N), dtype=F32) * F32(0.7)).astype(F32)
    x[rng.integers(0, I, 3)] *= F32(8.0)                                     # outlier features, as in BERT
    xt = np.zeros((N, Ip), F32)
    xt[:, :I] = x.T
    return wq, scale, wf, x, xt


def median_us(fn, out, reps, seconds=0.25):
    fn(out)
    times, end = [], time.perf_counter() + seconds
    while len(times) < reps or time.perf_counter() < end and len(times) < 20 * reps:
        t = time.perf_counter()
        fn(out)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def asm_counts(fn):
    """Counts of ASM_OPS in the kernel's assembly (all signatures) and the widest vector register used."""
    asm = "\n".join(fn.inspect_asm(sig) for sig in fn.signatures)
    width = next((r for r in ("zmm", "ymm", "xmm") if r in asm), "-")
    return {op: len(re.findall(rf"\b{op}", asm)) for op in ASM_OPS}, width


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="N in 1, 16 and the (312, 1200) and (1200, 312) shapes")
    ap.add_argument("--asm", metavar="KERNEL", help="print the assembly of this kernel (build() key) and exit")
    args = ap.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 for one-thread BLAS figures")
    rng, k = np.random.default_rng(0), build()
    shapes, tokens = (SHAPES[2:], (1, 16)) if args.quick else (SHAPES, TOKENS)
    rows, names = [], None
    for O, I in shapes:
        for N in tokens:
            wq, scale, wf, x, xt = case(rng, O, I, N)
            ks = kernels(k, wq, scale, wf, x, xt)
            names = list(ks)
            row = {}
            for name, (run, twin) in ks.items():
                out, ref = np.empty((O, N), F32), twin()
                run(out)
                err = float(np.abs(out - ref).max() / np.abs(ref).max())
                assert err < 2e-5, f"{name} ({O}, {I}) N={N}: max error {err:.2e} vs its NumPy twin"
                row[name] = median_us(run, out, args.reps)
            rows.append(((O, I), N, row))
            print(f"({O:4}, {I:4}) N={N:<3} " + " ".join(f"{n}={row[n]:.1f}" for n in names), flush=True)
    if args.asm:
        fn = k[args.asm]
        print("\n".join(fn.inspect_asm(sig) for sig in fn.signatures))
        return 0
    print("\nall kernels match their NumPy twins (max |error| / max |ref| < 2e-5)\n")
    print("median microseconds, one thread (q*: per-token activation quantization included)")
    print(f"{'shape':>12} {'N':>3} " + " ".join(f"{n:>9}" for n in names)
          + f" {'best-q/cur':>10} {'best-f/4x4':>10}")
    for (O, I), N, row in rows:
        bq = min(row[n] for n in names if n.startswith("q"))
        bf = min(row[n] for n in ("f32-2x8", "f32-1x8", "f32-1x16"))
        print(f"{f'({O},{I})':>12} {N:>3} " + " ".join(f"{row[n]:9.1f}" for n in names)
              + f" {bq / row['cur-4x4']:10.2f} {bf / row['f32-4x4']:10.2f}")
    print("\ninstructions in each kernel's assembly (signatures compiled above), widest register")
    print(f"{'kernel':>18} " + " ".join(f"{op:>9}" for op in ASM_OPS) + "  width")
    for key, fn in k.items():
        for sig in fn.signatures:
            asm = fn.inspect_asm(sig)
            c = {op: len(re.findall(rf"\b{op}", asm)) for op in ASM_OPS}
            width = next((r for r in ("zmm", "ymm", "xmm") if r in asm), "-")
            label = f"{key}[{sig[0].dtype},{sig[1].dtype}]"
            print(f"{label:>18} " + " ".join(f"{c[op]:9}" for op in ASM_OPS) + f"  {width}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
