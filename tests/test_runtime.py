"""The edge runtime against the training engine: same logits, pooled and hidden states from an
exported float32 file (small random models and the real teacher), float16 and int8 close, bucketed
batching equal to one-by-one inference, script mode."""
import json
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitinybert import runtime
from minitinybert.engine.config import BertConfig
from minitinybert.export import export_model, export_runtime
from minitinybert.quantize import quantize_rows
from minitinybert.engine.model import Bert
from minitinybert.engine.weights import save_checkpoint

RUNTIME_PY = Path(runtime.__file__)
WORDS = ["the", "an", "movie", "film", "good", "bad", "great", "dull", "plot", "actor", "is", "was", "not",
         "very", "hello", "world", "play", "##ing", "##s", "##ed", "##ly", "cafe"]
VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
                           + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list(".,!?'-()") + WORDS))
TEXTS = ["the movie was great", "a dull plot , not very good !", "hello world", "Playing",
         "the actor was bad and the film was dull , the plot was not good at all",
         "Café", "x", "good good good good good good good good good good", "", "zzz qqq"]


def small_config(num_labels, **overrides):
    cfg = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=64, num_labels=num_labels)
    if num_labels >= 2:
        cfg["id2label"] = {i: f"class{i}" for i in range(num_labels)}
    cfg.update(overrides)
    return BertConfig(**cfg)


def make_checkpoint(tmp_path, num_labels, seed=0, sharpen=1.0, **overrides):
    model = Bert(small_config(num_labels, **overrides), seed=seed)
    if num_labels and sharpen != 1.0:
        model.params["classifier.weight"][...] *= sharpen
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    save_checkpoint(model, tmp_path / f"ckpt{num_labels}", vocab_from=vocab)
    return model, tmp_path / f"ckpt{num_labels}"


def close(a, b, tol=1e-5):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def mean_pool(hidden, mask):
    m = mask.astype(np.float64)[:, :, None]
    return (hidden * m).sum(axis=1) / m.sum(axis=1)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("num_labels", [2, 3, 1, 0])
