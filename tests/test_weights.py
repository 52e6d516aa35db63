"""Loading and saving checkpoints: every real BERT layout, and a clear error for every bad file."""
import errno
import json
import os
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from minitinybert.engine.config import BertConfig, ConfigError
from minitinybert.engine.model import Bert
from minitinybert.engine.weights import WeightsError, export_tensors, load_model, save_checkpoint

SMALL = BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=12, max_position_embeddings=16, type_vocab_size=2)


def write_checkpoint(directory, tensors, config=SMALL):
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory / "config.json")
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def base_tensors(seed=0):
    return export_tensors(Bert(SMALL, seed=seed), prefixed=False)


@pytest.mark.parametrize("num_labels,fit_size,fit_shared,mlm", [
    (0, 0, True, False), (2, 0, True, False), (1, 0, True, False), (3, 16, True, False), (0, 16, False, False),
    (0, 0, True, True)])
def test_round_trip_of_every_layout(tmp_path, num_labels, fit_size, fit_shared, mlm):
    model = Bert(SMALL.replace(num_labels=num_labels, fit_size=fit_size, fit_shared=fit_shared, mlm_head=mlm),
                 seed=3)
    save_checkpoint(model, tmp_path / "ckpt")
    names = json.loads((tmp_path / "ckpt" / "model.safetensors").read_bytes()[8:8 + struct.unpack(
        "<Q", (tmp_path / "ckpt" / "model.safetensors").read_bytes()[:8])[0]])
    # a task head means BertForSequenceClassification naming: encoder under `bert.`
    assert ("bert.embeddings.word_embeddings.weight" in names) == bool(num_labels)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config.num_labels == num_labels
    assert loaded.config.fit_size == fit_size and loaded.config.mlm_head == mlm
    np.testing.assert_array_equal(loaded.params.data, model.params.data)


def test_hf_pretraining_layout_with_prefix_gamma_beta_and_ignored_tensors(tmp_path):
    """bert-base-uncased's layout: `bert.` prefix, MLM + NSP heads, position_ids, old gamma/beta names."""
    tensors = {}
    for name, value in base_tensors().items():
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        tensors["bert." + name] = value
    C, V = SMALL.hidden_size, SMALL.vocab_size
    rng = np.random.default_rng(0)
    tensors.update({
        "bert.embeddings.position_ids": np.arange(16, dtype=np.int64)[None],
        "cls.predictions.transform.dense.weight": rng.normal(size=(C, C)).astype(np.float32),
        "cls.predictions.transform.dense.bias": np.zeros(C, np.float32),
        "cls.predictions.transform.LayerNorm.gamma": np.ones(C, np.float32),
        "cls.predictions.transform.LayerNorm.beta": np.zeros(C, np.float32),
        "cls.predictions.bias": np.zeros(V, np.float32),
        "cls.predictions.decoder.weight": np.zeros((V, C), np.float32),
        "cls.seq_relationship.weight": np.zeros((2, C), np.float32),
        "cls.seq_relationship.bias": np.zeros(2, np.float32),
    })
    model = load_model(write_checkpoint(tmp_path / "hf", tensors), num_labels=2)
    assert model.config.mlm_head and model.config.num_labels == 2
    np.testing.assert_array_equal(model.params["encoder.layer.1.output.LayerNorm.weight"],
                                  tensors["bert.encoder.layer.1.output.LayerNorm.gamma"])
    logits = model.mlm_logits(np.ones((3, C), np.float32))
    assert logits.shape == (3, V)


def test_float16_and_float64_checkpoints_load(tmp_path):
    for dtype in (np.float16, np.float64):
        tensors = {k: v.astype(dtype) for k, v in base_tensors().items()}
        model = load_model(write_checkpoint(tmp_path / str(np.dtype(dtype)), tensors))
        np.testing.assert_allclose(model.params["pooler.dense.weight"], tensors["pooler.dense.weight"], rtol=1e-3)


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    SMALL.save(tmp_path / "empty" / "config.json")
    with pytest.raises(WeightsError, match="no model.safetensors"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match="safe_serialization"):
        load_model(tmp_path / "empty")


