"""Sentence embeddings on the board's call (one sentence, batch 1): runtime.py against ONNX Runtime, same run.

    /tmp/ortenv/bin/python -m tools.bench.embedding ST_DIR RUNTIME_FILE [RUNTIME_FILE ...]
        [--file STS] [--sentences 200] [--rounds 3] [--threads 1] [--json OUT]

ST_DIR is the student's sentence-transformers folder (`python -m minitinybert.export CKPT --st-folder
ST_DIR`): its BERT (config.json, model.safetensors) goes to ONNX through transformers (ort-f32) and
onnxruntime's quantize_dynamic (ort-int8, int8 weights and activations), its pooling, Dense and Normalize
run in NumPy after the session, as sentence-transformers runs them. RUNTIME_FILEs are runtime.py files of
the same model (float32, int8). Every engine embeds the first N texts of the similarity file one at a
time, from text: the same tokenizer (runtime.py's, in every engine) and the same pooling, so the rows
differ in the encoder alone. Rounds are interleaved (runtime, ORT, runtime, ...) so that other processes'
load hits all alike; a row gives the median over rounds of each round's median ms per sentence, p10 over
all sentences, and the Spearman of cosine on the whole file (each engine's own embeddings) as a check
that the engines compute the same model.

Runs in the venv with torch, transformers, onnx and onnxruntime (tools/bench/runtime.py says how to make
it); the package and its tests never import them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minitinybert import runtime
from minitinybert.data.sts import read_similarity_file, similarity_scores
from minitinybert.data.task_files import DATA_ENV, data_root


def onnx_files(st_dir: Path, workdir: Path) -> dict[str, Path]:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(st_dir), add_pooling_layer=False).eval()

    class Encoder(torch.nn.Module):             # positional inputs, the last hidden states out
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones((1, 12), dtype=torch.int64)
    f32 = workdir / "encoder.onnx"
    with torch.no_grad():
        torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(f32),
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in
                                        ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")},
                          opset_version=17, dynamo=False)
    int8 = workdir / "encoder-int8.onnx"
    quantize_dynamic(str(f32), str(int8), weight_type=QuantType.QInt8)
    return {"ort-f32": f32, "ort-int8": int8}


def st_head(st_dir: Path):
    """(pooling mode, Dense (W, b) or None, normalize) from the folder's modules.json."""
    from safetensors.numpy import load_file

    modules = json.loads((st_dir / "modules.json").read_text())
    pooling, dense, normalize = "mean", None, False
    for module in modules:
        kind, path = module["type"].rsplit(".", 1)[-1], st_dir / module.get("path", "")
        if kind == "Pooling":
            config = json.loads((path / "config.json").read_text())
            pooling = "mean" if config.get("pooling_mode_mean_tokens") else "cls"
        elif kind == "Dense":
            weights = load_file(str(path / "model.safetensors"))
            dense = (weights["linear.weight"].astype(np.float32), weights["linear.bias"].astype(np.float32))
        elif kind == "Normalize":
            normalize = True
    return pooling, dense, normalize


def ort_embedder(path: Path, st_dir: Path, tokenizer_model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    pooling, dense, normalize = st_head(st_dir)

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer_model.tokenize(texts)
        mask = batch["attention_mask"]
        hidden = session.run(["last_hidden_state"], {"input_ids": batch["input_ids"], "attention_mask": mask,
                                                     "token_type_ids": batch["token_type_ids"]})[0]
        if pooling == "mean":
            m = mask.astype(np.float32)[:, :, None]
            vectors = (hidden * m).sum(1) / m.sum(1)
        else:
            vectors = hidden[:, 0]
        if dense is not None:
            vectors = vectors @ dense[0].T + dense[1]
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors
    return embed


def batch_embedder(embed, batch_size: int = 64):
    def many(texts: list[str]) -> np.ndarray:
        return np.concatenate([embed(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return many


def one_round(embed, texts: list[str]) -> list[float]:
    embed(texts[:1])
    times = []
    for text in texts:
        t0 = time.perf_counter()
        embed([text])
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench.embedding", description=__doc__.splitlines()[0])
    parser.add_argument("st_dir", type=Path)
    parser.add_argument("runtime_files", nargs="+", type=Path)
    parser.add_argument("--file", help="similarity file (default <data>/glue/STS-B/dev.tsv)")
    parser.add_argument("--data", help="data directory (default $MINITINYBERT_DATA)")
    parser.add_argument("--sentences", type=int, default=200, help="texts timed one at a time (default 200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    if not (args.file or args.data or os.environ.get(DATA_ENV)):
        parser.error(f"give --file, or --data / ${DATA_ENV} holding glue/STS-B/dev.tsv")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    pairs = read_similarity_file(args.file or data_root(args.data) / "glue" / "STS-B" / "dev.tsv")
    texts = list(dict.fromkeys(pairs.texts))[:args.sentences]
    engines = {}
    for path in args.runtime_files:
        model = runtime.load(path, threads=args.threads)
        model.kernels                                      # wait for the Numba kernels before timing
        engines[f"runtime-{model.dtype}"] = (model.embed, path.stat().st_size)
    first = runtime.load(args.runtime_files[0])
    with tempfile.TemporaryDirectory(prefix="bench-embedding-") as tmp:
        for name, path in onnx_files(args.st_dir, Path(tmp)).items():
            engines[name] = (ort_embedder(path, args.st_dir, first, args.threads), path.stat().st_size)
        rows = {}
        for name, (embed, size) in engines.items():
            result = similarity_scores(batch_embedder(embed), pairs)
            rows[name] = {"engine": name, "mb": round(size / 1e6, 2), "spearman": round(result["spearman"], 4),
                          "rounds": []}
        for _ in range(args.rounds):
            for name, (embed, _) in engines.items():
                rows[name]["rounds"].append(one_round(embed, texts))
    print(f"{pairs.source}: Spearman on {len(pairs)} pairs; ms per sentence over its first {len(texts)} texts, batch 1, "
          f"{args.threads} thread(s), {args.rounds} interleaved rounds; {os.cpu_count()} cores")
    base = {k: statistics.median(statistics.median(r) for r in row["rounds"]) for k, row in rows.items()}
    print(f"{'engine':<16}{'MB':>8}{'spearman':>10}{'median ms':>11}{'p10 ms':>8}  vs ORT of its type")
    for name, row in rows.items():
        row["median_ms"] = round(base[name], 3)
        row["p10_ms"] = round(float(np.percentile([t for r in row["rounds"] for t in r], 10)), 3)
        peer = "ort-int8" if name.endswith("int8") else "ort-f32"
        ratio = f"{base[name] / base[peer]:.2f}x" if name.startswith("runtime") and peer in base else ""
        row["vs_ort"] = ratio
        print(f"{name:<16}{row['mb']:>8.2f}{row['spearman']:>10.4f}{row['median_ms']:>11.2f}{row['p10_ms']:>8.2f}  {ratio}")
        del row["rounds"]
    if args.json:
        Path(args.json).write_text(json.dumps({"file": pairs.source, "threads": args.threads, "sentences": len(texts),
                                               "rows": list(rows.values())}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
