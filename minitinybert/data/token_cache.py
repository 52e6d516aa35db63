"""Every example's token ids, computed once and kept as an Arrow file that later stages and runs reuse.

A stage's examples (the task's training set, its augmented set, the dev sets) are turned into a
`datasets.Dataset` (text, pair, label) and tokenized by `Dataset.map`, batched, into an Arrow file
whose name is a key of everything the ids depend on: the texts, the vocabulary and its case
setting, and max_length. A later stage or run that asks for the same key memory-maps that file
instead of tokenizing again (SST-2's 67,349 training sentences: see tools/bench_token_cache.py).
The file is the examples as a dataset too: text, pair, label, input_ids, token_type_ids, length.

`TokenTable` holds the ids of all rows back to back (no padding) with their offsets: a batch is
its rows padded to the longest, the same arrays `Tokenizer.encode` gives for those texts, and
`lengths` are what length-grouped batching sorts by.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tasks import DataError, Examples
from .tokenizer import Batch, Tokenizer

CACHE_FORMAT = "minitinybert-tokens"
CACHE_VERSION = 1
CACHE_ENV = "MINITINYBERT_TOKEN_CACHE"
MAP_BATCH = 1000          # texts per tokenizer call in Dataset.map


@dataclass
class TokenTable:
    """The token ids of N examples: row i is ids[offsets[i]:offsets[i + 1]] (with its special tokens,
    truncated to max_length), token types alike."""
    ids: np.ndarray          # (total,) int32
    type_ids: np.ndarray     # (total,) int8
    offsets: np.ndarray      # (N + 1,) int64
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """(N,) tokens each example takes in a batch."""
        return np.diff(self.offsets)

    def batch(self, index) -> Batch:
        """The rows `index`, padded to the longest of them: `Tokenizer.encode` of their texts."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) == 0:
            raise DataError("a batch needs at least one example")
        starts, lengths = self.offsets[index], self.lengths[index]
        columns = np.arange(int(lengths.max()))
        real = columns[None, :] < lengths[:, None]                      # (B, T) the attention mask
        source = (starts[:, None] + columns[None, :])[real]
        input_ids = np.full(real.shape, self.pad_id, dtype=np.int32)
        token_type_ids = np.zeros(real.shape, dtype=np.int32)
        input_ids[real] = self.ids[source]
        token_type_ids[real] = self.type_ids[source]
        return Batch(input_ids, token_type_ids, real.astype(np.int32))


def tokenize_in_memory(examples: Examples, tokenizer: Tokenizer, max_length: int) -> TokenTable:
    """The table without a cache file (small sets, tests)."""
    ids, types = tokenizer.encode_rows(examples.texts, examples.pairs, max_length)
    return _table(ids, types, tokenizer.pad_id, max_length)


def _table(ids, types, pad_id: int, max_length: int) -> TokenTable:
    lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    flat_types = np.fromiter((t for row in types for t in row), dtype=np.int8, count=int(offsets[-1]))
    return TokenTable(flat, flat_types, offsets, pad_id, int(max_length))


# --- the examples as a dataset, tokenized by Dataset.map into an Arrow file ----------------------------

