"""TinyBERT's data augmentation for task-specific distillation.

The procedure of the official TinyBERT/data_augmentation.py: each text is split into words by BERT's
basic tokenizer; every word that is purely alphabetic and not a stop word gets K=15 candidates;
each of N_a augmented copies replaces each such word, with probability p_t=0.4, by one of its
candidates drawn uniformly. Candidates come from

- `MlmCandidates`: the teacher's masked-language-model predictions for single-piece words (the
  word masked in a copy of the sentence, fed together with the unmasked sentence as segment B, as
  the official code does), many masked copies per forward pass;
- `EmbeddingCandidates`: nearest neighbours by cosine similarity in the teacher's input word
  embeddings, among whole-word vocabulary entries. The official code uses GloVe for multi-piece
  words; a checkpoint without an MLM head (the default teacher) has neither, so this is the
  stand-in, and words that are not one vocabulary entry keep themselves.

As in the official code, pair tasks augment the first text only (`augment_pair=True` adds copies
with the second text augmented instead); augmented texts are the words joined by spaces.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from .tasks import Examples
from .tokenizer import Tokenizer

# The official code's stop words: never replaced.
STOP_WORDS = frozenset([
    'i', 'me', 'my', 'myself', 'we', 'our', 'ours', 'ourselves', 'you', "you're", "you've", "you'll", "you'd",
    'your', 'yours', 'yourself', 'yourselves', 'he', 'him', 'his', 'himself', 'she', "she's", 'her', 'hers',
    'herself', 'it', "it's", 'its', 'itself', 'they', 'them', 'their', 'theirs', 'themselves', 'this', 'that',
    "that'll", 'these', 'those', 'am', 'is', 'are', 'was', 'were', 'be', 'been', 'being', 'have', 'has', 'had',
    'having', 'do', 'does', 'did', 'doing', 'a', 'an', 'the', 'and', 'but', 'if', 'or', 'because', 'as',
    'until', 'while', 'of', 'at', 'by', 'for', 'with', 'about', 'against', 'between', 'into', 'through',
    'during', 'before', 'after', 'above', 'below', 'to', 'from', 'up', 'down', 'in', 'out', 'on', 'off',
    'over', 'under', 'again', 'further', 'then', 'once', 'here', 'there', 'all', 'any', 'both', 'each', 'few',
    'more', 'most', 'other', 'some', 'such', 'no', 'nor', 'not', 'only', 'own', 'same', 'so', 'than', 'too',
    'very', 's', 't', 'can', 'will', 'just', 'don', "don't", 'should', "should've", 'now', 'd', 'll', 'm', 'o',
    're', 've', 'y', 'ain', 'aren', "aren't", 'couldn', "couldn't", 'didn', "didn't", 'doesn', "doesn't",
    'hadn', "hadn't", 'hasn', "hasn't", 'haven', "haven't", 'isn', "isn't", 'ma', 'mightn', "mightn't",
    'mustn', "mustn't", 'needn', "needn't", 'shan', "shan't", 'shouldn', "shouldn't", 'wasn', "wasn't",
    'weren', "weren't", 'won', "won't", 'wouldn', "wouldn't", "'s", "'re"])

_ALPHA = re.compile(r"[A-Za-z]+")
_SPECIAL = re.compile(r"^\[[^\]]*\]$")
CACHE_FORMAT = "minitinybert-augment"
CACHE_VERSION = 1


class AugmentError(ValueError):
    """Augmentation settings or a cache file that cannot be used."""


def is_augmentable(word: str) -> bool:
    """Alphabetic and not a stop word (the official `_is_valid` and stop-word test)."""
    return _ALPHA.fullmatch(word) is not None and word.lower() not in STOP_WORDS


def _sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1)).hexdigest()


class CandidateGenerator:
    """Candidates for words in context: subclasses set `kind` and implement `candidates`."""
    kind = "base"

    def __init__(self, tokenizer: Tokenizer, k: int):
        if k < 1:
            raise AugmentError(f"k (candidates per word) must be >= 1, got {k}")
        self.tokenizer = tokenizer
        self.k = int(k)
        self._fingerprint: str | None = None

    def candidates(self, sentences: list[list[str]], positions: list[list[int]]) -> list[list[list[str]]]:
        """For each sentence (its words) and each requested word position: a non-empty list of
        replacement words ([word] itself when there is nothing better)."""
        raise NotImplementedError

    def _weights_digest(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies what this generator would produce: kind, K, vocabulary and weights."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(json.dumps(
                [self.kind, self.k, self.tokenizer.fingerprint(), self._weights_digest()]).encode()).hexdigest()
        return self._fingerprint


class EmbeddingCandidates(CandidateGenerator):
    """Nearest whole-word neighbours in the teacher's input word-embedding matrix (cosine similarity)."""
    kind = "embedding"

    def __init__(self, model, tokenizer: Tokenizer, k: int = 15, block: int = 256):
        super().__init__(tokenizer, k)
        embeddings = np.asarray(model.params["embeddings.word_embeddings.weight"], dtype=np.float32)
        if embeddings.shape[0] != tokenizer.vocab_size:
            raise AugmentError(f"the model's word embeddings have {embeddings.shape[0]} rows, the tokenizer's "
                               f"vocabulary has {tokenizer.vocab_size} tokens: they do not belong together")
        self._embeddings = embeddings
        # Whole words only: no "##" continuations, no [special] tokens, no digits or punctuation.
        self._candidate_ids = np.array([i for i, t in enumerate(tokenizer.id_to_token) if _ALPHA.fullmatch(t)],
                                       dtype=np.int64)
        if len(self._candidate_ids) <= self.k:
            raise AugmentError(f"the vocabulary has only {len(self._candidate_ids)} whole-word entries, "
                               f"fewer than k+1={self.k + 1}")
        unit = embeddings[self._candidate_ids]
        self._unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        self._column = {int(token_id): col for col, token_id in enumerate(self._candidate_ids)}
        self.block = int(block)
        self._memo: dict[str, list[str]] = {}

    def _weights_digest(self) -> str:
        return _sha256_array(self._embeddings)

    def neighbours(self, words: list[str]) -> dict[str, list[str]]:
        """The K nearest whole words of each word (memoised); [word] for words outside the vocabulary."""
        vocab = self.tokenizer.vocab
        todo = []
        for word in dict.fromkeys(words):
            if word in self._memo:
                continue
            if word not in vocab:
                self._memo[word] = [word]
            else:
                todo.append(word)
        for start in range(0, len(todo), self.block):
            chunk = todo[start:start + self.block]
            ids = np.array([vocab[w] for w in chunk])
            query = self._embeddings[ids]
            query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
            sims = query @ self._unit.T                              # (n, candidates): one matmul per block
            for row, token_id in enumerate(ids):
                col = self._column.get(int(token_id))
                if col is not None:
                    sims[row, col] = -np.inf                         # a word is not its own candidate
            top = np.argpartition(-sims, self.k, axis=1)[:, :self.k]
            for row, word in enumerate(chunk):
                best = top[row][np.argsort(-sims[row, top[row]], kind="stable")]
                found = [self.tokenizer.id_to_token[int(self._candidate_ids[c])] for c in best]
                self._memo[word] = [w.title() for w in found] if word.istitle() else found
        return {w: self._memo[w] for w in words}

    def candidates(self, sentences, positions):
        wanted = [sentences[s][j] for s in range(len(sentences)) for j in positions[s]]
        table = self.neighbours(wanted)
        return [[table[sentences[s][j]] for j in positions[s]] for s in range(len(sentences))]


