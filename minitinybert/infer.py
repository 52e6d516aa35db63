"""Run a model on texts: one JSON line per input.

    python -m minitinybert.infer MODEL [TEXT ...] [--file F] [--batch-size N] [--max-length N]

MODEL is a runtime file (python -m minitinybert.export) or a checkpoint directory (exported to
float32 in a temporary file first). Inputs come from the arguments, else from --file, else from
stdin: one text per line, or a sentence pair as two tab-separated fields; blank lines are skipped.
Output: {"text": ..., ["text_pair": ...,] "label": ..., "scores": {label: probability}} for a
classifier, {"text": ..., "score": x} for a regression model, {"text": ..., "embedding": [...]}
for a model without a head (or with --embed): its sentence embedding as its metadata says (pooling,
projection, normalisation; a checkpoint's from its embedding.json or sentence-transformers files).
Inputs longer than max_length tokens are truncated with a warning on
stderr. Errors (unreadable or corrupt model, no input) exit with status 2 and a message on stderr.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from . import runtime
from .engine.config import ConfigError
from .engine.process import tune_process
from .engine.weights import WeightsError
from .export import export_runtime


class InferError(Exception):
    pass


def parse_lines(lines, source: str):
    """Inputs from lines: texts, or (text, pair) for tab-separated lines; with their line numbers."""
    inputs, numbers = [], []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if "\t" in line:
            a, b = line.split("\t", 1)
            inputs.append((a, b))
        else:
            inputs.append(line)
        numbers.append(number)
    kinds = {isinstance(x, tuple) for x in inputs}
    if len(kinds) > 1:
        first_pair = next(n for x, n in zip(inputs, numbers) if isinstance(x, tuple))
        first_text = next(n for x, n in zip(inputs, numbers) if not isinstance(x, tuple))
        raise InferError(f"{source}: line {first_pair} is a tab-separated pair but line {first_text} is a single "
                         f"text; give either texts or pairs")
    return inputs, numbers


def read_inputs(args):
    if args.texts:
        return list(args.texts), None, "argument"
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                lines = f.readlines()
        except OSError as e:
            raise InferError(f"cannot read {args.file}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise InferError(f"{args.file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        inputs, numbers = parse_lines(lines, args.file)
        return inputs, numbers, "line"
    try:
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InferError(f"stdin is not UTF-8 text ({e.reason} at byte {e.start})") from None
    inputs, numbers = parse_lines(text.splitlines(), "stdin")
    return inputs, numbers, "line"


def open_model(path: str, tmp_dirs: list):
    p = Path(path)
    if p.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="minitinybert-infer-"))
        tmp_dirs.append(tmp)
        path = export_runtime(p, tmp / "model.safetensors", "float32")
    elif not p.exists():
        raise InferError(f"model not found: {path}")
    return runtime.load(path)


def main(argv=None) -> int:
    tune_process()
    parser = argparse.ArgumentParser(prog="python -m minitinybert.infer",
                                     description="Classify (or embed) texts with a runtime model or a checkpoint.")
    parser.add_argument("model", help="runtime model file or checkpoint directory")
    parser.add_argument("texts", nargs="*", help="texts (else --file, else stdin)")
    parser.add_argument("--file", help="one text, or tab-separated pair, per line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=None,
                        help="truncate inputs to this many tokens (default: the model's)")
    parser.add_argument("--pooling", default=None, choices=("mean", "cls", "cls_token"),
                        help="embeddings: the pooling (default: the model's, from its metadata)")
    parser.add_argument("--embed", action="store_true",
                        help="sentence embeddings as the model's metadata says (pooling, projection, normalisation), "
                             "also from a model with a task head")
    args = parser.parse_intermixed_args(argv)

    tmp_dirs: list = []
    try:
        if args.batch_size < 1:
            raise InferError(f"--batch-size must be >= 1, got {args.batch_size}")
        model = open_model(args.model, tmp_dirs)
        inputs, numbers, unit = read_inputs(args)
        if not inputs:
            raise InferError("no input: give texts as arguments, with --file, or on stdin")
        if model.num_labels and not args.embed:
            results, truncated = model.predict(inputs, batch_size=args.batch_size, max_length=args.max_length,
                                               return_truncated=True)
        else:
            results = [{"embedding": [round(float(v), 6) for v in row]}
                       for row in model.embed(inputs, pooling=args.pooling, batch_size=args.batch_size,
                                              max_length=args.max_length)]
            truncated = model.tokenize(inputs, max_length=args.max_length)["truncated"].tolist()
    except (InferError, runtime.RuntimeModelError, WeightsError, ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for tmp in tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)
    limit = args.max_length or model.max_length
    for index, was_truncated in enumerate(truncated):
        if was_truncated:
            where = f"{unit} {numbers[index]}" if numbers else f"input {index + 1}"
            print(f"warning: {where} is longer than {limit} tokens; truncated", file=sys.stderr)
    try:
        for item, result in zip(inputs, results):
            record = {"text": item[0], "text_pair": item[1]} if isinstance(item, tuple) else {"text": item}
            record.update(result)
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:        # e.g. piped into head
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
