"""runtime.py's Numba block product (float32 and int8 weights, packed at load) against its NumPy twin, on odd shapes:
1 token, token counts and row counts off the 4 x 4 block, input sizes off the 16-wide padding; and whole models
(packed weights, background loading of the kernels) against the NumPy-only path."""
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitinybert import runtime
from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.export import export_model
from minitinybert.quantize import quantize_rows

NUMBA = runtime.kernel_set("numba")
NUMPY = runtime.kernel_set("numpy")
needs_numba = pytest.mark.skipif(NUMBA is None, reason="Numba cannot compile the kernels here")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]


def ws(name, shape):
    return np.full(shape, np.nan, np.float32)     # garbage in fresh buffers: the kernels must not read it


def packed(w):
    """The layout the model packs at load: inputs zero-padded to a multiple of 16."""
    out = np.zeros((w.shape[0], -(-w.shape[1] // 16) * 16), w.dtype)
    out[:, :w.shape[1]] = w
    return out


@needs_numba
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 41), st.integers(1, 70), st.integers(1, runtime.KERNEL_MAX_TOKENS), st.booleans(),
       st.booleans(), st.integers(0, 2 ** 32 - 1), st.integers(1, 6))
def test_block_product_equals_numpy(out_f, in_f, tokens, int8, pack, seed, parts):
    """block_product(w, xt, scale, out) = scale[:, None] * (w @ x), float32 rounding apart, for float32 and int8 w,
    packed (inputs padded to 16) or as stored, for any row count, input size and token count up to the limit;
    block_bands(..., parts) is block_product on bands of rows over Numba's threads: the same bits, every row
    written (the output starts as NaN), more bands than blocks of 4 rows included."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(out_f, in_f)).astype(np.float32) * rng.uniform(0.01, 10)
    scale = rng.uniform(0.5, 2.0, out_f).astype(np.float32)
    if int8:
        w, scale = quantize_rows(w)
    x = rng.normal(size=(in_f, tokens)).astype(np.float32)
    expected = scale[:, None].astype(np.float64) * (w.astype(np.float64) @ x)
    bound = scale[:, None] * (np.abs(w).astype(np.float64) @ np.abs(x))       # sum |terms|: the rounding scale
    xt = NUMBA.int8_input(x, ws)
    assert xt.shape == (tokens, -(-in_f // 16) * 16) and np.all(xt[:, in_f:] == 0)
    out = np.full((out_f, tokens), np.nan, np.float32)
    NUMBA.block_product(packed(w) if pack else w, xt, scale, out)
    assert np.all(np.abs(out - expected) <= 1e-5 * bound + 1e-30)
    if NUMBA.block_bands is not None:
        banded = np.full_like(out, np.nan)
        NUMBA.block_bands(packed(w) if pack else w, xt, scale, banded, parts)
        np.testing.assert_array_equal(banded, out)
    if int8:                                   # the NumPy twin a board without Numba runs
        twin = np.full_like(out, np.nan)
        NUMPY.int8_matmul(w, scale, x, twin, ws)
        assert np.all(np.abs(out - twin) <= 2e-5 * bound + 1e-30)


@needs_numba
def test_block_input_hands_larger_products_to_blas():
    x = np.ones((20, runtime.KERNEL_MAX_TOKENS + 1), np.float32)
    assert NUMBA.int8_input(x, ws) is None and NUMPY.int8_input(x, ws) is None
    assert NUMBA.int8_input(x[:, :1], ws).shape == (1, 32)


def export(tmp_path, dtype, hidden=36, heads=3, ffn=50):
    """A small random model with sizes off every block (rows of 4, inputs of 16)."""
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=80, num_labels=3,
                     id2label={i: f"c{i}" for i in range(3)})
    return export_model(Bert(cfg, seed=5), tmp_path / f"{dtype}.safetensors", VOCAB, True, dtype, max_length=80)


@needs_numba
@pytest.mark.parametrize("dtype,threads", [("float32", None), ("int8", None), ("float32", 2), ("int8", 2)])
def test_models_with_packed_weights_equal_numpy(tmp_path, dtype, threads):
    """Whole forward passes, batch 1 and 3, 1 to 40 tokens (the block kernel up to KERNEL_MAX_TOKENS, BLAS past it;
    with threads=2 a single sub-batch's products in bands on Numba's threads, as far as the kernel serves), the last layer for [CLS] only or
    every position: Numba's kernels on packed weights give NumPy's outputs."""
    path = export(tmp_path, dtype)
    fast, slow = runtime.load(path, kernels="numba", threads=threads), runtime.load(path, kernels="numpy")
    assert (fast.kernels, slow.kernels) == ("numba", "numpy")
    rng = np.random.default_rng(0)
    for batch, tokens in [(1, t) for t in (1, 2, 3, 4, 5, 7, 8, 16, 31, 32, 33, 40)] + [(3, 1), (3, 5), (3, 11)]:
        ids = rng.integers(5, len(VOCAB), (batch, tokens))
        mask = np.ones_like(ids)
        mask[-1, tokens // 2 + 1:] = 0
        for hidden in (False, True):
            a, b = (m.forward(ids, attention_mask=mask, hidden=hidden) for m in (fast, slow))
            one_piece = batch == 1 or batch * tokens < runtime.SHARD_MIN_TOKENS      # one sub-batch: not shared
            few = runtime.KERNEL_MAX_TOKENS if dtype == "int8" else runtime.F32_KERNEL_MAX_TOKENS   # the kernel's
            banded = threads == 2 and one_piece and tokens <= few and NUMBA.block_bands
            assert fast._parts == (2 if banded else 1), (batch, tokens)
            for key in ("logits", "pooled") + (("hidden",) if hidden else ()):
                np.testing.assert_allclose(a[key], b[key], rtol=2e-5, atol=2e-5, err_msg=f"{batch}x{tokens} {key}")


@needs_numba
@pytest.mark.skipif(NUMBA is None or NUMBA.block_bands is None or not hasattr(__import__("os"), "fork"),
                    reason="no threaded block kernel, or no fork")
def test_a_forked_process_runs_on_one_thread(tmp_path):
    """GNU OpenMP, under Numba's threads, cannot run in a child forked after it ran: a forked child of a process
    that ran banded passes runs its products on the block kernel alone (no bands), with the same outputs."""
    import multiprocessing
    path = export(tmp_path, "int8")
    model = runtime.load(path, kernels="numba", threads=2)
    ids = np.arange(5, 13).reshape(1, 8)
    parent = model.forward(ids, hidden=False)["logits"]
    assert model._parts == 2
    _FORKED["model"] = model                       # the child inherits it (a model does not pickle)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child, parts = pool.apply_async(_forward_in_child, (ids,)).get(timeout=60)   # (it hung, with bands)
    assert parts == 1
    np.testing.assert_allclose(child, parent, rtol=1e-5, atol=1e-6)


@needs_numba
def test_a_threading_layer_that_cannot_load_leaves_the_block_kernel(tmp_path):
    """Numba's threading layer asked for but missing (NUMBA_THREADING_LAYER=tbb without tbb): no bands, and the rest of
    Numba's kernels still serve (the bands kernel fails inside its own try), with the same outputs as NumPy's."""
    pytest.importorskip("numba")
    if __import__("importlib").util.find_spec("tbb") is not None:
        pytest.skip("tbb is installed: the layer loads")
    path = export(tmp_path, "int8")
    code = ("import json, sys, numpy as np\nfrom minitinybert import runtime\n"
            "m = runtime.load(sys.argv[1], kernels='numba', threads=2)\n"
            "out = m.forward(np.arange(5, 13).reshape(1, 8), hidden=False)['logits']\n"
            "print(json.dumps({'kernels': m.kernels, 'parts': m._parts, 'logits': out.tolist()}))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NUMBA_THREADING_LAYER": "tbb"})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["kernels"] == "numba" and got["parts"] == 1
    ref = runtime.load(path, kernels="numpy").forward(np.arange(5, 13).reshape(1, 8), hidden=False)["logits"]
    np.testing.assert_allclose(got["logits"], ref, rtol=1e-5, atol=1e-5)


_FORKED = {}


def _forward_in_child(ids):
    model = _FORKED["model"]
    return model.forward(ids, hidden=False)["logits"], model._parts


PROBE = """
import json, sys, time, importlib.util
import numpy as np
spec = importlib.util.spec_from_file_location("runtime", sys.argv[1])
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)
model = rt.load(sys.argv[2])
ids = np.arange(5, 25).reshape(1, 20)
t = time.perf_counter()
first = model.forward(ids, hidden=False)["logits"]
first_s = time.perf_counter() - t
numba_loaded_before_first = "numba" in sys.modules and model._kernels.name == "numba"
name = model.kernels                                  # waits for Numba's kernels
later = model.forward(ids, hidden=False)["logits"]
print(json.dumps({"first_s": first_s, "kernels": name, "numba_first": numba_loaded_before_first,
                  "diff": float(np.abs(first - later).max())}))
