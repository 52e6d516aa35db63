"""Load and save BERT weights as safetensors, in Hugging Face naming.

Accepted layouts (all the ones real BERT checkpoints use):
- BertModel without prefix (`embeddings.word_embeddings.weight`, ...): sentence-transformers models;
- the `bert.` prefix with `cls.predictions.*` (pre-training / MLM head) or `classifier.*`
  (sequence classification), as bert-base-uncased and fine-tuned checkpoints have;
- TinyBERT's projections `fit_dense.*` (shared) or `fit_denses.N.*` (one per layer);
- old TensorFlow conversions' `LayerNorm.gamma` / `LayerNorm.beta`.
`embeddings.position_ids`, the NSP head and the (tied) MLM decoder weight are ignored.

A checkpoint directory holds config.json, model.safetensors, vocab.txt and tokenizer_config.json.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .config import BertConfig
from .files import fsync_dir, write_atomic, write_file
from .model import Bert
from .params import WeightsError, assign_tensors

IGNORED = re.compile(r"^(embeddings\.position_ids|cls\.seq_relationship\..*|cls\.predictions\.decoder\.(weight|bias))$")


def normalize_name(name: str) -> str:
    if name.startswith("bert."):
        name = name[len("bert."):]
    if name.endswith("LayerNorm.gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
        name = name[: -len("beta")] + "bias"
    return name


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file, with the file named in every error."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    size = path.stat().st_size
    if size < 8:
        raise WeightsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > size - 8:
            raise WeightsError(f"{path}: corrupt safetensors header: it claims {header_len} bytes but the "
                               f"file has {size - 8} after the length field (truncated or not safetensors)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: corrupt safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (not a JSON object)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype not in ("F16", "F32", "F64", "BF16", "I8", "I16", "I32", "I64", "U8", "BOOL"):
            raise WeightsError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if dtype == "BF16":
            raise WeightsError(f"{path}: tensor {name!r} is bfloat16, which NumPy cannot read; convert the "
                               f"checkpoint to float32 (e.g. with safetensors + torch: tensor.float())")
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, OSError) as e:
        raise WeightsError(f"{path}: cannot read safetensors data ({e}); the file is truncated or corrupt") from None


def checkpoint_file(directory: str | Path) -> Path:
    directory = Path(directory)
    if directory.is_file():
        return directory
    path = directory / "model.safetensors"
    if not path.exists():
        if (directory / "pytorch_model.bin").exists():
            raise WeightsError(f"{directory} has only pytorch_model.bin; minitinybert reads safetensors. Convert "
                               f"it once with transformers: model.save_pretrained(dir, safe_serialization=True)")
        raise WeightsError(f"no model.safetensors in {directory}")
    return path


def load_model(directory: str | Path, num_labels: int | None = None, dtype=np.float32,
               seed: int = 0, use_kernels: bool = True, log=None, keep_head: bool = True):
    """A `Bert` from a Hugging Face checkpoint directory.

    `num_labels` asks for a task head: taken from the checkpoint when it has one (the sizes must
    agree), otherwise initialised from `seed` (a pre-trained teacher has no head). keep_head=False
    drops the checkpoint's task head (the encoder of a model fine-tuned on another task)."""
    directory = Path(directory)
    if not directory.exists():
        raise WeightsError(f"checkpoint directory not found: {directory}")
    config_path = directory / "config.json" if directory.is_dir() else directory.parent / "config.json"
    config = BertConfig.from_json(config_path)
    path = checkpoint_file(directory)
    raw = read_safetensors(path)
    tensors = {normalize_name(k): v for k, v in raw.items() if not IGNORED.match(normalize_name(k))}
    if not keep_head:
        tensors = {n: v for n, v in tensors.items() if not n.startswith("classifier.")}
        config = config.replace(num_labels=0)
        config.id2label = {}
    unknown = [n for n in tensors if not re.match(r"^(embeddings|encoder|pooler|classifier|fit_dense|fit_denses|cls)\.", n)]
    if unknown:
        raise WeightsError(f"{path}: tensors that are not part of a BERT model: {', '.join(unknown[:5])}")

    changes = {}
    if "classifier.weight" in tensors:
        found = tensors["classifier.weight"].shape[0]
        if num_labels is not None and num_labels != found:
            raise WeightsError(f"{path}: the classifier head has {found} outputs, {num_labels} were asked for")
        changes["num_labels"] = found
    elif num_labels is not None:
        changes["num_labels"] = num_labels
    else:
        changes["num_labels"] = 0
    if "fit_dense.weight" in tensors:
        changes.update(fit_size=tensors["fit_dense.weight"].shape[0], fit_shared=True)
    elif "fit_denses.0.weight" in tensors:
        changes.update(fit_size=tensors["fit_denses.0.weight"].shape[0], fit_shared=False)
    else:
        changes.update(fit_size=0)
    changes["mlm_head"] = "cls.predictions.transform.dense.weight" in tensors
    if not changes["mlm_head"]:
        tensors = {n: v for n, v in tensors.items() if not n.startswith("cls.")}
    if changes["num_labels"] != config.num_labels and config.num_labels and "classifier.weight" not in tensors:
        config.id2label = {}
    config = config.replace(**changes)
    if "pooler.dense.weight" not in tensors and log:
        log(f"{path}: no pooler weights; the pooler is initialised randomly")

    model = Bert(config, dtype=dtype, seed=seed, use_kernels=use_kernels)
    fresh = ("classifier.",) if "classifier.weight" not in tensors else ()
    fresh += ("pooler.",) if "pooler.dense.weight" not in tensors else ()
    assign_tensors(model.params, tensors, str(path), allow_missing=fresh)
    return model