def test_float32_export_equals_engine(tmp_path, num_labels):
    model, ckpt = make_checkpoint(tmp_path, num_labels, seed=num_labels)
    out = export_runtime(ckpt, tmp_path / "m.safetensors", "float32", max_length=24)
    rm = runtime.load(out)
    assert rm.num_labels == num_labels and rm.max_length == 24 and rm.dtype == "float32"
    pairs = [(a, b) for a, b in zip(TEXTS, reversed(TEXTS))]
    for inputs in (TEXTS, pairs):
        batch = rm.tokenize(inputs)
        assert batch["attention_mask"].min() == 0        # padding, so the mask is exercised
        got = rm.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        ref = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        mask = batch["attention_mask"].astype(bool)
        close(got["hidden"][mask], ref.hidden_states[-1][mask])
        close(got["pooled"], ref.pooled)
        short = rm.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], hidden=False)
        assert short["hidden"] is None                    # last layer for the [CLS] queries only
        close(short["pooled"], ref.pooled)
        if num_labels:
            close(got["logits"], ref.logits)
            close(short["logits"], ref.logits)
            close(rm.logits(inputs, batch_size=4), ref.logits)
        else:
            assert got["logits"] is None
        close(rm.embed(inputs, pooling="mean"), unit(mean_pool(ref.hidden_states[-1], batch["attention_mask"])))
        close(rm.embed(inputs, pooling="cls"), unit(ref.pooled))

    if num_labels >= 2:
        ref = model.forward(*(rm.tokenize(TEXTS)[k] for k in ("input_ids", "token_type_ids", "attention_mask")))
        probs = np.exp(ref.logits - ref.logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        predictions = rm.predict(TEXTS)
        for row, pred in zip(probs, predictions):
            assert list(pred["scores"]) == [f"class{i}" for i in range(num_labels)]
            close([pred["scores"][f"class{i}"] for i in range(num_labels)], row)
            assert pred["label"] == f"class{int(np.argmax(row))}"
    elif num_labels == 1:
        ref = model.forward(rm.tokenize(TEXTS)["input_ids"], None, rm.tokenize(TEXTS)["attention_mask"])
        close([p["score"] for p in rm.predict(TEXTS)], ref.logits[:, 0])
    else:
        with pytest.raises(runtime.RuntimeModelError, match="embed"):
            rm.predict(TEXTS)


def test_load_maps_the_weights_without_copying_them(tmp_path):
    """float32 and int8 weights are used from the memory map: loading allocates a small fraction of
    the file (a float32 copy of the int8 weights, or a concatenated q/k/v, would exceed it)."""
    model, ckpt = make_checkpoint(tmp_path, 2, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    for dtype in ("float32", "int8"):
        path = export_runtime(ckpt, tmp_path / f"{dtype}.safetensors", dtype)
        tracemalloc.start()
        try:
            rm = runtime.load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 0.15 * path.stat().st_size, (dtype, peak, path.stat().st_size)
        batch = rm.tokenize(TEXTS)
        ref = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits
        close(rm.logits(TEXTS), ref, 1e-5 if dtype == "float32" else 0.05)


def test_bucketing_preserves_order_and_equals_one_by_one(tmp_path):
    _, ckpt = make_checkpoint(tmp_path, 3, seed=5)
    rm = runtime.load(export_runtime(ckpt, tmp_path / "m.safetensors"))
    texts = TEXTS * 2 + ["the plot"] * 3
    bucketed = rm.logits(texts, batch_size=3)
    single = np.stack([rm.logits([t], batch_size=1)[0] for t in texts])
    close(bucketed, single)
    assert [p["label"] for p in rm.predict(texts, batch_size=4)] == [p["label"] for p in rm.predict(texts, 1000)]
    emb = rm.embed(texts, batch_size=2)
    close(emb, np.stack([rm.embed([t])[0] for t in texts]))


def test_truncation_and_max_length(tmp_path):
    _, ckpt = make_checkpoint(tmp_path, 2)
    rm = runtime.load(export_runtime(ckpt, tmp_path / "m.safetensors", max_length=8))
    batch = rm.tokenize([TEXTS[4], "hello"])
    assert batch["input_ids"].shape == (2, 8) and batch["truncated"].tolist() == [True, False]
    assert rm.tokenize([TEXTS[4]], max_length=64)["input_ids"].shape[1] > 8
    with pytest.raises(runtime.RuntimeModelError, match="max_length"):
        rm.tokenize(["a"], max_length=65)
    with pytest.raises(runtime.RuntimeModelError, match="no inputs"):
        rm.predict([])
    with pytest.raises(runtime.RuntimeModelError):
        rm.predict(["a", ("b", "c")])
    with pytest.raises(runtime.RuntimeModelError, match="batch_size"):
        rm.predict(["a"], batch_size=0)
    # a bare text or pair is one input
    assert len(rm.predict("hello")) == 1 and len(rm.predict(("hello", "world"))) == 1


def test_float16_and_int8_are_close(tmp_path):
    # linear weights dominate: small vocabulary, wide layers
    model, ckpt = make_checkpoint(tmp_path, 2, seed=3, sharpen=10.0, hidden_size=64, intermediate_size=256,
                                  num_attention_heads=4, initializer_range=0.1)
    texts = TEXTS + [f"{a} {b} {c}" for a in WORDS[:6] for b in WORDS[4:8] for c in ("film", "plot")]
    # centre the head on these texts so that both classes occur
    first = runtime.load(export_runtime(ckpt, tmp_path / "first.safetensors")).logits(texts)
    model.params["classifier.bias"][...] -= np.median(first, axis=0)
    save_checkpoint(model, ckpt, vocab_from=tmp_path / "vocab.txt")
    files = {dt: export_runtime(ckpt, tmp_path / f"{dt}.safetensors", dt, quantize_embeddings=True)
             for dt in ("float32", "float16", "int8")}
    sizes = {dt: path.stat().st_size for dt, path in files.items()}
    assert sizes["int8"] <= 0.3 * sizes["float32"]
    assert sizes["float16"] <= 0.55 * sizes["float32"]
    ref = runtime.load(files["float32"]).logits(texts)
    labels = ref.argmax(1)
    assert 0.2 < labels.mean() < 0.8                      # both classes occur
    spread = np.abs(ref).max()
    for dtype, tol in (("float16", 5e-3), ("int8", 0.1)):
        got = runtime.load(files[dtype]).logits(texts)
        assert np.abs(got - ref).max() <= tol * spread, dtype
        assert (got.argmax(1) == labels).mean() >= 0.9, dtype


def test_quantize_rows():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, 33)).astype(np.float32)
    w[3] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale[3] == 0
    assert np.abs(q).max() == 127
    np.testing.assert_allclose(q * scale[:, None], w, atol=float(scale.max()) / 2 + 1e-7)


