"""export --embedding-bits 4: the word-embedding table at 4 bits (symmetric, a float16 scale per group of
--embedding-group values of a row, or a float32 scale per row with 0; two values a byte, low nibble first)
and the runtime that reads it. The runtime's rows are the formula's rows exactly
(checked through whole forward passes against a float32 file holding the rows the test computes, beside
controls built from wrong unpackings); the file is smaller by half the table; odd widths carry a padding
nibble; bad options and damaged tables are refused with clear messages."""
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minitinybert import export, runtime
from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.engine.weights import save_checkpoint
from minitinybert.export import ExportError, export_model, export_runtime, main, write_safetensors
from minitinybert.quantize import quantize_groups, quantize_rows_int4
from minitinybert.runtime import RuntimeModelError

WORD = "embeddings.word_embeddings.weight"
VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
                           + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list(".,!?")
                           + ["the", "movie", "film", "good", "bad", "great", "dull", "plot", "is", "was", "not"]))
TEXTS = ["the movie was great", "a dull plot , not very good !", "bad film", "good good good", "xyz", "q",
         "the plot is not dull", "great movie !", "was it good ?", "film"]


def small_model(hidden=32, heads=4, seed=0, initializer_range=0.02):
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                     intermediate_size=48, max_position_embeddings=64, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, initializer_range=initializer_range)
    model = Bert(cfg, seed=seed)
    model.params["classifier.weight"][...] *= 20.0         # logits that differ between texts
    return model