def test_missing_config(tmp_path):
    (tmp_path / "c").mkdir()
    save_file(base_tensors(), str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises((ConfigError, WeightsError), match="config.json"):
        load_model(tmp_path / "c")


def test_missing_tensor_is_named(tmp_path):
    tensors = base_tensors()
    del tensors["encoder.layer.1.attention.self.key.weight"]
    with pytest.raises(WeightsError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        load_model(write_checkpoint(tmp_path / "m", tensors))


def test_misshapen_tensor_is_named(tmp_path):
    tensors = base_tensors()
    tensors["encoder.layer.0.intermediate.dense.weight"] = np.zeros((5, 8), np.float32)
    with pytest.raises(WeightsError, match=r"intermediate\.dense\.weight.*shape \(5, 8\)"):
        load_model(write_checkpoint(tmp_path / "m", tensors))


def test_wrong_dtype_is_named(tmp_path):
    tensors = base_tensors()
    tensors["pooler.dense.bias"] = np.zeros(8, np.int32)
    with pytest.raises(WeightsError, match=r"pooler\.dense\.bias.*int32"):
        load_model(write_checkpoint(tmp_path / "m", tensors))


def test_nan_tensor_is_named(tmp_path):
    tensors = base_tensors()
    tensors["embeddings.LayerNorm.weight"][3] = np.nan
    with pytest.raises(WeightsError, match=r"embeddings\.LayerNorm\.weight.*NaN"):
        load_model(write_checkpoint(tmp_path / "m", tensors))


def test_unknown_tensor_is_refused(tmp_path):
    tensors = base_tensors()
    tensors["decoder.block.0.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match="decoder.block.0.weight"):
        load_model(write_checkpoint(tmp_path / "m", tensors))


def test_head_size_disagreement(tmp_path):
    model = Bert(SMALL.replace(num_labels=3), seed=0)
    save_checkpoint(model, tmp_path / "m")
    with pytest.raises(WeightsError, match="3 outputs, 2 were asked"):
        load_model(tmp_path / "m", num_labels=2)


@pytest.mark.parametrize("damage", ["truncated_data", "truncated_header", "header_length", "not_json",
                                    "not_object", "unknown_dtype", "bfloat16", "tiny"])
def test_corrupt_files_give_clear_errors(tmp_path, damage):
    directory = write_checkpoint(tmp_path / "m", base_tensors())
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if damage == "truncated_data":
        raw = raw[: len(raw) - 100]
    elif damage == "truncated_header":
        raw = raw[: 8 + n // 2]
    elif damage == "header_length":
        raw = struct.pack("<Q", 10 ** 12) + raw[8:]
    elif damage == "not_json":
        raw = raw[:8] + b"\xff" * n + raw[8 + n:]
    elif damage == "tiny":
        raw = raw[:5]
    else:
        if damage == "not_object":
            header = [1, 2]
        else:
            header["pooler.dense.bias"]["dtype"] = "Q7" if damage == "unknown_dtype" else "BF16"
        body = json.dumps(header).encode().ljust(n)
        raw = raw[:8] + body[:n] + raw[8 + n:] if len(body) == n else struct.pack("<Q", len(body)) + body + raw[8 + n:]
    path.write_bytes(raw)
    with pytest.raises(WeightsError) as info:
        load_model(directory)
    assert str(path) in str(info.value)
    if damage in ("unknown_dtype", "bfloat16"):
        assert "pooler.dense.bias" in str(info.value)


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_save_checkpoint_never_leaves_a_partial_directory(tmp_path, monkeypatch, failure):
    """Interrupted or out of space half-way through a file: the previous checkpoint is untouched,
    nothing is left beside it, and the error names the checkpoint."""
    model = Bert(SMALL, seed=0)
    target = save_checkpoint(model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real = os.write

    def fail_half_way(fd, data):              # every file of a checkpoint is written through os.write
        data = memoryview(data).cast("B")
        if len(data) > 1000:
            real(fd, data[: len(data) // 2])
            raise failure
        return real(fd, data)

    monkeypatch.setattr(os, "write", fail_half_way)
    with pytest.raises(type(failure)) as info:
        save_checkpoint(Bert(SMALL, seed=1), target)
    if isinstance(failure, OSError):
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_checkpoint_files_are_what_safetensors_writes():
    """Tensors go to the disk straight from their arrays, in the bytes safetensors itself writes."""
    from safetensors.numpy import save
    import minitinybert.engine.weights as weights
    tensors = export_tensors(Bert(SMALL.replace(num_labels=3), seed=0))
    tensors["empty"] = np.zeros((0, 4), np.float32)
    assert b"".join(bytes(memoryview(p).cast("B")) for p in weights.safetensors_pieces(tensors)) == \
        save(tensors, metadata={"format": "pt"})


def test_metadata_is_written_in_one_order(tmp_path):
    """safetensors orders several metadata keys afresh in every call; the files here must not
    depend on it (the teacher-logits cache of two identical runs once differed in its header)."""
    from safetensors import safe_open
    import minitinybert.engine.weights as weights
    tensors = {"logits": np.arange(6, dtype=np.float32).reshape(3, 2)}
    metadata = {"version": "1", "key": "abc", "cache_format": "logits", "examples": "3"}
    written = {b"".join(bytes(memoryview(p).cast("B")) for p in weights.safetensors_pieces(tensors, metadata))
               for _ in range(8)}
    assert len(written) == 1
    weights.write_safetensors_atomic(tensors, tmp_path / "cache.safetensors", metadata)
    assert (tmp_path / "cache.safetensors").read_bytes() == written.pop()
    with safe_open(tmp_path / "cache.safetensors", "numpy") as f:
        assert f.metadata() == {"format": "pt", **metadata}
        np.testing.assert_array_equal(f.get_tensor("logits"), tensors["logits"])


def test_a_swap_cut_short_is_undone_or_recovered(tmp_path, monkeypatch):
    """Replacing a checkpoint renames it aside, then the new one into place. A failure of the second
    rename puts the old one back; a kill between the two leaves <name>.old, which recover_checkpoint
    restores (and it clears unfinished .part copies)."""
    import minitinybert.engine.weights as weights
    target = save_checkpoint(Bert(SMALL, seed=0), tmp_path / "last")
    before = (target / "model.safetensors").read_bytes()
    real_replace = os.replace

    def refuse_new(src, dst):
        if str(src).endswith(".part"):
            raise OSError(errno.EROFS, "Read-only file system")
        real_replace(src, dst)

    monkeypatch.setattr(weights.os, "replace", refuse_new)
    with pytest.raises(OSError, match="Read-only"):
        save_checkpoint(Bert(SMALL, seed=1), target)
    monkeypatch.undo()
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # what a SIGKILL between the renames leaves: last.old and an unfinished copy, no last
    os.replace(target, tmp_path / "last.old")
    (tmp_path / "last.x1y2.part").mkdir()
    (tmp_path / "last.x1y2.part" / "model.safetensors").write_bytes(b"half")
    assert weights.recover_checkpoint(target) is True
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert weights.recover_checkpoint(target) is False                 # nothing to do


def test_pad_token_id_in_config(tmp_path):
    """null (no frozen [PAD] row) survives a save and load; an id outside the vocabulary is refused."""
    model = Bert(SMALL.replace(pad_token_id=None), seed=0)
    save_checkpoint(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["pad_token_id"] is None
    assert load_model(tmp_path / "m").config.pad_token_id is None
    assert load_model(write_checkpoint(tmp_path / "d", base_tensors())).config.pad_token_id == 0
    with pytest.raises(ConfigError, match="pad_token_id"):
        SMALL.replace(pad_token_id=SMALL.vocab_size)