KERNEL_SETS = [k for k in (runtime.kernel_set("numpy"), runtime.kernel_set("numba")) if k is not None]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 70), st.integers(1, 2 * runtime.INT8_KERNEL_MAX_TOKENS),
       st.integers(0, 2 ** 32 - 1), st.booleans())
def test_int8_product_equals_float32_product_of_the_dequantized_weight(out_f, in_f, tokens, seed, zero_row):
    """The int8 product (NumPy: cast weight; Numba: int8 read in the kernel, up to
    INT8_KERNEL_MAX_TOKENS tokens, then the NumPy path) is (q * scale) @ x, float32 rounding apart."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(out_f, in_f)).astype(np.float32) * rng.uniform(0.01, 10)
    if zero_row:
        w[0] = 0.0
    q, scale = quantize_rows(w)
    x = rng.normal(size=(in_f, tokens)).astype(np.float32)
    expected = (q.astype(np.float64) * scale[:, None].astype(np.float64)) @ x
    bound = (np.abs(q).astype(np.float64) * scale[:, None]) @ np.abs(x)      # sum |terms|: rounding scale
    for kernels in KERNEL_SETS:
        ws = runtime.workspace()
        out = np.full((out_f, tokens), np.nan, np.float32)
        xt = kernels.int8_input(x, ws)                # Numba's block kernel up to KERNEL_MAX_TOKENS, else NumPy's
        kernels.block_product(q, xt, scale, out) if xt is not None else kernels.int8_matmul(q, scale, x, out, ws)
        assert np.all(np.abs(out - expected) <= 1e-5 * bound + 1e-30), kernels.name


def test_int8_file_computes_the_dequantized_model(tmp_path):
    """An int8 file gives the logits of the float32 model whose weights are q * scale (so int8's
    accuracy is that model's: no error beyond the weights' rounding, whatever the kernel)."""
    model, ckpt = make_checkpoint(tmp_path, 2, seed=11, hidden_size=64, intermediate_size=128)
    int8_path = export_runtime(ckpt, tmp_path / "int8.safetensors", "int8", quantize_embeddings=True)
    from minitinybert.export import runtime_tensors
    for name, value in runtime_tensors(model.state_dict(), "float32"):
        if name in model.params and value.ndim == 2 and not name.startswith("classifier."):
            q, scale = quantize_rows(value)
            model.params[name][...] = q * scale[:, None]
    f32_path = export_model(model, tmp_path / "dequantized.safetensors", VOCAB, True, "float32")
    texts = TEXTS + [f"{a} {b}" for a in WORDS for b in WORDS[:12]]     # up to 2 x 32-token products and more
    expected = runtime.load(f32_path, kernels="numpy").logits(texts)
    for kernels in ("numpy", "auto"):
        for batch_size in (3, 64):                 # products of a few tokens (the int8 kernel), and many
            close(runtime.load(int8_path, kernels=kernels).logits(texts, batch_size=batch_size), expected, 2e-5)


def test_gelu_accuracy():
    """The exact (erf) GELU of both kernel sets, float32, against math.erf in float64."""
    x = np.linspace(-10, 10, 20000)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    for kernels in KERNEL_SETS:
        h = x.astype(np.float32).reshape(2, -1).copy()                  # (features, tokens)
        kernels.bias_gelu(h, np.zeros(2, np.float32), runtime.workspace())
        assert np.all(np.abs(h.ravel() - ref) <= 1e-6 + 3e-7 * np.abs(ref)), kernels.name


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 40), st.integers(0, 2 ** 32 - 1),
       st.booleans())
def test_softmax_kernels_agree(batch, heads, queries, keys, seed, masked):
    """Every kernel set's attention softmax is NumPy's, for row lengths on and off the Numba kernel's
    eight-wide maximum and with padded keys; scores up to ~10^4 overflow exp unless the row maximum is right."""
    rng = np.random.default_rng(seed)
    scores = (rng.normal(size=(batch, heads, queries, keys)) * rng.choice([1.0, 3000.0])).astype(np.float32)
    mask = np.zeros((batch, keys), np.float32)
    if masked:
        mask[:, rng.integers(1, keys + 1):] = -10000.0
    expected = scores.astype(np.float64) * 0.125 + mask[:, None, None, :]
    expected = np.exp(expected - expected.max(axis=-1, keepdims=True))
    expected /= expected.sum(axis=-1, keepdims=True)
    for kernels in KERNEL_SETS:
        out = scores.copy()
        kernels.softmax(out, mask, np.float32(0.125))
        np.testing.assert_allclose(out, expected, atol=2e-6, err_msg=kernels.name)


def test_numpy_and_numba_kernels_agree(tmp_path):
    pytest.importorskip("numba")
    _, ckpt = make_checkpoint(tmp_path, 3, seed=9)
    path = export_runtime(ckpt, tmp_path / "m.safetensors")
    a, b = runtime.load(path, kernels="numpy"), runtime.load(path, kernels="numba")
    pairs = list(zip(TEXTS, TEXTS[1:]))
    close(a.logits(pairs), b.logits(pairs), 1e-6)
    assert (a.kernels, b.kernels) == ("numpy", "numba")


@pytest.mark.slow
def test_real_teacher_embeddings_equal_engine(tmp_path):
    from minitinybert.engine.teacher import resolve_teacher
    from minitinybert.engine.weights import load_model

    teacher_dir = resolve_teacher(None)
    model = load_model(teacher_dir)
    rm = runtime.load(export_runtime(teacher_dir, tmp_path / "teacher.safetensors", "float32"))
    assert rm.problem_type == "embedding" and rm.config["hidden_size"] == 384
    texts = ["A man is playing a guitar.", "Un café très crème, s'il vous plaît!", "The quick brown fox",
             "Transformers distil knowledge into smaller students; TinyBERT does so layer by layer."]
    batch = rm.tokenize(texts)
    ref = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    close(rm.embed(texts, pooling="mean"), unit(mean_pool(ref.hidden_states[-1], batch["attention_mask"])))
    close(rm.embed(texts, pooling="cls"), unit(ref.pooled))
    # sentence-transformers semantics: similar sentences are closer
    e = rm.embed(["A man is playing a guitar.", "Someone plays an instrument.", "Stock markets fell today."])
    assert e[0] @ e[1] > e[0] @ e[2]


def test_script_mode(tmp_path):
    _, ckpt = make_checkpoint(tmp_path, 2, seed=4)
    path = export_runtime(ckpt, tmp_path / "m.safetensors")
    texts = ["the movie was great", "a dull plot"]
    proc = subprocess.run([sys.executable, str(RUNTIME_PY), str(path), *texts], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = runtime.load(path).predict(texts)
    assert [x["text"] for x in lines] == texts
    for line, exp in zip(lines, expected):
        assert line["label"] == exp["label"]
        close(list(line["scores"].values()), list(exp["scores"].values()))
    piped = subprocess.run([sys.executable, str(RUNTIME_PY), str(path)], input="the plot\tdull\n\nhello\tworld\n",
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    lines = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [(x["text"], x["text_pair"]) for x in lines] == [("the plot", "dull"), ("hello", "world")]
    assert lines[0]["label"] == runtime.load(path).predict([("the plot", "dull")])[0]["label"]
    bad = subprocess.run([sys.executable, str(RUNTIME_PY), str(tmp_path / "missing.safetensors"), "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr


def test_export_cli_table(tmp_path):
    import contextlib
    import io

    from minitinybert.export import main
    _, ckpt = make_checkpoint(tmp_path, 2)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(ckpt), "--out", str(tmp_path / "out"), "--dtypes", "int8,float32"]) == 0
    table = buf.getvalue()
    assert "float32" in table and "int8" in table and "1.000" in table
    assert (tmp_path / "out" / "runtime-int8.safetensors").exists()
    assert main([str(ckpt), "--out", str(tmp_path / "out"), "--dtypes", "float64"]) == 2
    # with a task: each file's dev metric, computed by the runtime, and its change from float32
    dev = tmp_path / "data" / "glue" / "SST-2" / "dev.tsv"
    dev.parent.mkdir(parents=True)
    dev.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(ckpt), "--out", str(tmp_path / "out2"), "--task", "sst2", "--data", str(tmp_path / "data"),
                     "--dtypes", "float32,float16,int8", "--quantize-embeddings"]) == 0
    rows = [line.split() for line in buf.getvalue().splitlines()[2:]]
    assert [r[0] for r in rows] == ["float32", "float16", "int8"]
    from minitinybert.data.metrics import evaluate
    expected = evaluate("sst2", runtime.load(tmp_path / "out2" / "runtime-float32.safetensors").logits(TEXTS),
                        np.arange(len(TEXTS)) % 2)["main"]
    assert abs(float(rows[0][3]) - expected) < 1e-4 and float(rows[0][4]) == 0.0
    assert all(len(r) == 5 for r in rows)
    assert main([str(ckpt), "--out", str(tmp_path / "out3"), "--task", "stsb", "--data", str(tmp_path / "data")]) == 2


def test_export_drops_training_tensors_and_is_readable_by_safetensors(tmp_path):
    from safetensors.numpy import load_file
    model = Bert(small_config(2, fit_size=48, mlm_head=True), seed=0)
    path = export_model(model, tmp_path / "m.safetensors", VOCAB, True, "int8")
    names = set(load_file(str(path)))
    assert not any(n.startswith(("fit_dense", "cls.")) for n in names)
    assert "encoder.layer.0.attention.self.query.weight_scale" in names
    assert "classifier.weight" in names
    rm = runtime.load(path)
    assert rm.labels == ["class0", "class1"]


THREADS_PROBE = """
import json, sys, threading
from minitinybert import runtime
# every batch of several texts shared, however small (a single text: its products on BLAS's threads)
runtime.SHARD_MIN_TOKENS, runtime.CHUNK_TOKENS = 0, int(sys.argv[4])
m = runtime.load(sys.argv[1], threads=int(sys.argv[2]), kernels=sys.argv[3])
texts = json.loads(sys.argv[5])
print(json.dumps({"logits": m.logits(texts, batch_size=8).tolist(), "single": m.logits(texts[4:5]).tolist(),
                  "embed": m.embed(texts, batch_size=8).tolist(),
                  "helpers": sum(t.name.startswith("minitinybert-runtime") for t in threading.enumerate())}))