def examples_dataset(examples: Examples):
    """The examples as a `datasets.Dataset`: text, pair (pair tasks), label (ids, or float scores)."""
    import datasets

    columns = {"text": examples.texts}
    features = {"text": datasets.Value("string")}
    if examples.pairs is not None:
        columns["pair"], features["pair"] = examples.pairs, datasets.Value("string")
    regression = examples.labels.dtype.kind == "f"
    columns["label"] = examples.labels
    features["label"] = datasets.Value("float32" if regression else "int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def token_key(examples: Examples, tokenizer: Tokenizer, max_length: int) -> str:
    """sha256 of what the token ids depend on: the texts, the vocabulary (and case) and max_length."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION,
                                   "vocab": tokenizer.fingerprint(), "max_length": int(max_length),
                                   "examples": len(examples), "pairs": examples.pairs is not None},
                                  sort_keys=True).encode())
    for field in [examples.texts] + ([examples.pairs] if examples.pairs is not None else []):
        for text in field:
            data = text.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))     # length-prefixed: ["ab", "c"] and ["a", "bc"] differ
            h.update(data)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$MINITINYBERT_TOKEN_CACHE, else minitinybert-tokens/ in the datasets cache ($HF_DATASETS_CACHE,
    ~/.cache/huggingface/datasets): where a Hugging Face user looks for Arrow caches."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import datasets
    return Path(datasets.config.HF_DATASETS_CACHE) / "minitinybert-tokens"


def cache_path(cache_dir: str | Path, examples: Examples, max_length: int, key: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", examples.task.name)
    return Path(cache_dir) / f"{name}-{len(examples)}x{int(max_length)}-{key[:24]}.arrow"


def token_table(examples: Examples, tokenizer: Tokenizer, max_length: int, cache_dir: str | Path | None = None,
                log=None) -> TokenTable:
    """The token ids of `examples`: read from `cache_dir` when tokenized before with the same key,
    else tokenized there by `Dataset.map` (batched). Without `cache_dir`, in memory."""
    if cache_dir is None:
        return tokenize_in_memory(examples, tokenizer, max_length)
    import datasets

    datasets.disable_progress_bars()
    key = token_key(examples, tokenizer, max_length)
    path = cache_path(cache_dir, examples, max_length, key)
    what = f"{len(examples)} examples ({examples.task.name}, max length {max_length})"
    if path.exists():
        try:
            table = _read(datasets.Dataset.from_file(str(path)), examples, tokenizer, max_length)
            if log is not None:
                log(f"[data] token ids of {what} read from {path}")
            return table
        except (DataError, OSError, ValueError) as e:     # pyarrow's ArrowInvalid is a ValueError
            if log is not None:
                log(f"[data] ignoring the token cache {path}: {e}; tokenizing again")
            path.unlink(missing_ok=True)
    if log is not None:
        log(f"[data] tokenizing {what} into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    source = examples_dataset(examples)
    features = source.features.copy()
    features.update({"input_ids": datasets.List(datasets.Value("int32")),
                     "token_type_ids": datasets.List(datasets.Value("int8")),
                     "length": datasets.Value("int32")})

    def encode(batch):
        ids, types = tokenizer.encode_rows(batch["text"], batch.get("pair"), max_length)
        return {"input_ids": ids, "token_type_ids": types, "length": [len(row) for row in ids]}

    # Dataset.map writes beside `path` and renames into place: a killed run leaves no half file
    tokenized = source.map(encode, batched=True, batch_size=MAP_BATCH, features=features,
                           cache_file_name=str(path), new_fingerprint=key, load_from_cache_file=False)
    return _read(tokenized, examples, tokenizer, max_length)


def _read(ds, examples: Examples, tokenizer: Tokenizer, max_length: int) -> TokenTable:
    """The table of a tokenized dataset, checked to be the one for these examples."""
    needed = {"text", "label", "input_ids", "token_type_ids", "length"} | ({"pair"} if examples.pairs else set())
    missing = needed - set(ds.column_names)
    if missing:
        raise DataError(f"it lacks the column(s) {sorted(missing)}")
    if ds.num_rows != len(examples):
        raise DataError(f"it holds {ds.num_rows} rows for {len(examples)} examples")
    table = ds.data.table
    if table.column("text").to_pylist() != examples.texts or (
            examples.pairs is not None and table.column("pair").to_pylist() != examples.pairs):
        raise DataError("its texts are not these examples'")
    ids, types = table.column("input_ids").combine_chunks(), table.column("token_type_ids").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    if (not np.array_equal(types.offsets.to_numpy(), ids.offsets.to_numpy()) or lengths.min(initial=2) < 2
            or lengths.max(initial=0) > max_length
            or not np.array_equal(lengths, table.column("length").to_numpy())):
        raise DataError(f"its rows' lengths are not those of max length {max_length}")
    flat = ids.values.to_numpy()[offsets[0]:offsets[-1]]
    if flat.size and (flat.min() < 0 or flat.max() >= tokenizer.vocab_size):
        raise DataError(f"it holds token ids outside this vocabulary's {tokenizer.vocab_size}")
    flat_types = types.values.to_numpy()[offsets[0]:offsets[-1]]
    return TokenTable(np.ascontiguousarray(flat, dtype=np.int32), np.ascontiguousarray(flat_types, dtype=np.int8),
                      offsets - offsets[0], tokenizer.pad_id, int(max_length))
