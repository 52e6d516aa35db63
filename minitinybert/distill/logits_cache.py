"""The fine-tuned teacher's logits for the training examples, computed once for prediction-layer
distillation and cached on disk.

The teacher is frozen and runs without dropout, so its logits for a given (augmented) example never
change: one pass over the examples the stage will draw, in batches sorted by length (almost no
padding), replaces a teacher forward pass in every step of the stage. Only those examples: SST-2's
prediction stage draws 2,000 x 32 of its 281k augmented examples, and a pass over all of them cost
15 minutes against the stage's 7. Rows not computed yet are NaN in the cache; a later run that needs
more (more steps, another seed) computes the missing rows alone and adds them.

The cache file carries, in its name and in its header, a key of everything the logits depend on:
the teacher's weights and configuration, the vocabulary, max_length and every text. A changed
teacher or data file makes another key, so a stale cache is never read.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np

from ..data.batches import predict_logits
from ..data.tasks import Examples
from ..data.token_cache import TokenTable
from ..data.tokenizer import Tokenizer
from ..engine.weights import write_safetensors_atomic

CACHE_FORMAT = "minitinybert-teacher-logits"
CACHE_VERSION = 2      # 2: rows not computed are NaN


def logits_key(teacher, tokenizer: Tokenizer, examples: Examples, max_length: int) -> str:
    """sha256 of what the teacher's logits on `examples` depend on."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "config": teacher.config.to_dict(),
                         "vocab": tokenizer.fingerprint(), "max_length": int(max_length),
                         "examples": len(examples), "pairs": examples.pairs is not None},
                        sort_keys=True).encode())
    h.update(np.ascontiguousarray(teacher.params.data).view(np.uint8).reshape(-1))
    for field in [examples.texts] + ([examples.pairs] if examples.pairs is not None else []):
        for text in field:
            h.update(text.encode("utf-8"))
            h.update(b"\0")    # separator: ["ab", "c"] and ["a", "bc"] differ
    return h.hexdigest()


def cache_path(cache_dir: str | Path, examples: Examples, key: str) -> Path:
    task = re.sub(r"[^A-Za-z0-9_.-]", "_", examples.task.name)
    return Path(cache_dir) / f"teacher-logits-{task}-{key[:24]}.safetensors"


def _read(path: Path, key: str, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(the cached logits, ""), or (None, why) when the file is not the one asked for."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            logits = f.get_tensor("logits")
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        return None, f"unreadable ({e})"
    if meta.get("cache_format") != CACHE_FORMAT or meta.get("key") != key:
        return None, "its key differs from its name's"
    if logits.shape != shape or logits.dtype != np.float32 or np.isinf(logits).any():
        return None, f"it holds {logits.dtype} {logits.shape}, expected float32 {shape} (finite or NaN)"
    return logits, ""


def _computed(logits: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows holding logits (the others are NaN: not computed yet)."""
    return ~np.isnan(logits).any(axis=1)


def teacher_logits(teacher, examples: Examples, tokenizer: Tokenizer, max_length: int,
                   cache_dir: str | Path | None = None, batch_size: int = 64, log=print,
                   tokens: TokenTable | None = None, needed: np.ndarray | None = None,
                   workers: int | None = 1) -> np.ndarray:
    """(N, num_labels) float32: the teacher's eval-mode logits of the examples, in order, for the rows
    in `needed` (indices; default all) and any other row the cache holds, NaN elsewhere. Rows computed
    before with the same teacher and data are read from `cache_dir`; the missing ones are computed and
    added to it. `tokens`: the examples' token ids, when the caller has them (tokens.py); `workers`:
    threads for the pass (batches.predict_logits)."""
    shape = (len(examples), teacher.config.num_labels)
    needed = np.arange(shape[0]) if needed is None else np.unique(np.asarray(needed, dtype=np.int64))
    logits = np.full(shape, np.nan, np.float32)
    path = key = None
    if cache_dir is not None:
        key = logits_key(teacher, tokenizer, examples, max_length)
        path = cache_path(cache_dir, examples, key)
        if path.exists():
            cached, why = _read(path, key, shape)
            if cached is None:
                log(f"[prediction] ignoring the teacher-logits cache {path}: {why}; computing it again")
            else:
                logits = cached
    missing = needed[~_computed(logits)[needed]]
    if len(missing) == 0:
        if path is not None:
            log(f"[prediction] teacher logits of {len(needed)} examples read from {path}")
        return logits
    log(f"[prediction] teacher logits of {len(missing)} of {len(examples)} examples (the ones the stage "
        f"draws{', less those cached' if len(missing) < len(needed) else ''}): one pass, batches sorted by length")
    t0 = time.perf_counter()
    logits[missing] = predict_logits(teacher, examples, tokenizer, max_length, batch_size=batch_size, tokens=tokens,
                                     progress="teacher logits" if log is not None else None, rows=missing,
                                     workers=workers)
    log(f"[prediction] teacher logits computed in {time.perf_counter() - t0:.0f} s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors_atomic({"logits": logits}, path, metadata={
            "cache_format": CACHE_FORMAT, "version": str(CACHE_VERSION), "key": key,
            "examples": str(len(examples))})
    return logits
