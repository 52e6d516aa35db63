"""Hostile and damaged model files: every one is refused with RuntimeModelError, never another
exception and never a large allocation; random byte mutations either load or raise that error."""
import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minitinybert import runtime
from minitinybert.engine.config import BertConfig
from minitinybert.export import export_model
from minitinybert.engine.model import Bert
from minitinybert.runtime import RuntimeModelError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghij") + ["##" + c for c in "abcdefghij"]


def valid_model() -> Bert:
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=12, max_position_embeddings=16, num_labels=2)
    return Bert(cfg, seed=0)


def valid_bytes(tmp_path, dtype="float32") -> bytes:
    path = export_model(valid_model(), tmp_path / f"valid-{dtype}.safetensors", VOCAB, True, dtype,
                        quantize_embeddings=True, max_length=16)
    return path.read_bytes()


_VALID = {}


def valid(tmp_path_factory_or_path, dtype="float32") -> bytes:
    if dtype not in _VALID:
        _VALID[dtype] = valid_bytes(tmp_path_factory_or_path, dtype)
    return _VALID[dtype]


def split(data: bytes):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def build(header: dict, body: bytes, claimed_len=None) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return (len(raw) if claimed_len is None else claimed_len).to_bytes(8, "little") + raw + body


def load_bytes(tmp_path, data: bytes, name="model.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return runtime.load(path)


def refused(tmp_path, data: bytes, match=None):
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeModelError, match=match):
            load_bytes(tmp_path, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2 ** 20, f"refusing the file allocated {peak} bytes"


def test_valid_files_load(tmp_path):
    """The unmutated files load and compute the exported model's probabilities."""
    texts = ["abc", "def", "a b c d e"]
    for dtype, tol in (("float32", 1e-5), ("float16", 2e-3), ("int8", 2e-2)):
        model = load_bytes(tmp_path, valid(tmp_path, dtype))
        batch = model.tokenize(texts)
        logits = valid_model().forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        got = model.predict(texts)
        assert [p["label"] for p in got] == [f"LABEL_{i}" for i in expected.argmax(1)]
        np.testing.assert_allclose([[p["scores"][f"LABEL_{i}"] for i in range(2)] for p in got], expected, atol=tol)


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 12, 100, -1, -9, "header-1", "header+3"])
def test_truncated_files(tmp_path, cut):
    data = valid(tmp_path)
    n = 8 + int.from_bytes(data[:8], "little")
    end = {"header-1": n - 1, "header+3": n + 3}.get(cut, cut)
    refused(tmp_path, data[:end])


def test_header_length_past_end_or_absurd(tmp_path):
    header, body = split(valid(tmp_path))
    refused(tmp_path, build(header, body, claimed_len=10 ** 9), "claims")
    refused(tmp_path, build(header, body, claimed_len=2 ** 64 - 1), "claims")
    # a (sparse) 200 MB file whose header claims 150 MB: refused before reading it
    big = tmp_path / "model.safetensors"
    with open(big, "wb") as f:
        f.write((150 * 2 ** 20).to_bytes(8, "little"))
        f.truncate(200 * 2 ** 20)
    tracemalloc.start()
    try:
        with pytest.raises(RuntimeModelError, match="limit"):
            runtime.load(big)
        assert tracemalloc.get_traced_memory()[1] < 20 * 2 ** 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("garbage", [b"[1, 2, 3]", b"not json at all", b"\xff\xfe\x00garbage", b'"a string"',
                                     b"[" * 100000 + b"]" * 100000, b'{"a": 1, "a": 2}', b"{" * 5000])
def test_corrupt_header_bytes(tmp_path, garbage):
    garbage += b" " * (-len(garbage) % 8)
    refused(tmp_path, len(garbage).to_bytes(8, "little") + garbage)


def test_corrupted_header_characters(tmp_path):
    data = bytearray(valid(tmp_path))
    for pos in (8, 9, 20, 50):
        broken = bytearray(data)
        broken[pos] = ord("}")
        refused(tmp_path, bytes(broken))


def mutate_entry(tmp_path, name, **changes):
    header, body = split(valid(tmp_path))
    header[name].update(changes)
    return build(header, body)


WEIGHT = "encoder.layer.0.intermediate.dense.weight"


@pytest.mark.parametrize("changes,match", [
    (dict(data_offsets=[0, 10 ** 9]), "outside"),
    (dict(data_offsets=[10 ** 9, 10 ** 9 + 384]), "outside"),
    (dict(data_offsets=[-4, 380]), "outside"),
    (dict(data_offsets=[8, 4]), "outside"),
    (dict(data_offsets=[0]), "data_offsets"),
    (dict(data_offsets="0-4"), "data_offsets"),
    (dict(data_offsets=[0.0, 384.0]), "data_offsets"),
    (dict(dtype="F128"), "unknown dtype"),
    (dict(dtype=None), "unknown dtype"),
    (dict(dtype="I32"), "dtype"),
    (dict(shape=[2 ** 40, 2 ** 40]), "shape"),
    (dict(shape=[0, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1]), "absurd"),
    (dict(shape=[12, -8]), "shape"),
    (dict(shape=[12, 8.0]), "shape"),
    (dict(shape=[True, 96]), "shape"),
    (dict(shape="12x8"), "shape"),
    (dict(shape=[1] * 20), "shape"),
    (dict(shape=[8, 12]), "shape"),
    (dict(shape=[96]), "shape"),
])
def test_bad_tensor_entries(tmp_path, changes, match):
    refused(tmp_path, mutate_entry(tmp_path, WEIGHT, **changes), match)


