"""Export a checkpoint to the edge runtime's single-file format (see minitinybert/runtime.py).

    python -m minitinybert.export CHECKPOINT --out DIR [--dtypes float32,float16,int8]
                                  [--quantize-embeddings [--embedding-bits 4 [--embedding-group 16]]]
                                  [--max-length 128]
                                  [--task sst2 --data DIR]
                                  [--vocab FILE|DIR ...] [--vocab-size N]

writes DIR/runtime-<dtype>.safetensors for each dtype and prints a table: size, size ratio vs
float32 and, with --task, the dev-set metric of each file (run by the runtime itself) and its
change from float32.

float32: every tensor as trained. float16: 2-D tensors (embeddings and linear weights) in float16,
biases and layer-norm parameters stay float32. int8: the encoder's and the pooler's linear weights
as symmetric per-output-channel int8 (scale = max|w| / 127), the classifier and all 1-D tensors
in float32; with quantize_embeddings the three embedding tables too (one scale per row), which is
what makes a small-vocabulary-bound model like tinybert4 shrink (its word embeddings are 2/3 of it).
With embedding_bits=4 the word-embedding table (only: positions and token types stay int8) is stored
at 4 bits, values in [-7, 7], two a byte (low nibble first) in a U8 tensor of shape (V, ceil(C / 2)),
beside its "_scale" tensor: symmetric per group of embedding_group (16) values of a row, float16 (V, G)
scales (scale = max|group| / 7), or with embedding_group 0 per row, float32 (V,): half the table or less.
On SST-2's pruned student (docs/cli.md) per-row scales lost 0.91 point of dev accuracy, groups of 16 0.11.

--vocab keeps only the word pieces that the given texts tokenize to, plus the special tokens (ids
renumbered in the old order, the word-embedding rows taken along): a smaller file, the same runtime.
The rule, which follows from greedy longest-match-first: a word all of whose pieces are kept
tokenizes exactly as before (no longer piece can appear, none of its own went), so the source texts
tokenize identically; a word that needed a dropped piece is split again from the kept pieces, and
becomes [UNK] where none fits. With --vocab-size N only the N - (specials) most frequent pieces are
kept. A task directory gives its train split only, so that the dev metric printed before and after
is measured on text the vocabulary was not drawn from.

Training-only tensors are dropped: TinyBERT's fit_dense projections and the MLM head (cls.*).
The tensors are laid out float32 first, then float16, then int8 (each aligned), in the model's
order, so that a layer's query, key and value weights lie back to back and the runtime can use
them as one fused matrix without a copy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import runtime
from .data.hub import glue_dev_set
from .data.metrics import evaluate
from .data.task_files import read_tsv
from .data.tasks import DataError, get_task
from .engine.config import ConfigError
from .engine.files import atomic_path
from .engine.pooling import SentenceConfig, read_model_sentence_config
from .engine.process import tune_process
from .engine.weights import WeightsError, load_model
from .quantize import quantize_rows, quantize_rows_int4
from .runtime import FORMAT, RuntimeModelError

DTYPES = ("float32", "float16", "int8")
_SAFETENSORS_DTYPE = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
                      np.dtype(np.uint8): "U8"}
EMBEDDING_BITS = (8, 4)
EMBEDDING_GROUP = 16    # values per scale of a 4-bit table (SST-2's pruned student: -0.11 point; per row -0.91)
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


class ExportError(ValueError):
    """A checkpoint or option that cannot be exported."""


# --- building the tensors -----------------------------------------------------------------------

def _is_linear_weight(name: str) -> bool:
    return name.endswith(".weight") and (name.startswith("encoder.") and not name.endswith("LayerNorm.weight")
                                         or name in ("pooler.dense.weight", "embedding_projection.weight"))


def check_embedding_bits(dtype: str, quantize_embeddings: bool, embedding_bits: int,
                         embedding_group: int = 0) -> None:
    if type(embedding_group) is not int or embedding_group < 0:
        raise ExportError(f"embedding group must be 0 (a scale a row) or a number of values, got {embedding_group!r}")
    if embedding_bits not in EMBEDDING_BITS:
        raise ExportError(f"embedding bits must be 8 or 4, got {embedding_bits!r}")
    if embedding_bits == 4 and (dtype != "int8" or not quantize_embeddings):
        raise ExportError(f"4-bit word embeddings need the int8 dtype with quantized embeddings (--dtypes int8 "
                          f"--quantize-embeddings), got dtype {dtype}, quantize_embeddings={quantize_embeddings}")


def runtime_tensors(state: dict[str, np.ndarray], dtype: str = "float32", quantize_embeddings: bool = False,
                    embedding_bits: int = 8, embedding_group: int = EMBEDDING_GROUP) -> list[tuple[str, np.ndarray]]:
    """(name, array) in file order for a state dict in unprefixed HF names. embedding_bits=4 (int8 with
    quantize_embeddings only): the word-embedding table at 4 bits, a scale per embedding_group values of a row
    (0: per row; quantize_rows_int4)."""
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_embedding_bits(dtype, quantize_embeddings, embedding_bits, embedding_group)
    out = []
    for name, value in state.items():
        if not name.startswith(("embeddings.", "encoder.", "pooler.", "classifier.", "embedding_projection.")):
            continue                                           # fit_dense*, cls.predictions.*
        value = np.ascontiguousarray(value, dtype=np.float32)
        is_embedding = name.startswith("embeddings.") and name.endswith("_embeddings.weight")
        if dtype == "int8" and (_is_linear_weight(name) or (is_embedding and quantize_embeddings)):
            four_bits = name == WORD_EMBEDDINGS and embedding_bits == 4
            q, scale = quantize_rows_int4(value, embedding_group) if four_bits else quantize_rows(value)
            out += [(name, q), (name + "_scale", scale)]
        elif dtype == "float16" and value.ndim == 2 and not name.startswith("classifier."):
            out.append((name, value.astype(np.float16)))
        else:
            out.append((name, value))
    # float32, then float16, then int8 and packed 4-bit (alignment); the model order within each group
    rank = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int8): 2, np.dtype(np.uint8): 2}
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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, arr in tensors:
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


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
                 quantize_embeddings: bool = False, max_length: int = 128, keep_ids=None, sentence=None,
                 projection: str | None = None, embedding_bits: int = 8,
                 embedding_group: int = EMBEDDING_GROUP) -> Path:
    """Write a `Bert` (with its vocabulary) as a runtime file. max_length is the default truncation
    length stored in the file (at most the model's max_position_embeddings: larger values are capped).
    keep_ids (ascending old ids, see kept_piece_ids): write only these word pieces. sentence (a
    pooling.SentenceConfig): the sentence embedding's pooling and normalisation, into the metadata, and
    projection, the name prefix of the linear map after pooling (an embedding student's last fit_dense),
    written as embedding_projection.* (as the encoder's linear weights: int8 in an int8 file) for the
    runtime's embed(). embedding_bits=4: the word-embedding table at 4 bits, a scale per embedding_group values
    (see runtime_tensors)."""
    cfg = model.config
    if type(max_length) is int and max_length > cfg.max_position_embeddings:
        max_length = cfg.max_position_embeddings
    if cfg.hidden_act not in ("gelu", "gelu_python"):
        raise ExportError(f"hidden_act {cfg.hidden_act!r}: the runtime computes the exact erf GELU only")
    if type(max_length) is not int or not 3 <= max_length <= cfg.max_position_embeddings:
        raise ExportError(f"max_length must be an integer in [3, {cfg.max_position_embeddings}], got {max_length!r}")
    if len(tokens) != cfg.vocab_size:
        raise ExportError(f"{len(tokens)} vocabulary tokens for vocab_size {cfg.vocab_size}")
    state = model.state_dict()
    if keep_ids is not None:
        state, cfg, tokens = prune_vocab(state, cfg, tokens, keep_ids)
    metadata = runtime_metadata(cfg, tokens, do_lower_case, max_length, dtype)
    if sentence is not None:
        metadata.update(pooling="cls_token" if sentence.pooling == "cls" else sentence.pooling,
                        normalize="true" if sentence.normalize else "false")
    if projection:        # the linear map after pooling: stored as the encoder's linear weights are
        state = {**state, **{f"embedding_projection.{x}": state[f"{projection}.{x}"] for x in ("weight", "bias")}}
    write_safetensors(out_path, runtime_tensors(state, dtype, quantize_embeddings, embedding_bits,
                                                      embedding_group), metadata)
    return Path(out_path)


def checkpoint_vocab(checkpoint_dir, vocab_size: int) -> tuple[list[str], bool]:
    """(tokens, do_lower_case) of a checkpoint directory (or of the directory of its weights file)."""
    directory = Path(checkpoint_dir)
    source = directory if directory.is_dir() else directory.parent
    return _read_vocab(source, vocab_size), _read_lower_case(source, None)


def export_runtime(checkpoint_dir, out_path, dtype: str = "float32", quantize_embeddings: bool = False,
                   max_length: int | None = None, keep_ids=None, embedding_bits: int = 8,
                   embedding_group: int = EMBEDDING_GROUP) -> Path:
    """Checkpoint directory (config.json, model.safetensors, vocab.txt) -> runtime file at out_path.
    A sentence-embedding model's pipeline (its sentence-transformers files, or the embedding.json of
    distill's embedding stage) goes into the file: pooling, normalisation, projection, and its
    max_seq_length as the default max_length (else 128)."""
    directory = Path(checkpoint_dir)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_embedding_bits(dtype, quantize_embeddings, embedding_bits, embedding_group)   # before the (slow) load
    model = load_model(directory)
    tokens, lower = checkpoint_vocab(directory, model.config.vocab_size)
    lower = model.config.do_lower_case if lower is None else lower
    sentence, projection = read_model_sentence_config(directory) or (None, None)
    if max_length is None:
        max_length = (sentence and sentence.max_seq_length) or 128
    return export_model(model, out_path, tokens, lower, dtype, quantize_embeddings, max_length, keep_ids,
                        sentence, projection, embedding_bits, embedding_group)


def write_st_folder(checkpoint_dir, out_dir) -> Path:
    """A sentence-transformers folder of a checkpoint: Transformer (config.json, model.safetensors without
    the training-only tensors, vocab.txt, tokenizer files), Pooling, Dense (the embedding projection, when
    there is one) and Normalize modules, as its embedding.json or sentence-transformers files say."""
    directory, out = Path(checkpoint_dir), Path(out_dir)
    model = load_model(directory)
    sentence, projection = read_model_sentence_config(directory) or (SentenceConfig(), None)
    tokens, lower = checkpoint_vocab(directory, model.config.vocab_size)
    lower = model.config.do_lower_case if lower is None else lower
    state = model.state_dict()
    files = {"config.json": json.dumps(model.config.replace(fit_size=0, fit_shared=False).to_dict(), indent=2),
             "vocab.txt": "\n".join(tokens) + "\n",
             "tokenizer_config.json": json.dumps({"do_lower_case": lower, "tokenizer_class": "BertTokenizer",
                                                  "model_max_length": model.config.max_position_embeddings}),
             "special_tokens_map.json": json.dumps({k: f"[{k[:-6].upper()}]" for k in
                                                    ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}),
             "sentence_bert_config.json": json.dumps({"max_seq_length": sentence.max_seq_length or 128,
                                                      "do_lower_case": False}),
             "1_Pooling/config.json": json.dumps({"word_embedding_dimension": model.config.hidden_size,
                                                  "pooling_mode_cls_token": sentence.pooling == "cls",
                                                  "pooling_mode_mean_tokens": sentence.pooling == "mean",
                                                  "pooling_mode_max_tokens": False,
                                                  "pooling_mode_mean_sqrt_len_tokens": False}, indent=2)}
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    tensors = {"model.safetensors": [(n, np.ascontiguousarray(v, np.float32)) for n, v in state.items()
                                     if n.startswith(("embeddings.", "encoder.", "pooler."))]}
    if projection:
        W = state[projection + ".weight"]
        modules.append(("Dense", "2_Dense"))
        files["2_Dense/config.json"] = json.dumps({"in_features": int(W.shape[1]), "out_features": int(W.shape[0]),
                                                   "bias": True,
                                                   "activation_function": "torch.nn.modules.linear.Identity"})
        tensors["2_Dense/model.safetensors"] = [(f"linear.{x}", np.ascontiguousarray(state[f"{projection}.{x}"],
                                                                                   np.float32)) for x in ("weight", "bias")]
    if sentence.normalize:
        modules.append(("Normalize", f"{len(modules)}_Normalize"))
    files["modules.json"] = json.dumps([{"idx": i, "name": str(i), "path": path,
                                         "type": f"sentence_transformers.models.{kind}"}
                                        for i, (kind, path) in enumerate(modules)], indent=2)
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    for name, items in tensors.items():
        write_safetensors(out / name, items, {"format": "pt"})
    return out


# --- a smaller vocabulary: the word pieces some texts use ---------------------------------------

# GLUE's sentence columns (MRPC's "#1 String" ...): the columns of a TSV with a header that hold text
TEXT_COLUMNS = ("sentence", "sentence1", "sentence2", "question", "question1", "question2",
                "#1 String", "#2 String", "text")


def _task_of_directory(directory: Path):
    """The GLUE task a directory is named after (SST-2, CoLA, ...), or None."""
    try:
        return get_task(directory.name)
    except DataError:
        return None


def _tsv_texts(path: Path) -> list[str]:
    """The texts of a GLUE-style TSV: its task's text columns when its folder names a task (CoLA has
    no header), else the columns its header names as TEXT_COLUMNS."""
    rows = read_tsv(path)
    task = _task_of_directory(path.parent)
    header = None if task is not None and not task.has_header else (rows[0] if rows else [])
    body = rows if header is None else rows[1:]
    if task is not None:
        wanted = [c for c in (task.text_column, task.pair_column) if c is not None]
        columns = [c if isinstance(c, int) else header.index(c) for c in wanted
                   if isinstance(c, int) or c in header]
    else:
        columns = [i for i, name in enumerate(header) if name in TEXT_COLUMNS]
    if not columns:
        raise ExportError(f"{path}: no text column (a header naming one of {', '.join(TEXT_COLUMNS)})")
    # rows too short for a column (QQP has a few) hold no text to keep
    return [row[i] for row in body for i in columns if i < len(row) and row[i]]


def _file_texts(path: Path) -> list[str]:
    if path.suffix.lower() == ".tsv":
        return _tsv_texts(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ExportError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def vocab_texts(source) -> list[str]:
    """The texts of a vocabulary source: a text file (one text per line), a GLUE-style TSV, a GLUE
    task directory (its train.tsv only: the dev set stays unseen, for an honest dev metric), or
    another directory (every .txt and .tsv file in it, a corpus folder say)."""
    path = Path(source)
    if path.is_dir():
        task = _task_of_directory(path)
        if task is not None:
            files = [path / Path(task.train_file).name]
            if not files[0].is_file():
                raise ExportError(f"{path}: no {files[0].name} (the {task.display_name} train split)")
        else:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".txt", ".tsv") and p.is_file())
            if not files:
                raise ExportError(f"{path}: no .txt or .tsv file to take a vocabulary from")
    elif path.is_file():
        files = [path]
    else:
        raise ExportError(f"vocabulary source {path} does not exist")
    texts = [text for file in files for text in _file_texts(file)]
    if not texts:
        raise ExportError(f"{source}: no text to take a vocabulary from")
    return texts


def piece_counts(tokens: list[str], do_lower_case: bool, texts, chunk: int = 10_000) -> Counter:
    """How often each word-piece id occurs in the texts, tokenized as the runtime does."""
    tokenizer = runtime.WordPieceTokenizer(tokens, do_lower_case)
    counts = Counter()
    for start in range(0, len(texts), chunk):        # in chunks: a corpus's id lists need not all be held
        for ids in tokenizer.token_ids(texts[start:start + chunk]):
            counts.update(ids)
    return counts


def kept_piece_ids(tokens: list[str], counts: Counter, vocab_size: int | None = None) -> list[int]:
    """Ascending old ids: the special tokens and the pieces counted; with vocab_size, only the most
    frequent pieces (ties: the lower id) so that the file holds vocab_size pieces in all."""
    specials = [i for i, token in enumerate(tokens) if token in runtime.SPECIAL_TOKENS]
    pieces = sorted((i for i in counts if i not in set(specials)), key=lambda i: (-counts[i], i))
    if vocab_size is not None:
        if vocab_size < len(specials) + 1:
            raise ExportError(f"vocab size {vocab_size}: the {len(specials)} special tokens and at least one "
                              f"piece must fit")
        pieces = pieces[:vocab_size - len(specials)]
    return sorted(set(specials) | set(pieces))


def prune_vocab(state: dict, config, tokens: list[str], keep_ids) -> tuple[dict, object, list[str]]:
    """(state, config, tokens) keeping the word pieces `keep_ids` (ascending old ids): their
    embedding rows, renumbered 0.. in the old order."""
    keep = np.asarray(keep_ids, dtype=np.int64)
    if keep.ndim != 1 or keep.size == 0 or np.any(np.diff(keep) <= 0) or keep[0] < 0 or keep[-1] >= len(tokens):
        raise ExportError(f"keep_ids must be ascending ids in [0, {len(tokens)}), without repeats")
    kept = [tokens[i] for i in keep]
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t in tokens and t not in kept]
    if missing:
        raise ExportError(f"the kept vocabulary lacks {', '.join(missing)}: the runtime needs them")
    state = dict(state)
    name = "embeddings.word_embeddings.weight"
    state[name] = np.asarray(state[name])[keep]
    # the MLM head's vocabulary-sized tensors are training-only: runtime_tensors drops them anyway
    return state, replace(config, vocab_size=len(kept)), kept


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
    """One row per dtype; with a pruned vocabulary also the full-vocabulary file's size and metric
    and the metric's change from it ("vocab delta")."""
    pruned = any(r.get("full_size") is not None for r in rows)
    head = f"{'dtype':<10}{'size MB':>10}{'vs f32':>9}{'dev metric':>12}{'delta':>10}"
    if pruned:
        head += f"{'full MB':>10}{'full metric':>13}{'vocab delta':>13}"
    lines = [head, "-" * len(head)]

    def num(value, spec):
        return "" if value is None else format(value, spec)

    for r in rows:
        line = (f"{r['dtype']:<10}{r['size'] / 1e6:>10.2f}{num(r.get('ratio'), '.3f'):>9}"
                f"{num(r.get('metric'), '.4f'):>12}{num(r.get('delta'), '+.4f'):>10}")
        if pruned:
            full = r.get("full_metric")
            change = None if full is None or r.get("metric") is None else r["metric"] - full
            line += f"{r['full_size'] / 1e6:>10.2f}{num(full, '.4f'):>13}{num(change, '+.4f'):>13}"
        lines.append(line)
    return "\n".join(lines)


def plan_vocab(checkpoint, sources: list[str], vocab_size: int | None = None):
    """(keep_ids, tokens, kept tokens, do_lower_case, report lines) for --vocab."""
    config = load_model(checkpoint).config
    tokens, lower = checkpoint_vocab(checkpoint, config.vocab_size)
    lower = config.do_lower_case if lower is None else lower
    texts = [text for source in sources for text in vocab_texts(source)]
    counts = piece_counts(tokens, lower, texts)
    keep = kept_piece_ids(tokens, counts, vocab_size)
    specials = sum(tokens[i] in runtime.SPECIAL_TOKENS for i in keep)
    lines = [f"vocabulary from {len(texts):,} texts ({', '.join(map(str, sources))}): {len(counts):,} pieces used; "
             f"kept {len(keep):,} of {len(tokens):,} pieces ({specials} special tokens among them), "
             f"dropped {len(tokens) - len(keep):,}"]
    return keep, tokens, [tokens[i] for i in keep], lower, lines


def retokenized(task: str, data_dir, tokens, kept, do_lower_case, limit=None) -> tuple[int, int]:
    """(dev examples whose word pieces change with the kept vocabulary, dev examples): only these
    can change their prediction, so the count bounds the metric's change."""
    spec = get_task(task)
    examples = glue_dev_set(spec, data_dir, limit=limit)
    full = runtime.WordPieceTokenizer(tokens, do_lower_case)
    small = runtime.WordPieceTokenizer(kept, do_lower_case)
    columns = [examples.texts] + ([examples.pairs] if examples.pairs is not None else [])
    changed = np.zeros(len(examples), dtype=bool)
    for texts in columns:
        for i, text in enumerate(texts):
            changed[i] |= full.tokenize(text) != small.tokenize(text)
    return int(changed.sum()), len(examples)


def main(argv=None) -> int:
    tune_process()
    parser = argparse.ArgumentParser(prog="python -m minitinybert.export",
                                     description="Export a checkpoint to the edge runtime format.")
    parser.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, vocab.txt)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dtypes", default="float32,float16,int8", help="comma-separated: float32,float16,int8")
    parser.add_argument("--quantize-embeddings", action="store_true", help="int8: quantize the embedding tables too")
    parser.add_argument("--embedding-bits", type=int, choices=EMBEDDING_BITS, default=8,
                        help="with int8 and --quantize-embeddings: 4 stores the word-embedding table at 4 bits (two "
                             "values a byte, a scale per --embedding-group values); positions, token types stay int8")
    parser.add_argument("--embedding-group", type=int, default=EMBEDDING_GROUP, metavar="N",
                        help=f"with --embedding-bits 4: a float16 scale per N values of a row (default "
                             f"{EMBEDDING_GROUP}; 0: a float32 scale per row, smaller but less exact)")
    parser.add_argument("--max-length", type=int, default=None, help="default truncation length stored in the file "
                        "(default: a sentence-embedding model's max_seq_length, else 128)")
    parser.add_argument("--st-folder", metavar="DIR", help="also write a sentence-transformers folder of the checkpoint "
                                                          "(Transformer, Pooling, Dense, Normalize modules)")
    parser.add_argument("--task", help="evaluate each file on this GLUE task's dev split (MNLI: matched; "
                                       "the tasks of distill --task)")
    parser.add_argument("--data", help="data directory (else $MINITINYBERT_DATA; neither: GLUE from the "
                                       "Hugging Face Hub)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N dev examples only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab", action="append", metavar="FILE|DIR",
                        help="keep only the word pieces these texts use (and the special tokens): a text file "
                             "(one text per line), a GLUE-style TSV, a GLUE task directory (its train.tsv) or a "
                             "folder of .txt/.tsv files; repeatable")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="with --vocab: keep the most frequent pieces only, N in all (special tokens included); "
                             "a piece costs hidden_size + 4 bytes in an int8 file with --quantize-embeddings "
                             "(316 for tinybert4); with --embedding-bits 4, ceil(hidden_size / 2) + "
                             "2 ceil(hidden_size / G) for groups of G (196 at 16), ceil(hidden_size / 2) + 4 per row "
                             "(160); "
                             "4 x hidden_size in float32")
    args = parser.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        print(f"error: --dtypes must list some of {', '.join(DTYPES)}; got {args.dtypes!r}", file=sys.stderr)
        return 2
    if args.embedding_bits == 4 and not (args.quantize_embeddings and "int8" in dtypes):
        print("error: --embedding-bits 4 needs --quantize-embeddings and int8 among --dtypes (it applies to the int8 "
              "file's word-embedding table)", file=sys.stderr)
        return 2
    if args.embedding_group < 0:
        print(f"error: --embedding-group must be 0 (a scale a row) or a positive number of values, got "
              f"{args.embedding_group}", file=sys.stderr)
        return 2
    if args.vocab_size is not None and not args.vocab:
        print("error: --vocab-size needs --vocab (the texts whose pieces to count)", file=sys.stderr)
        return 2
    if "float32" in dtypes:     # the reference row comes first
        dtypes.remove("float32")
        dtypes.insert(0, "float32")
    out_dir = Path(args.out)
    rows = []
    try:
        keep = None
        if args.vocab:
            keep, tokens, kept, lower, lines = plan_vocab(args.checkpoint, args.vocab, args.vocab_size)
            if args.task:
                changed, total = retokenized(args.task, args.data, tokens, kept, lower, args.limit)
                lines.append(f"{args.task} dev: {changed} of {total} examples tokenize differently (only these "
                             f"can change their prediction)")
            print("\n".join(lines))
        for dtype in dtypes:
            path = out_dir / f"runtime-{dtype}.safetensors"
            t0 = time.perf_counter()
            bits = args.embedding_bits if dtype == "int8" else 8
            export_runtime(args.checkpoint, path, dtype, args.quantize_embeddings, args.max_length, keep, bits,
                           args.embedding_group)
            row = {"dtype": dtype, "path": str(path), "size": path.stat().st_size}
            print(f"wrote {path} ({row['size'] / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            if args.task:
                row["metric"] = dev_metric(path, args.task, args.data, args.batch_size, args.limit)
            if keep is not None:      # the full vocabulary's file, for comparison only: not kept
                full = out_dir / f".full-vocab-{dtype}.safetensors"
                try:
                    export_runtime(args.checkpoint, full, dtype, args.quantize_embeddings, args.max_length,
                                   embedding_bits=bits, embedding_group=args.embedding_group)
                    row["full_size"] = full.stat().st_size
                    if args.task:
                        row["full_metric"] = dev_metric(full, args.task, args.data, args.batch_size, args.limit)
                finally:
                    full.unlink(missing_ok=True)
            rows.append(row)
    except (ExportError, WeightsError, ConfigError, RuntimeModelError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:   # DataError and friends
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.st_folder:
        try:
            print(f"wrote the sentence-transformers folder {write_st_folder(args.checkpoint, args.st_folder)}",
                  file=sys.stderr)
        except (ExportError, WeightsError, ConfigError, OSError, ValueError) as e:
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
