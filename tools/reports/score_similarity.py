"""Zero-shot similarity score of sentence-embedding models: Spearman of the cosine against a similarity file.

    python -m tools.reports.score_similarity MODEL [MODEL ...] [--file F] [--latency N] [--json OUT]

MODEL is a runtime file (python -m minitinybert.export) or a checkpoint directory (exported to a float32
runtime file in a temporary directory first, with the pooling, projection, normalisation and maximum
length its embedding.json or sentence-transformers files declare). Each model embeds every distinct text
of the file once through the runtime's embed() (its metadata decides the pipeline); the row gives
Spearman (and Pearson) of cosine against the scores, the file size, and with --latency N the median
milliseconds to embed one sentence (batch 1, the file's first N texts, after one warm-up call).
F: two texts and a score per line, or GLUE's STS-B TSV (default $MINITINYBERT_DATA/glue/STS-B/dev.tsv).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minitinybert import runtime
from minitinybert.data.sts import read_similarity_file, similarity_scores
from minitinybert.data.task_files import DATA_ENV, data_root
from minitinybert.export import export_runtime


def default_file(data: str | None) -> Path:
    if not (data or os.environ.get(DATA_ENV)):
        raise SystemExit(f"error: give --file, or --data / ${DATA_ENV} holding glue/STS-B/dev.tsv")
    return data_root(data) / "glue" / "STS-B" / "dev.tsv"


def latency_ms(model, texts: list[str], n: int) -> float:
    texts = texts[:n]
    model.embed(texts[:1])                            # warm-up (kernels, buffers)
    times = []
    for text in texts:
        t0 = time.perf_counter()
        model.embed([text])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def score(path: str, pairs, latency: int = 0, threads: int | None = None) -> dict:
    tmp = None
    try:
        file = Path(path)
        if file.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix="score-similarity-"))
            file = export_runtime(file, tmp / "model.safetensors", "float32")
        model = runtime.load(file, threads=threads)
        t0 = time.perf_counter()
        result = similarity_scores(lambda texts: model.embed(texts, batch_size=64), pairs)
        row = {"model": path, "size_bytes": file.stat().st_size, "dtype": model.dtype, "pooling": model.pooling,
               "normalize": model.normalize, "max_length": model.max_length,
               "width": int(model.embed(pairs.texts[:1]).shape[1]), "spearman": result["spearman"],
               "pearson": result["pearson"], "pairs": len(pairs), "seconds": round(time.perf_counter() - t0, 1)}
        if latency:
            row["ms_per_sentence"] = latency_ms(model, pairs.texts, latency)
        return row
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reports.score_similarity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="runtime files or checkpoint directories")
    parser.add_argument("--file", help="similarity file (default <data>/glue/STS-B/dev.tsv)")
    parser.add_argument("--data", help="data directory (default $MINITINYBERT_DATA)")
    parser.add_argument("--limit", type=int, default=None, help="the first N pairs only")
    parser.add_argument("--latency", type=int, default=0, metavar="N",
                        help="also time batch-1 embedding of the first N texts (median ms per sentence)")
    parser.add_argument("--threads", type=int, default=None, help="the runtime's threads (default: BLAS's)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    pairs = read_similarity_file(args.file or default_file(args.data), args.limit)
    rows = []
    print(f"{pairs.source}: {len(pairs)} pairs")
    print(f"{'model':<52}{'dtype':>8}{'MB':>8}{'width':>7}{'spearman':>10}{'pearson':>9}{'ms/sent':>9}")
    for path in args.models:
        try:
            row = score(path, pairs, args.latency, args.threads)
        except (runtime.RuntimeModelError, OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        rows.append(row)
        ms = f"{row['ms_per_sentence']:.1f}" if "ms_per_sentence" in row else ""
        print(f"{path[-52:]:<52}{row['dtype']:>8}{row['size_bytes'] / 1e6:>8.2f}{row['width']:>7}"
              f"{row['spearman']:>10.4f}{row['pearson']:>9.4f}{ms:>9}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"file": pairs.source, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