def test_overlapping_gapped_and_misordered_offsets(tmp_path):
    header, body = split(valid(tmp_path))
    names = [n for n in header if n != "__metadata__"]
    a, b = sorted(names, key=lambda n: header[n]["data_offsets"][0])[:2]
    same = dict(header)
    same[b] = dict(header[b], data_offsets=list(header[a]["data_offsets"]), shape=header[a]["shape"],
                   dtype=header[a]["dtype"])
    refused(tmp_path, build(same, body))                       # two tensors on the same bytes
    shifted = json.loads(json.dumps(header))
    begin, end = shifted[a]["data_offsets"]
    shifted[a]["data_offsets"] = [begin + 4, end + 4]          # overlaps its neighbour
    refused(tmp_path, build(shifted, body), "overlap|gap")
    refused(tmp_path, build(header, body + b"\x00" * 16), "trailing")
    missing = {k: v for k, v in header.items() if k != a}
    refused(tmp_path, build(missing, body))


def test_metadata_problems(tmp_path):
    header, body = split(valid(tmp_path))
    meta = header["__metadata__"]

    def with_meta(**changes):
        h = json.loads(json.dumps(header))
        h["__metadata__"].update(changes)
        for key, value in list(h["__metadata__"].items()):
            if value is None:
                del h["__metadata__"][key]
        return build(h, body)

    refused(tmp_path, with_meta(format="pt"), "format")
    refused(tmp_path, with_meta(format=None), "format")
    refused(tmp_path, with_meta(config=None), "config")
    refused(tmp_path, with_meta(config="{broken"), "JSON")
    refused(tmp_path, with_meta(config="[1]"), "object")
    cfg = json.loads(meta["config"])
    for key, value in [("hidden_size", 7), ("hidden_size", 0), ("num_hidden_layers", 10 ** 9), ("vocab_size", 5),
                       ("num_labels", 3), ("hidden_act", "relu"), ("layer_norm_eps", -1), ("hidden_size", "8"),
                       ("num_hidden_layers", 2), ("problem_type", "regression"), ("max_position_embeddings", 10)]:
        refused(tmp_path, with_meta(config=json.dumps(dict(cfg, **{key: value}))))
    refused(tmp_path, with_meta(labels='["x"]'), "label")
    refused(tmp_path, with_meta(labels='{"a": 1}'), "labels")
    refused(tmp_path, with_meta(vocab="a\nb"), "vocabulary")
    refused(tmp_path, with_meta(vocab="\n".join(["x"] * len(VOCAB))), "twice")
    refused(tmp_path, with_meta(do_lower_case="maybe"), "do_lower_case")
    refused(tmp_path, with_meta(max_length="1000"), "max_length")
    refused(tmp_path, with_meta(max_length="ten"), "max_length")
    h = json.loads(json.dumps(header))
    h["__metadata__"] = {"format": 1}
    refused(tmp_path, build(h, body), "strings")


def test_int8_without_scale_and_int8_bias(tmp_path):
    header, body = split(valid(tmp_path, "int8"))
    scale = WEIGHT + "_scale"
    h = json.loads(json.dumps(header))
    h[scale]["dtype"] = "I32"      # same byte size, wrong kind
    refused(tmp_path, build(h, body))
    h = json.loads(json.dumps(header))
    h["renamed"] = h.pop(scale)
    refused(tmp_path, build(h, body), "missing")


def test_nan_scale_refused(tmp_path):
    header, body = split(valid(tmp_path, "int8"))
    begin, end = header[WEIGHT + "_scale"]["data_offsets"]
    body = bytearray(body)
    body[begin:begin + 4] = np.array([np.nan], np.float32).tobytes()
    refused(tmp_path, build(header, bytes(body)), "NaN")


def test_not_a_file(tmp_path):
    with pytest.raises(RuntimeModelError):
        runtime.load(tmp_path / "does-not-exist.safetensors")
    with pytest.raises(RuntimeModelError):
        runtime.load(tmp_path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       st.sampled_from(["float32", "int8"]), st.booleans())
def test_random_mutations_load_or_refuse(tmp_path, mutations, dtype, in_header):
    data = bytearray(valid(tmp_path, dtype))
    n = 8 + int.from_bytes(data[:8], "little")
    for where, value in mutations:
        pos = int(where * n) if in_header else int(where * len(data))
        data[pos] = value
    try:
        model = load_bytes(tmp_path, bytes(data), "mutated.safetensors")
    except RuntimeModelError:
        return
    try:
        model.predict(["abc def", ("a", "b")[0]])
    except RuntimeModelError:
        pass
