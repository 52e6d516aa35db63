"""Similarity files: two texts and a score per line, and the zero-shot score of an embedding model on
one (Spearman's rank correlation between the cosine of the two texts' embeddings and the score, as
sentence-transformers' EmbeddingSimilarityEvaluator and the MTEB STS tasks report it).

Accepted layouts, tab separated and read with quoting off (sentences hold bare `"`):
  - GLUE's STS-B (train.tsv, dev.tsv): a header naming `sentence1`, `sentence2` and `score`
    among its 10 columns;
  - any file whose header names columns `sentence1`/`text1`, `sentence2`/`text2` and `score`/`label`;
  - no header: text, text, score on every line (a first line whose score is not a number is a header).
A directory stands for its dev.tsv (GLUE's STS-B folder).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import pearson, spearman
from .task_files import is_number
from .tasks import DataError

FIRST = ("sentence1", "text1", "text_a", "s1")
SECOND = ("sentence2", "text2", "text_b", "s2")
SCORE = ("score", "label", "similarity", "gold")


@dataclass
class SimilarityPairs:
    texts: list[str]
    pairs: list[str]
    scores: np.ndarray          # (N,) float64
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def read_similarity_file(path, limit: int | None = None) -> SimilarityPairs:
    path = Path(path)
    if path.is_dir():
        path = path / "dev.tsv"
    if not path.is_file():
        raise DataError(f"similarity file not found: {path}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r and any(x.strip() for x in r)]
    if not rows:
        raise DataError(f"{path}: no lines")
    head = [x.strip().lower() for x in rows[0]]
    columns = None
    if any(h in FIRST for h in head):
        try:
            columns = tuple(next(head.index(n) for n in names if n in head) for names in (FIRST, SECOND, SCORE))
        except StopIteration:
            raise DataError(f"{path}: the header {rows[0]} lacks a second text or a score column") from None
        rows = rows[1:]
    else:
        if len(rows[0]) < 3:
            raise DataError(f"{path}: line 1 has {len(rows[0])} fields; a similarity file has two texts and a score")
        columns = (0, 1, 2)
        if not is_number(rows[0][2]):
            rows = rows[1:]
    texts, pairs, scores = [], [], []
    need = max(columns) + 1
    for number, row in enumerate(rows[:limit] if limit else rows, 2):
        if len(row) < need:
            raise DataError(f"{path}: a line has {len(row)} fields, expected at least {need}: {row[:3]}")
        if not is_number(row[columns[2]]):
            raise DataError(f"{path}: score {row[columns[2]]!r} is not a number")
        texts.append(row[columns[0]])
        pairs.append(row[columns[1]])
        scores.append(float(row[columns[2]]))
    if len(texts) < 2:
        raise DataError(f"{path}: {len(texts)} scored pairs; Spearman needs at least 2")
    return SimilarityPairs(texts, pairs, np.asarray(scores, dtype=np.float64), str(path))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return np.sum(a * b, axis=1) / na / nb


def similarity_scores(embed, data: SimilarityPairs) -> dict[str, float]:
    """`embed(list of texts) -> (N, D)`: Spearman (the "main") and Pearson of the cosines against the
    scores. Each distinct text is embedded once."""
    unique = list(dict.fromkeys(data.texts + data.pairs))
    index = {t: i for i, t in enumerate(unique)}
    vectors = np.asarray(embed(unique))
    cos = cosine_rows(vectors[[index[t] for t in data.texts]], vectors[[index[t] for t in data.pairs]])
    rho = spearman(cos, data.scores)
    return {"spearman": rho, "pearson": pearson(cos, data.scores), "pairs": len(data), "main": rho}