class MlmCandidates(CandidateGenerator):
    """The teacher's top-K masked-language-model predictions for each single-piece word.

    Every (sentence, word) becomes one row "[CLS] sentence-with-[MASK] [SEP] sentence [SEP]"; rows are
    sorted by length and run through the model many at a time."""
    kind = "mlm"

    def __init__(self, model, tokenizer: Tokenizer, k: int = 15, max_rows: int = 128,
                 score_budget: int = 1 << 19):
        super().__init__(tokenizer, k)
        if not getattr(model.config, "mlm_head", False):
            raise AugmentError("MlmCandidates needs a teacher with a masked-language-model head "
                               "(cls.predictions.*); use EmbeddingCandidates for this checkpoint")
        if model.config.vocab_size != tokenizer.vocab_size:
            raise AugmentError(f"the model's vocabulary has {model.config.vocab_size} tokens, the tokenizer's "
                               f"{tokenizer.vocab_size}: they do not belong together")
        if self.k > model.config.vocab_size:
            raise AugmentError(f"k={self.k} exceeds the vocabulary size {model.config.vocab_size}")
        self.model = model
        self.max_len = int(model.config.max_position_embeddings)
        self.max_rows = int(max_rows)
        # rows * T * T bounds the memory the attention scores of one forward pass take
        self.score_budget = int(score_budget)
        # Predictions that can stand for a word: no "##" continuations (as the official filter) and
        # no [special] tokens.
        self._usable = np.array([not (t.startswith("##") or _SPECIAL.match(t))
                                 for t in tokenizer.id_to_token], dtype=bool)

    def _weights_digest(self) -> str:
        return _sha256_array(self.model.params.data)

    def candidates(self, sentences, positions):
        tok = self.tokenizer
        results = [[[sentences[s][j]] for j in positions[s]] for s in range(len(sentences))]
        rows = []   # (sentence, slot in positions, ids, type ids, mask index)
        for s, words in enumerate(sentences):
            if not positions[s]:
                continue
            pieces = tok.word_pieces(words)
            flat = [tok.vocab.get(p, tok.unk_id) for w in pieces for p in w]
            first_piece = np.cumsum([0] + [len(w) for w in pieces])
            for slot, j in enumerate(positions[s]):
                if len(pieces[j]) != 1:
                    continue                                          # multi-piece words keep themselves
                mask_index = 1 + int(first_piece[j])
                if mask_index >= self.max_len:
                    continue                                          # cut off by truncation
                masked = list(flat)
                masked[mask_index - 1] = tok.mask_id
                ids = [tok.cls_id] + masked + [tok.sep_id] + flat + [tok.sep_id]
                types = [0] * (len(flat) + 2) + [1] * (len(flat) + 1)
                rows.append((s, slot, ids[:self.max_len], types[:self.max_len], mask_index))
        rows.sort(key=lambda r: len(r[2]))
        start = 0
        while start < len(rows):
            count = 1
            # grow the batch while the longest row (sorted: the last) keeps it within budget
            while (start + count < len(rows) and count < self.max_rows
                   and (count + 1) * len(rows[start + count][2]) ** 2 <= self.score_budget):
                count += 1
            chunk = rows[start:start + count]
            width = len(chunk[-1][2])
            ids = np.full((len(chunk), width), tok.pad_id, dtype=np.int32)
            types = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for r, (_, _, row_ids, row_types, _) in enumerate(chunk):
                ids[r, :len(row_ids)] = row_ids
                types[r, :len(row_types)] = row_types
                mask[r, :len(row_ids)] = 1
            out = self.model.forward(ids, types, mask)
            hidden = out.hidden_states[-1][np.arange(len(chunk)), [c[4] for c in chunk]]   # (n, C)
            logits = self.model.mlm_logits(hidden)
            top = np.argpartition(-logits, self.k - 1, axis=1)[:, :self.k]
            for r, (s, slot, _, _, _) in enumerate(chunk):
                best = top[r][np.argsort(-logits[r, top[r]], kind="stable")]
                words = [tok.id_to_token[int(t)] for t in best if self._usable[t]]
                if words:
                    results[s][slot] = words
            start += count
        return results


