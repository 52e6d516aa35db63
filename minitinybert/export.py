"""Export a checkpoint to the edge runtime's single-file format (see minitinybert/runtime.py).

    python -m minitinybert.export CHECKPOINT --out DIR [--dtypes float32,float16,int8]
                                  [--quantize-embeddings] [--max-length 128] [--task sst2 --data DIR]

writes DIR/runtime-<dtype>.safetensors for each dtype and prints a table: size, size ratio vs
float32 and, with --task, the dev-set metric of each file (run by the runtime itself) and its
change from float32.

float32: every tensor as trained. float16: 2-D tensors (embeddings and linear weights) in float16,
biases and layer-norm parameters stay float32. int8: the encoder's and the pooler's linear weights
as symmetric per-output-channel int8 (scale = max|w| / 127), the classifier and all 1-D tensors
in float32; with quantize_embeddings the three embedding tables too (one scale per row), which is
what makes a small-vocabulary-bound model like tinybert4 shrink (its word embeddings are 2/3 of it).

Training-only tensors are dropped: TinyBERT's fit_dense projections and the MLM head (cls.*).
The tensors are laid out float32 first, then float16, then int8 (each aligned), in the model's
order, so that a layer's query, key and value weights lie back to back and the runtime can use
them as one fused matrix without a copy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import runtime
from .config import ConfigError
from .hub import glue_dev_set
from .metrics import evaluate
from .process import tune_process
from .runtime import FORMAT, RuntimeModelError
from .tasks import get_task
from .weights import WeightsError, load_model

DTYPES = ("float32", "float16", "int8")
_SAFETENSORS_DTYPE = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}


class ExportError(ValueError):
    """A checkpoint or option that cannot be exported."""


# --- building the tensors -----------------------------------------------------------------------

def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: (q int8, scale float32) with weight ~= q * scale[:, None]."""
    w = np.asarray(weight, dtype=np.float32)
    scale = np.abs(w).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(w / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _is_linear_weight(name: str) -> bool:
    return name.endswith(".weight") and (name.startswith("encoder.") and not name.endswith("LayerNorm.weight")
                                         or name == "pooler.dense.weight")


def runtime_tensors(state: dict[str, np.ndarray], dtype: str = "float32",
                    quantize_embeddings: bool = False) -> list[tuple[str, np.ndarray]]:
    """(name, array) in file order for a state dict in unprefixed HF names."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = []
    for name, value in state.items():
        if not name.startswith(("embeddings.", "encoder.", "pooler.", "classifier.")):
            continue                                           # fit_dense*, cls.predictions.*
        value = np.ascontiguousarray(value, dtype=np.float32)
        is_embedding = name.startswith("embeddings.") and name.endswith("_embeddings.weight")
        if dtype == "int8" and (_is_linear_weight(name) or (is_embedding and quantize_embeddings)):
            q, scale = quantize_rows(value)
            out += [(name, q), (name + "_scale", scale)]
        elif dtype == "float16" and value.ndim == 2 and not name.startswith("classifier."):
            out.append((name, value.astype(np.float16)))
        else:
            out.append((name, value))
    # float32, then float16, then int8 (alignment); the model order within each group
    rank = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int8): 2}
    return sorted(out, key=lambda item: rank[item[1].dtype])


def write_safetensors(path: str | Path, tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """A safetensors file with the tensors in the given order, written atomically (tmp + rename)."""
    path = Path(path)
    header = {"__metadata__": metadata}
    offset = 0
    for name, arr in tensors:
        header[name] = {"dtype": _SAFETENSORS_DTYPE[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for _, arr in tensors:
                f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- checkpoint -> runtime file -----------------------------------------------------------------

def _read_lower_case(directory: Path, default: bool) -> bool:
    for name in ("tokenizer_config.json", "config.json"):
        file = directory / name
        if file.is_file():
            try:
                raw = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(raw, dict) and isinstance(raw.get("do_lower_case"), bool):
                return raw["do_lower_case"]
    return default


def _read_vocab(directory: Path, vocab_size: int) -> list[str]:
    path = directory / "vocab.txt"
    if not path.is_file():
        raise ExportError(f"{directory}: no vocab.txt; the runtime file embeds the vocabulary")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    if len(tokens) != vocab_size:
        raise ExportError(f"{path}: {len(tokens)} tokens, the model's vocab_size is {vocab_size}")
    for token in tokens:
        if "\n" in token or "\r" in token:
            raise ExportError(f"{path}: token {token!r} holds a line break")
    return tokens


def runtime_metadata(config, tokens: list[str], do_lower_case: bool, max_length: int, dtype: str) -> dict[str, str]:
    n = config.num_labels
    labels = []
    if n >= 2:
        names = config.id2label or {}
        labels = [str(names.get(i, f"LABEL_{i}")) for i in range(n)]
    problem = "embedding" if n == 0 else "regression" if n == 1 else "single_label_classification"
    cfg = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
               num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
               intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
               type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
               hidden_act="gelu", num_labels=n, problem_type=problem)     # exact erf, as the engine
    return {"format": FORMAT, "config": json.dumps(cfg), "labels": json.dumps(labels), "vocab": "\n".join(tokens),
            "do_lower_case": "true" if do_lower_case else "false", "max_length": str(int(max_length)),
            "dtype": dtype}


def export_model(model, out_path, tokens: list[str], do_lower_case: bool = True, dtype: str = "float32",
                 quantize_embeddings: bool = False, max_length: int = 128) -> Path:
    """Write a `Bert` (with its vocabulary) as a runtime file. max_length is the default truncation
    length stored in the file (at most the model's max_position_embeddings: larger values are capped)."""
    cfg = model.config
    if type(max_length) is int and max_length > cfg.max_position_embeddings:
        max_length = cfg.max_position_embeddings
    if cfg.hidden_act not in ("gelu", "gelu_python"):
        raise ExportError(f"hidden_act {cfg.hidden_act!r}: the runtime computes the exact erf GELU only")
    if type(max_length) is not int or not 3 <= max_length <= cfg.max_position_embeddings:
        raise ExportError(f"max_length must be an integer in [3, {cfg.max_position_embeddings}], got {max_length!r}")
    if len(tokens) != cfg.vocab_size:
        raise ExportError(f"{len(tokens)} vocabulary tokens for vocab_size {cfg.vocab_size}")
    tensors = runtime_tensors(model.state_dict(), dtype, quantize_embeddings)
    write_safetensors(out_path, tensors, runtime_metadata(cfg, tokens, do_lower_case, max_length, dtype))
    return Path(out_path)


def export_runtime(checkpoint_dir, out_path, dtype: str = "float32", quantize_embeddings: bool = False,
                   max_length: int = 128) -> Path:
    """Checkpoint directory (config.json, model.safetensors, vocab.txt) -> runtime file at out_path."""
    directory = Path(checkpoint_dir)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model = load_model(directory)
    source = directory if directory.is_dir() else directory.parent
    tokens = _read_vocab(source, model.config.vocab_size)
    lower = _read_lower_case(source, model.config.do_lower_case)
    return export_model(model, out_path, tokens, lower, dtype, quantize_embeddings, max_length)


# --- command line -------------------------------------------------------------------------------

def dev_metric(model_path, task: str, data_dir, batch_size: int = 32, limit: int | None = None,
               max_length: int | None = None) -> float:
    """The task's main dev metric for a runtime file, computed by the runtime."""
    spec = get_task(task)
    examples = glue_dev_set(spec, data_dir, limit=limit)
    model = runtime.load(model_path)
    if model.num_labels != spec.num_labels:
        raise ExportError(f"the model has {model.num_labels} outputs, task {spec.name} needs {spec.num_labels}")
    inputs = examples.texts if examples.pairs is None else list(zip(examples.texts, examples.pairs))
    logits = model.logits(inputs, batch_size=batch_size, max_length=max_length)
    return float(evaluate(spec, logits, examples.labels)["main"])


def format_table(rows: list[dict]) -> str:
    head = f"{'dtype':<10}{'size MB':>10}{'vs f32':>9}{'dev metric':>12}{'delta':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        metric = "" if r.get("metric") is None else f"{r['metric']:.4f}"
        delta = "" if r.get("delta") is None else f"{r['delta']:+.4f}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.3f}"
        lines.append(f"{r['dtype']:<10}{r['size'] / 1e6:>10.2f}{ratio:>9}{metric:>12}{delta:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    tune_process()
    parser = argparse.ArgumentParser(prog="python -m minitinybert.export",
                                     description="Export a checkpoint to the edge runtime format.")
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, vocab.txt)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dtypes", default="float32,float16,int8", help="comma-separated: float32,float16,int8")
    parser.add_argument("--quantize-embeddings", action="store_true", help="int8: quantize the embedding tables too")
    parser.add_argument("--max-length", type=int, default=128, help="default truncation length stored in the file")
    parser.add_argument("--task", help="evaluate each file on this GLUE task's dev split (MNLI: matched; "
                                       "the tasks of distill --task)")
    parser.add_argument("--data", help="data directory (else $MINITINYBERT_DATA; neither: GLUE from the "
                                       "Hugging Face Hub)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N dev examples only")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        print(f"error: --dtypes must list some of {', '.join(DTYPES)}; got {args.dtypes!r}", file=sys.stderr)
        return 2
    if "float32" in dtypes:     # the reference row comes first
        dtypes.remove("float32")
        dtypes.insert(0, "float32")
    out_dir = Path(args.out)
    rows = []
    try:
        for dtype in dtypes:
            path = out_dir / f"runtime-{dtype}.safetensors"
            t0 = time.perf_counter()
            export_runtime(args.checkpoint, path, dtype, args.quantize_embeddings, args.max_length)
            row = {"dtype": dtype, "path": str(path), "size": path.stat().st_size}
            print(f"wrote {path} ({row['size'] / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            if args.task:
                row["metric"] = dev_metric(path, args.task, args.data, args.batch_size, args.limit)
            rows.append(row)
    except (ExportError, WeightsError, ConfigError, RuntimeModelError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:   # DataError and friends
        print(f"error: {e}", file=sys.stderr)
        return 2
    ref = next((r for r in rows if r["dtype"] == "float32"), None)
    for r in rows:
        r["ratio"] = r["size"] / ref["size"] if ref else None
        if ref and r.get("metric") is not None:
            r["delta"] = r["metric"] - ref["metric"]
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