"""


@needs_numba
def test_fresh_process_answers_before_numba_is_loaded(tmp_path):
    """The first forward pass of a fresh process runs on NumPy (Numba loads in a thread), later ones on Numba's
    kernels: the same logits to float rounding."""
    path = export(tmp_path, "int8")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(Path(runtime.__file__)), str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["kernels"] == "numba" and not out["numba_first"] and out["diff"] < 1e-4, out


@needs_numba
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 machine code")
def test_block_product_is_vectorised():
    """LLVM vectorises the 4 x 4 block's inner loop: 16 packed FMAs (ymm or zmm) a step; int8 weights widened in
    registers (vpmovsxbd, vcvtdq2ps): what inspect_asm shows."""
    import numba                               # the runtime's kernel and options, compiled afresh (code from the
    options = {k: v for k, v in NUMBA.block_product.targetoptions.items() if k not in ("cache", "nopython")}
    kernel = numba.njit(**options)(NUMBA.block_product.py_func)        # disk cache shows no assembly)
    for dtype in ("float32", "int8"):
        x, scale, out = np.ones((4, 32), np.float32), np.ones(4, np.float32), np.empty((4, 4), np.float32)
        kernel(x.astype(dtype), x, scale, out)
        asm = kernel.inspect_asm(kernel.signatures[-1])
        packed = re.findall(r"vfmadd\d+ps\s+%[yz]mm", asm)
        assert len(packed) >= 16, (dtype, len(packed))
        if dtype == "int8":
            assert re.search(r"vpmovsxbd\s+[^\n]*%[yz]mm", asm) and re.search(r"vcvtdq2ps\s+%[yz]mm", asm)