# --- augmentation ---------------------------------------------------------------------------------

def _copies(words: list[str], positions: list[int], candidates: list[list[str]], n_aug: int, p: float,
            rng: np.random.Generator) -> list[str]:
    if not positions:
        return [" ".join(words)] * n_aug
    sizes = np.array([len(c) for c in candidates])
    choice = rng.integers(0, sizes, size=(n_aug, len(positions)))     # a candidate per word, uniformly
    replace = rng.random((n_aug, len(positions))) < p                 # ... used with probability p
    out = []
    for c in range(n_aug):
        new = list(words)
        for slot, j in enumerate(positions):
            if replace[c, slot]:
                new[j] = candidates[slot][choice[c, slot]]
        out.append(" ".join(new))
    return out


def augment_texts(texts: list[str], candidates: CandidateGenerator, n_aug: int, p: float, seed: int,
                  stream: int = 0, chunk_size: int = 256, progress_bar=None) -> list[list[str]]:
    """n_aug augmented versions of each text. Randomness is drawn per text from (seed, index, stream),
    so the result does not depend on chunk_size."""
    tok = candidates.tokenizer
    out: list[list[str]] = []
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start:start + chunk_size]
        sentences = [tok.pre_tokenize(t) for t in chunk]
        positions = [[j for j, w in enumerate(words) if is_augmentable(w)] for words in sentences]
        found = candidates.candidates(sentences, positions)
        for offset, (words, pos, cands) in enumerate(zip(sentences, positions, found)):
            if len(cands) != len(pos) or any(not c for c in cands):
                raise AugmentError(f"{type(candidates).__name__} returned no candidates for a word of text "
                                   f"{start + offset}")
            rng = np.random.default_rng([seed, start + offset, stream])
            out.append(_copies(words, pos, cands, n_aug, p, rng))
        if progress_bar is not None:
            progress_bar.update(len(chunk))
    return out


def cache_key(examples: Examples, candidates: CandidateGenerator, n_aug: int, p: float, seed: int,
              augment_pair: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "task": examples.task.name,
                         "n_aug": n_aug, "p": p, "seed": seed, "kind": candidates.kind, "k": candidates.k,
                         "candidates": candidates.fingerprint(), "augment_pair": augment_pair}).encode())
    for field in ([examples.texts] + ([examples.pairs] if augment_pair else [])):
        for text in field:
            h.update(text.encode("utf-8"))
            h.update(b"\0")    # separator: ["ab", "c"] and ["a", "bc"] differ
    return h.hexdigest()