def export_tensors(model, prefixed: bool | None = None) -> dict[str, np.ndarray]:
    """HF names: with a head, BertForSequenceClassification's (`bert.` prefix), else BertModel's."""
    if prefixed is None:
        prefixed = bool(model.config.num_labels)
    out = {}
    for name, view in model.params.views.items():
        top = name.startswith(("embeddings.", "encoder.", "pooler."))
        out[("bert." + name) if (prefixed and top) else name] = np.ascontiguousarray(view, dtype=np.float32)
    return out


def safetensors_pieces(tensors: dict[str, np.ndarray], metadata: dict | None = None) -> list:
    """A safetensors file as pieces to write in turn: its header, then each tensor's bytes straight
    from the array, without first copying hundreds of MB into one bytes object. Float32 tensors are
    ordered by name and the header padded with spaces to 8 bytes, as safetensors.numpy.save does; the
    metadata's keys are sorted, where save orders them afresh in every call (a Rust HashMap), so the
    same tensors and metadata always give the same bytes."""
    metadata = {"format": "pt", **(metadata or {})}
    if any(t.dtype != np.float32 for t in tensors.values()):
        from safetensors.numpy import save  # dtype orders of its own: let it write
        return [save(tensors, metadata=metadata)]
    header, arrays, offset = {"__metadata__": dict(sorted(metadata.items()))}, [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [len(text).to_bytes(8, "little") + text] + [a for a in arrays if a.nbytes]


def write_safetensors_atomic(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict | None = None):
    write_atomic(path, safetensors_pieces(tensors, metadata))


def save_checkpoint(model, directory: str | Path, vocab_from: str | Path | None = None,
                    extra_files: dict[str, str] | None = None,
                    extra_tensors: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    """Write a checkpoint directory atomically: its files are written in a directory beside the
    target, flushed to the disk, and that directory is renamed into place. A kill or a failed write
    (a full disk) at any moment leaves the previous checkpoint where it was, or, killed between the
    two renames of the swap, in `<name>.old`, which `recover_checkpoint` puts back. A failed write
    raises OSError naming `directory`."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    files = {"config.json": json.dumps(model.config.to_dict(), indent=2) + "\n",
             "model.safetensors": safetensors_pieces(export_tensors(model))}
    if vocab_from is not None:
        src = Path(vocab_from)
        files["vocab.txt"] = (src / "vocab.txt" if src.is_dir() else src).read_bytes()
    files["tokenizer_config.json"] = json.dumps(
        {"do_lower_case": model.config.do_lower_case, "tokenizer_class": "BertTokenizer",
         "model_max_length": model.config.max_position_embeddings}, indent=2) + "\n"
    files.update(extra_files or {})
    files.update({name: safetensors_pieces(tensors) for name, tensors in (extra_tensors or {}).items()})
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", suffix=".part", dir=directory.parent))
        for name, data in files.items():
            write_file(tmp / name, data.encode("utf-8") if isinstance(data, str) else data)
        fsync_dir(tmp)
        _replace_dir(tmp, directory)
        fsync_dir(directory.parent)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(directory)) from None
        raise
    return directory


def _replace_dir(new: Path, target: Path) -> None:
    """`new` renamed to `target`; a previous `target` goes to `<target>.old` for the moment between
    the two renames (put back if the second fails), then is removed."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(directory: str | Path) -> bool:
    """Tidies what an interrupted `save_checkpoint` left beside `directory`: its unfinished
    `<name>.*.part` directories are removed, and `<name>.old` (a kill between the two renames of the
    swap) becomes `<name>` again when `<name>` is missing. True if it put a checkpoint back.
    Only the run that owns the directory may call it (one holding its run.lock)."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return False
    for part in directory.parent.glob(glob.escape(directory.name) + ".*.part"):
        shutil.rmtree(part, ignore_errors=True)
    old = directory.with_name(directory.name + ".old")
    if old.is_dir() and not directory.exists():
        os.replace(old, directory)
        return True
    shutil.rmtree(old, ignore_errors=True)
    return False