def reference_rows(table, swap=False, unsigned=False, group=0):
    """The 4-bit rows by the documented formula, computed here: scale = max|row| / 7 (float32), q =
    round(row / scale) in [-7, 7] (q = 0 for a row of zeros), row ~= q * scale; with group N, the same per
    group: G = ceil(C / N) groups of ceil(C / G) values, scale = max|group| / 7 rounded to float16. swap /
    unsigned: what a wrong unpacking would give (nibbles in the other order; no sign extension, so -1 reads
    as 15)."""
    w = np.asarray(table, np.float32)
    if group:
        count = -(-w.shape[1] // group)
        size = -(-w.shape[1] // count)
        starts = np.arange(w.shape[1]) // size                       # each value's group
        peak = np.stack([np.abs(w[:, starts == g]).max(axis=1) for g in range(count)], axis=1)
        scale = (peak / np.float32(7)).astype(np.float16).astype(np.float32)[:, starts]
    else:
        scale = (np.abs(w).max(axis=1) / np.float32(7))[:, None]
    q = np.clip(np.rint(w / np.where(scale > 0, scale, np.float32(1))), -7, 7).astype(np.int8)
    if swap:
        q = np.pad(q, ((0, 0), (0, q.shape[1] % 2))).reshape(len(q), -1, 2)[:, :, ::-1].reshape(len(q), -1)
        q = q[:, :w.shape[1]]
    if unsigned:
        q = np.where(q < 0, q + 16, q)
    return q.astype(np.float32) * scale


def tensors_of(path):
    """(metadata, [(name, array)]) of a file, as read (arrays copied out of the map)."""
    metadata, tensors, _ = runtime.read_safetensors(path)
    return metadata, [(name, np.array(array)) for name, (_, array, _) in tensors.items()]


def rewrite(src, dst, change):
    """dst: src's tensors through change([(name, array)]) -> [(name, array)], float32 first (aligned)."""
    metadata, items = tensors_of(src)
    items = sorted(change(items), key=lambda item: -item[1].dtype.itemsize)
    write_safetensors(dst, items, metadata)
    return dst


def with_word_table(src, dst, table):
    """src with its word-embedding table replaced by a float32 one (and no scale for it)."""
    return rewrite(src, dst, lambda items: [(n, table if n == WORD else a) for n, a in items if n != WORD + "_scale"])


def run(path):
    """Last hidden states and logits of the file on every vocabulary id (all rows gathered), NumPy kernels."""
    model = runtime.load(path, kernels="numpy")
    ids = np.arange(len(VOCAB) + (-len(VOCAB) % 8)).reshape(8, -1) % len(VOCAB)
    out = model.forward(ids, np.arange(ids.size).reshape(ids.shape) % 2, np.ones_like(ids))
    return out["hidden"], out["logits"]


# --- the packing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 7, 32, 33])
def test_packing_is_the_formula_low_nibble_first(width):
    rng = np.random.default_rng(width)
    w = rng.normal(size=(6, width)).astype(np.float32) * rng.uniform(0.01, 5, size=(6, 1)).astype(np.float32)
    w[2] = 0.0                                                      # a row of zeros: scale 0, q 0
    packed, scale = quantize_rows_int4(w, group=0)
    assert packed.dtype == np.uint8 and packed.shape == (6, (width + 1) // 2) and scale.dtype == np.float32
    assert scale[2] == 0 and not packed[2].any()
    np.testing.assert_array_equal(scale, np.abs(w).max(axis=1) / np.float32(7))
    low, high = (packed & 15).astype(int), (packed >> 4).astype(int)
    q = np.stack([np.where(low >= 8, low - 16, low), np.where(high >= 8, high - 16, high)], -1).reshape(6, -1)
    if width % 2:
        assert not high[:, -1].any()                                # the padding nibble is 0
    q = q[:, :width].astype(np.float32)
    assert q.min() >= -7 and q.max() <= 7 and (np.abs(q).max(axis=1)[[0, 1, 3, 4, 5]] == 7).all()
    np.testing.assert_array_equal(q * scale[:, None], reference_rows(w))
    assert np.abs(q * scale[:, None] - w).max() <= scale.max() / 2 + 1e-6
    if width > 1:                                                   # the control: the other order differs
        assert not np.array_equal(q * scale[:, None], reference_rows(w, swap=True))


@pytest.mark.parametrize("width,group,count,size", [(312, 16, 20, 16), (312, 32, 10, 32), (33, 16, 3, 11),
                                                    (33, 10, 4, 9), (7, 16, 1, 7), (5, 1, 5, 1)])
def test_groups_are_the_formula(width, group, count, size):
    """G = ceil(C / group) groups of ceil(C / G) values (none empty), a float16 scale each, max|group| / 7
    rounded, q made from the rounded scale: every value within half its group's scale. A group of zeros has
    scale 0 and q 0. The control: per-row scales of the same rows are coarser."""
    rng = np.random.default_rng(width * group)
    w = rng.normal(size=(5, width)).astype(np.float32) * rng.uniform(0.01, 3, size=(5, width)).astype(np.float32)
    w[1, :size] = 0.0                                               # a group of zeros
    q, scale = quantize_groups(w, 7, group)
    assert q.dtype == np.int8 and q.shape == w.shape and scale.dtype == np.float16 and scale.shape == (5, count)
    assert (count - 1) * size < width <= count * size
    owner = np.arange(width) // size
    full = scale.astype(np.float32)[:, owner]
    assert scale[1, 0] == 0 and not q[1, :size].any()
    for g in range(count):
        peak = np.abs(w[:, owner == g]).max(axis=1)
        np.testing.assert_array_equal(scale[:, g], (peak / np.float32(7)).astype(np.float16))
    assert np.abs(q).max() <= 7
    assert np.all(np.abs(q * full - w) <= full * 0.5 * (1 + 1e-3) + 1e-7)
    np.testing.assert_array_equal(q * full, reference_rows(w, group=group))
    packed, packed_scale = quantize_rows_int4(w, group=group)
    assert packed.shape == (5, (width + 1) // 2) and np.array_equal(packed_scale, scale)
    if count > 1:                                                    # the control: one scale a row is coarser
        assert np.abs(reference_rows(w) - w).mean() > np.abs(q * full - w).mean()


# --- the runtime reads the formula's rows, exactly --------------------------------------------------

@pytest.mark.parametrize("hidden,heads,group", [(32, 4, 0), (33, 3, 0), (32, 4, 16), (33, 3, 16), (33, 3, 10)])
def test_runtime_rows_are_the_formulas_exactly(tmp_path, hidden, heads, group):
    """A 4-bit file computes exactly what the same file with the word table as float32 rows (q * scale,
    computed here) computes: the runtime's gathered rows are those rows, every one of them (all ids are
    run). Files from wrong unpackings (nibbles swapped, no sign extension) or with the other scales (per
    row for groups, groups for per row) differ: the check can fail. 33: the last byte's high nibble is
    padding; groups of 10 on 33 values: 4 groups of 9, the last of 6."""
    model = small_model(hidden, heads)
    four = export_model(model, tmp_path / "four.st", VOCAB, True, "int8", True, embedding_bits=4,
                        embedding_group=group)
    _, tensors, _ = runtime.read_safetensors(four)
    assert tensors[WORD][0] == "U8" and tensors[WORD][1].shape == (len(VOCAB), (hidden + 1) // 2)
    scale_dtype, scale, _ = tensors[WORD + "_scale"]
    assert (scale_dtype, scale.shape) == (("F16", (len(VOCAB), -(-hidden // group))) if group
                                          else ("F32", (len(VOCAB),)))
    assert all(tensors[f"embeddings.{n}_embeddings.weight"][0] == "I8" for n in ("position", "token_type"))
    table = model.state_dict()[WORD]
    hidden_4, logits_4 = run(four)
    hidden_ref, logits_ref = run(with_word_table(four, tmp_path / "ref.st", reference_rows(table, group=group)))
    np.testing.assert_array_equal(hidden_4, hidden_ref)
    np.testing.assert_array_equal(logits_4, logits_ref)
    for wrong in (dict(swap=True), dict(unsigned=True), dict(group=0 if group else 16)):
        hidden_bad, _ = run(with_word_table(four, tmp_path / "bad.st", reference_rows(table, group=group, **wrong)
                                            if "group" not in wrong else reference_rows(table, **wrong)))
        assert not np.array_equal(hidden_4, hidden_bad), wrong


def test_logits_are_close_to_the_int8_embedding_files(tmp_path):
    """4 bits move the logits a little from the int8-embedding file's (a loose bound: half their spread
    between texts; measured ~0.25), far less than a wrongly unpacked table would (~4 to 5 times it)."""
    model = small_model(64, 4, seed=5, initializer_range=0.1)         # logits that vary between texts
    first = runtime.load(export_model(model, tmp_path / "first.st", VOCAB, True, "float32")).logits(TEXTS)
    model.params["classifier.bias"][1] -= np.median(first[:, 1] - first[:, 0])     # both classes occur
    eight = runtime.load(export_model(model, tmp_path / "eight.st", VOCAB, True, "int8", True))
    four_path = export_model(model, tmp_path / "four.st", VOCAB, True, "int8", True, embedding_bits=4)
    ref, got = eight.logits(TEXTS), runtime.load(four_path).logits(TEXTS)
    spread = np.abs(ref - ref.mean(axis=0)).max()
    assert 0.2 <= ref.argmax(1).mean() <= 0.8
    assert np.abs(got - ref).max() <= 0.5 * spread
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8
    for wrong in (dict(swap=True), dict(unsigned=True)):                 # the controls
        bad = with_word_table(four_path, tmp_path / "bad.st", reference_rows(model.state_dict()[WORD], **wrong))
        assert np.abs(runtime.load(bad).logits(TEXTS) - ref).max() > 0.5 * spread, wrong


# --- size ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden,heads,group", [(32, 4, 0), (33, 3, 0), (32, 4, 16), (33, 3, 16)])
def test_file_is_smaller_by_half_the_word_table(tmp_path, hidden, heads, group):
    """Half the table's bytes go; with groups, float16 scales (2 bytes a group) replace the float32 row scale."""
    model = small_model(hidden, heads)
    eight = export_model(model, tmp_path / "eight.st", VOCAB, True, "int8", True).stat().st_size
    four = export_model(model, tmp_path / "four.st", VOCAB, True, "int8", True, embedding_bits=4,
                        embedding_group=group).stat().st_size
    saved = len(VOCAB) * (hidden - (hidden + 1) // 2)                # the table's bytes, less its packed bytes
    if group:
        saved -= len(VOCAB) * (2 * -(-hidden // group) - 4)
    assert abs((eight - four) - saved) <= 16                        # (the headers differ by a few digits)


# --- the command ----------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint and an SST-2 folder (train and dev)."""
    model = small_model(seed=3)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    save_checkpoint(model, tmp_path / "ckpt", vocab_from=vocab)
    sst = tmp_path / "data" / "glue" / "SST-2"
    sst.mkdir(parents=True)
    (sst / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in TEXTS[:6]), encoding="utf-8")
    (sst / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(TEXTS)),
                                 encoding="utf-8")
    return tmp_path


def table_rows(printed):
    return {r[0]: r for r in (line.split() for line in printed.splitlines()) if r and r[0] in ("float32", "int8")}


def test_command_writes_a_4bit_int8_file_and_prints_its_size_ratio_and_metric(checkpoint, capsys, monkeypatch):
    base = [str(checkpoint / "ckpt"), "--dtypes", "float32,int8", "--quantize-embeddings", "--task", "sst2",
            "--data", str(checkpoint / "data")]
    assert main(base + ["--out", str(checkpoint / "eight")]) == 0
    eight = table_rows(capsys.readouterr().out)
    assert main(base + ["--out", str(checkpoint / "four"), "--embedding-bits", "4"]) == 0
    printed = capsys.readouterr().out
    four = table_rows(printed)
    path = checkpoint / "four" / "runtime-int8.safetensors"
    _, tensors, _ = runtime.read_safetensors(path)
    assert tensors[WORD][0] == "U8"                                     # the int8 file only
    assert runtime.read_safetensors(checkpoint / "four" / "runtime-float32.safetensors")[1][WORD][0] == "F32"
    f32 = (checkpoint / "four" / "runtime-float32.safetensors").stat().st_size
    assert float(four["int8"][1]) == pytest.approx(path.stat().st_size / 1e6, abs=0.006)
    assert float(four["int8"][2]) == pytest.approx(path.stat().st_size / f32, abs=6e-4)
    assert path.stat().st_size < (checkpoint / "eight" / "runtime-int8.safetensors").stat().st_size
    assert float(four["int8"][2]) < float(eight["int8"][2])
    from minitinybert.data.metrics import evaluate
    labels = np.arange(len(TEXTS)) % 2
    expected = evaluate("sst2", runtime.load(path).logits(TEXTS), labels)["main"]
    assert float(four["int8"][3]) == pytest.approx(expected, abs=1e-4)
    assert float(four["int8"][4]) == pytest.approx(float(four["int8"][3]) - float(four["float32"][3]), abs=2e-4)
    # with --vocab: the full-vocabulary file it is compared with is 4-bit too (float32's stays float32)
    calls = []

    def spy(*args, **kwargs):
        call = inspect.signature(export_runtime).bind(*args, **kwargs)
        call.apply_defaults()
        calls.append((Path(call.arguments["out_path"]).name, call.arguments["embedding_bits"]))
        return export_runtime(*args, **kwargs)

    monkeypatch.setattr(export, "export_runtime", spy)
    assert main(base + ["--out", str(checkpoint / "small"), "--embedding-bits", "4", "--vocab",
                        str(checkpoint / "data" / "glue" / "SST-2")]) == 0
    assert sorted(calls) == [(".full-vocab-float32.safetensors", 8), (".full-vocab-int8.safetensors", 4),
                             ("runtime-float32.safetensors", 8), ("runtime-int8.safetensors", 4)]
    small = table_rows(capsys.readouterr().out)
    assert len(small["int8"]) == 8 and float(small["int8"][5]) == pytest.approx(path.stat().st_size / 1e6, abs=0.006)
    assert (checkpoint / "small" / "runtime-int8.safetensors").stat().st_size < path.stat().st_size


def test_command_takes_the_group_size(checkpoint, capsys):
    """--embedding-group 16 (the default): float16 scales per 16 values; 0: a float32 scale per row; a negative
    count exits 2 with a message and writes nothing."""
    base = [str(checkpoint / "ckpt"), "--dtypes", "int8", "--quantize-embeddings", "--embedding-bits", "4"]
    for extra, expected in (([], ("F16", (len(VOCAB), 2))), (["--embedding-group", "0"], ("F32", (len(VOCAB),))),
                            (["--embedding-group", "8"], ("F16", (len(VOCAB), 4)))):
        out = checkpoint / f"out{len(extra)}{extra[-1] if extra else ''}"
        assert main(base + ["--out", str(out)] + extra) == 0
        dtype, scale, _ = runtime.read_safetensors(out / "runtime-int8.safetensors")[1][WORD + "_scale"]
        assert (dtype, scale.shape) == expected, extra
    assert main(base + ["--out", str(checkpoint / "bad"), "--embedding-group", "-1"]) == 2
    assert "--embedding-group must be 0" in capsys.readouterr().err and not (checkpoint / "bad").exists()
    with pytest.raises(ExportError, match="embedding group must be"):
        export_model(small_model(), checkpoint / "m.st", VOCAB, True, "int8", True, embedding_bits=4,
                     embedding_group=-2)


@pytest.mark.parametrize("args,message", [
    (["--dtypes", "int8"], "needs --quantize-embeddings"),                       # no --quantize-embeddings
    (["--dtypes", "float32,float16", "--quantize-embeddings"], "int8 among --dtypes"),
])
def test_command_refuses_4_bits_without_quantized_int8_embeddings(checkpoint, capsys, args, message):
    out = checkpoint / "out"
    assert main([str(checkpoint / "ckpt"), "--out", str(out), "--embedding-bits", "4"] + args) == 2
    assert message in capsys.readouterr().err and not out.exists()
    assert main([str(checkpoint / "ckpt"), "--out", str(out), "--embedding-bits", "4", "--dtypes", "int8",
                 "--quantize-embeddings"]) == 0                                  # the control
    with pytest.raises(SystemExit):
        main([str(checkpoint / "ckpt"), "--out", str(out), "--embedding-bits", "2"])


def test_api_refuses_4_bits_without_quantized_int8_embeddings(tmp_path):
    model = small_model()
    for dtype, quantize in (("int8", False), ("float16", True), ("float32", True)):
        with pytest.raises(ExportError, match="4-bit word embeddings need"):
            export_model(model, tmp_path / "m.st", VOCAB, True, dtype, quantize, embedding_bits=4)
    with pytest.raises(ExportError, match="8 or 4"):
        export_model(model, tmp_path / "m.st", VOCAB, True, "int8", True, embedding_bits=2)
    assert not (tmp_path / "m.st").exists()
    assert export_model(model, tmp_path / "m.st", VOCAB, True, "int8", True, embedding_bits=4).exists()   # control


# --- damaged files --------------------------------------------------------------------------------

@pytest.fixture(params=[16, 0], ids=["groups", "rows"])
def four_bit_file(tmp_path, request):
    return export_model(small_model(33, 3), tmp_path / "four.st", VOCAB, True, "int8", True, embedding_bits=4,
                        embedding_group=request.param)


def refused(path, match):
    with pytest.raises(RuntimeModelError, match=match):
        runtime.load(path)


def test_damaged_packed_tables_are_refused_with_clear_messages(tmp_path, four_bit_file):
    def replace(name, array):
        return lambda items: [(n, array if n == name else a) for n, a in items]

    tensors = dict(tensors_of(four_bit_file)[1])
    table, scale = tensors[WORD], tensors[WORD + "_scale"]
    assert runtime.load(rewrite(four_bit_file, tmp_path / "same.st", lambda items: items))   # the control: loads
    V = len(VOCAB)                                     # hidden size 33: 17 bytes a row
    refused(rewrite(four_bit_file, tmp_path / "narrow.st", replace(WORD, table[:, :-1].copy())),
            re.escape(f"has shape {(V, 16)}, the config says {(V, 17)} (U8: two 4-bit values a byte)"))
    refused(rewrite(four_bit_file, tmp_path / "wide.st", replace(WORD, np.pad(table, ((0, 0), (0, 1))))),
            re.escape(f"has shape {(V, 18)}, the config says {(V, 17)}"))
    refused(rewrite(four_bit_file, tmp_path / "rows.st", replace(WORD, table[:-1].copy())), "has shape")
    refused(rewrite(four_bit_file, tmp_path / "noscale.st",
                    lambda items: [(n, a) for n, a in items if n != WORD + "_scale"]),
            re.escape(f"missing tensor '{WORD}_scale'"))
    refused(rewrite(four_bit_file, tmp_path / "shortscale.st", replace(WORD + "_scale", scale[:-1].copy())),
            "_scale' has shape")
    nan = scale.copy()
    nan[3] = np.nan
    refused(rewrite(four_bit_file, tmp_path / "nan.st", replace(WORD + "_scale", nan)), "NaN")
    if scale.ndim == 2:            # group scales: 3 groups of 11 here; a count that does not split 33 is refused
        for count in (0, 10, 34):  # 10: groups of ceil(33 / 10) = 4 make 9, not 10
            refused(rewrite(four_bit_file, tmp_path / "groups.st", replace(WORD + "_scale", np.ones((V, count),
                    scale.dtype))), f"{count} groups do not split rows of 33")
        for count in (1, 2, 4, 9, 33):                                   # the control: these split it
            assert runtime.load(rewrite(four_bit_file, tmp_path / "groups.st", replace(WORD + "_scale", np.ones(
                (V, count), scale.dtype))))
        refused(rewrite(four_bit_file, tmp_path / "3d.st", replace(WORD + "_scale", scale[:, :, None].copy())),
                "_scale' has shape")
    layer = "encoder.layer.0.intermediate.dense.weight"                   # 4 bits are for embedding tables only
    refused(rewrite(four_bit_file, tmp_path / "linear.st", replace(layer, tensors[layer].view(np.uint8))),
            "dtype U8, expected F32, F16 or I8")
    # the file cut inside the packed table: the tensors no longer fit the bytes
    data = four_bit_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8:8 + n])[WORD]["data_offsets"]
    cut = tmp_path / "cut.st"
    cut.write_bytes(data[:8 + n + (begin + end) // 2])
    refused(cut, "truncated")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
@given(st.integers(0, 2 ** 20), st.integers(-3, 3), st.sampled_from(["shape0", "shape1", "dtype", "offset"]))
def test_header_mutations_of_the_packed_table_load_or_refuse(tmp_path, four_bit_file, seed, delta, what):
    """Any change to the packed table's header entry either loads (and runs) or raises RuntimeModelError."""
    data = four_bit_file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    entry = header[WORD]
    if what.startswith("shape"):
        entry["shape"][int(what[-1])] += delta
    elif what == "dtype":
        entry["dtype"] = ["I8", "F16", "U8", "F32", "BOOL", "I16"][seed % 6]
    else:
        entry["data_offsets"] = [o + delta for o in entry["data_offsets"]]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "mutated.st"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    try:
        model = runtime.load(path)
    except RuntimeModelError:
        return
    assert model.logits(TEXTS[:3]).shape == (3, 2)