def _read_cache(path: Path, key: str, n: int, n_aug: int, fields: list[str]) -> dict[str, list[list[str]]]:
    try:
        with open(path, encoding="utf-8") as f:
            header = json.loads(f.readline())
            if (header.get("format") != CACHE_FORMAT or header.get("key") != key or header.get("examples") != n
                    or header.get("n_aug") != n_aug or header.get("fields") != fields):
                raise AugmentError(f"augmentation cache {path} does not match its name's settings; delete it")
            result = {name: [] for name in fields}
            for line_no, line in enumerate(f, start=2):
                record = json.loads(line)
                for name in fields:
                    copies = record[name]
                    if not isinstance(copies, list) or len(copies) != n_aug:
                        raise AugmentError(f"augmentation cache {path}: line {line_no} has a bad {name!r} entry; "
                                           f"delete the file")
                    result[name].append(copies)
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise AugmentError(f"augmentation cache {path} is corrupt ({e}); delete it") from None
    if any(len(v) != n for v in result.values()):
        raise AugmentError(f"augmentation cache {path} holds {len(result[fields[0]])} examples, expected {n}; "
                           f"delete it")
    return result


def _write_cache(path: Path, key: str, n: int, n_aug: int, generated: dict[str, list[list[str]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(generated)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "examples": n,
                                "n_aug": n_aug, "fields": fields}) + "\n")
            for i in range(n):
                f.write(json.dumps({name: generated[name][i] for name in fields}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)    # atomic: an interrupted run never leaves a half-written cache
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:   # an optional dependency: without tqdm, no bar
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="ex")


def augment_examples(examples: Examples, candidates: CandidateGenerator, n_aug: int = 20, p: float = 0.4,
                     seed: int = 0, cache_dir: str | Path | None = None, progress: bool = True,
                     augment_pair: bool = False, dedupe: bool = False, chunk_size: int = 256) -> Examples:
    """The original examples followed by n_aug augmented copies of each (labels copied).

    Copies of example i come in one block, in order. `augment_pair` also makes n_aug copies with
    the second text augmented (first text unchanged). `dedupe` drops copies identical to the
    original or to an earlier copy, as the official script does (then there are at most n_aug).
    With `cache_dir` the generated texts are stored as JSONL under a key of everything that
    determines them; a later call with the same key reads the file and never runs the model."""
    if n_aug < 0:
        raise AugmentError(f"n_aug must be >= 0, got {n_aug}")
    if not 0.0 <= p <= 1.0:
        raise AugmentError(f"p must lie in [0, 1], got {p}")
    if augment_pair and examples.pairs is None:
        raise AugmentError(f"augment_pair=True but task {examples.task.name} has no second text")
    fields = ["text"] + (["pair"] if augment_pair else [])
    n = len(examples)

    generated = None
    path = None
    if cache_dir is not None:
        key = cache_key(examples, candidates, n_aug, p, seed, augment_pair)
        path = Path(cache_dir) / f"augment-{re.sub(r'[^A-Za-z0-9_.-]', '_', examples.task.name)}-{key[:24]}.jsonl"
        if path.exists():
            generated = _read_cache(path, key, n, n_aug, fields)
    if generated is None:
        bar = _progress(n * len(fields), f"augment {examples.task.name}", progress)
        try:
            generated = {"text": augment_texts(examples.texts, candidates, n_aug, p, seed, stream=0,
                                               chunk_size=chunk_size, progress_bar=bar)}
            if augment_pair:
                generated["pair"] = augment_texts(examples.pairs, candidates, n_aug, p, seed, stream=1,
                                                  chunk_size=chunk_size, progress_bar=bar)
        finally:
            if bar is not None:
                bar.close()
        if path is not None:
            _write_cache(path, key, n, n_aug, generated)

    texts = list(examples.texts)
    pairs = None if examples.pairs is None else list(examples.pairs)
    source = []
    for i in range(n):
        for name in fields:
            original = examples.texts[i] if name == "text" else examples.pairs[i]
            seen = {original}
            for copy in generated[name][i]:
                if dedupe and copy in seen:
                    continue
                seen.add(copy)
                source.append(i)
                if name == "text":
                    texts.append(copy)
                    if pairs is not None:
                        pairs.append(examples.pairs[i])
                else:
                    texts.append(examples.texts[i])
                    pairs.append(copy)
    labels = np.concatenate([examples.labels, examples.labels[np.array(source, dtype=np.int64)]])
    return Examples(texts, pairs, labels.astype(examples.labels.dtype, copy=False), examples.task,
                    source=f"{examples.source} + {n_aug} augmented copies ({candidates.kind})")