"""


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_threads_give_the_same_results(tmp_path, dtype):
    """threads=N (sub-batches shared among N threads, or one sub-batch on N BLAS threads; BLAS set
    process-wide, hence subprocesses) gives the single-threaded results."""
    _, ckpt = make_checkpoint(tmp_path, 3, seed=6, max_position_embeddings=64)
    path = export_runtime(ckpt, tmp_path / "m.safetensors", dtype)
    texts = TEXTS * 4
    outputs = {}
    for threads, kernels, chunk in ((1, "numpy", 4096), (1, "auto", 16), (3, "numpy", 16), (3, "auto", 16),
                                    (2, "auto", 4096)):
        proc = subprocess.run([sys.executable, "-c", THREADS_PROBE, str(path), str(threads), kernels, str(chunk),
                               json.dumps(texts)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs[threads, kernels, chunk] = out = json.loads(proc.stdout)
        assert out["helpers"] == threads - 1           # batches of several texts did go to other threads
    reference = outputs[1, "numpy", 4096]
    for key, out in outputs.items():
        for name in ("logits", "single", "embed"):
            close(out[name], reference[name], 1e-5)
    rm = runtime.load(path)
    close(reference["logits"], rm.logits(texts), 1e-5)
    close(reference["single"], rm.logits(texts[4:5]), 1e-5)


def test_concurrent_callers(tmp_path):
    _, ckpt = make_checkpoint(tmp_path, 2, seed=8)
    path = export_runtime(ckpt, tmp_path / "m.safetensors")
    code = """
import json, sys, threading
import numpy as np
from minitinybert import runtime
texts = json.loads(sys.argv[2])
runtime.SHARD_MIN_TOKENS, runtime.CHUNK_TOKENS = 0, 16
models = [runtime.load(sys.argv[1], threads=2, kernels="numpy") for _ in range(2)]
expected = models[0].logits(texts)
results, errors = [], []
def run(m):
    try:
        for _ in range(5):
            results.append(m.logits(texts))
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=run, args=(m,)) for m in models + models]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps([errors, max(float(np.abs(r - expected).max()) for r in results), len(results)]))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(path), json.dumps(TEXTS * 3)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    errors, diff, count = json.loads(proc.stdout)
    assert errors == [] and count == 20 and diff < 1e-6

