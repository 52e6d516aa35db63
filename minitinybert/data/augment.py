"""TinyBERT's data augmentation for task-specific distillation.

The procedure of the official TinyBERT/data_augmentation.py: each text is split into words by BERT's
basic tokenizer; every word that is purely alphabetic and not a stop word gets K=15 candidates;
each of N_a augmented copies replaces each such word, with probability p_t=0.4, by one of its
candidates drawn uniformly; copies identical to the original or to an earlier copy are dropped.
Pair tasks augment both texts, each in its own copies (the other text as it was).

Candidates, for single- and multi-piece words alike, come from one of

- `MlmCandidates`: the teacher's masked-language-model predictions for single-piece words (the
  word masked in a copy of the sentence, fed together with the unmasked sentence as segment B, as
  the official code does), many masked copies per forward pass; multi-piece words get their
  nearest whole words (`WordVectors`), where the official code takes GloVe neighbours;
- `ContextCandidates`, for a teacher without an MLM head (the default all-MiniLM-L6-v2 has none,
  and its hidden state at a [MASK] predicts nothing: the nearest words to it are "bert", "sphinx",
  ... whatever the context): the word's meaning in its sentence, the mean of the teacher's
  last-layer states over its pieces, against every vocabulary word encoded alone the same way
  (`WordVectors`); one forward pass per text, not one per word;
- `EmbeddingCandidates`: nearest neighbours in the teacher's input word embeddings (a multi-piece
  word: the mean of its pieces' embeddings), blind to the sentence. Kept as the baseline that
  tools/augment_quality.py measures the others against.

Replacements are whole vocabulary words of two letters or more, not stop words (GloVe's role in the
official code: the words a replacement may be).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..engine.files import atomic_path
from ..engine.progress import progress_bar
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
CACHE_VERSION = 2


class AugmentError(ValueError):
    """Augmentation settings or a cache file that cannot be used."""


def is_augmentable(word: str) -> bool:
    """Alphabetic and not a stop word (the official `_is_valid` and stop-word test)."""
    return _ALPHA.fullmatch(word) is not None and word.lower() not in STOP_WORDS


def _sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1)).hexdigest()


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_vocab(model, tokenizer: Tokenizer) -> None:
    if model.config.vocab_size != tokenizer.vocab_size:
        raise AugmentError(f"the model's vocabulary has {model.config.vocab_size} tokens, the tokenizer's "
                           f"{tokenizer.vocab_size}: they do not belong together")


def replacement_words(tokenizer: Tokenizer) -> list[str]:
    """What a word may be replaced by: the alphabetic vocabulary entries of two letters or more that
    are not stop words (only content words are replaced, and by content words): no "##"
    continuations, [special] tokens, digits, punctuation or lone letters."""
    return [t for t in tokenizer.id_to_token if len(t) > 1 and is_augmentable(t)]


class WordPool:
    """Words with a unit vector each; the K nearest to any query vector by cosine similarity."""

    def __init__(self, words: list[str], vectors: np.ndarray, lowercase: bool, block: int = 256):
        if len(words) != len(vectors):
            raise AugmentError(f"{len(words)} words but {len(vectors)} vectors")
        self.words = list(words)
        self.unit = _unit_rows(np.asarray(vectors, dtype=np.float32))
        self.lowercase = lowercase
        self.block = int(block)
        self._column = {w: c for c, w in enumerate(self.words)}

    def nearest(self, queries: np.ndarray, k: int, originals: list[str]) -> list[list[str]]:
        """For each query vector (n, C) its K nearest pool words, best first, never the query's own
        word (`originals`); title case kept, as the official code does for GloVe neighbours. A pool
        of K words or fewer (a toy vocabulary) gives all but the word itself."""
        if len(self.words) < 2:
            raise AugmentError(f"the vocabulary has {len(self.words)} replacement words: nothing to replace with")
        k = min(k, len(self.words) - 1)
        out = []
        for start in range(0, len(queries), self.block):
            chunk = originals[start:start + self.block]
            sims = _unit_rows(np.asarray(queries[start:start + self.block], dtype=np.float32)) @ self.unit.T
            for row, word in enumerate(chunk):       # a word is not its own candidate
                col = self._column.get(word.lower() if self.lowercase else word)
                if col is not None:
                    sims[row, col] = -np.inf
            top = np.argpartition(-sims, k, axis=1)[:, :k]
            for row, word in enumerate(chunk):
                best = top[row][np.argsort(-sims[row, top[row]], kind="stable")]
                found = [self.words[c] for c in best]
                out.append([w.title() for w in found] if word.istitle() else found)
        return out


def forward_in_batches(model, rows: list[tuple[list[int], list[int]]], pad_id: int, max_rows: int = 256,
                       score_budget: int = 1 << 19):
    """Yields (row indices, BertOutput) for (ids, type ids) rows, run in batches of similar length.
    Sorted by length, so padding is short; rows * T * T bounds the attention scores' memory."""
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]))
    start = 0
    while start < len(order):
        count = 1
        # grow the batch while its longest row (sorted: the last) keeps it within budget
        while (start + count < len(order) and count < max_rows
               and (count + 1) * len(rows[order[start + count]][0]) ** 2 <= score_budget):
            count += 1
        chunk = order[start:start + count]
        width = len(rows[chunk[-1]][0])
        ids = np.full((len(chunk), width), pad_id, dtype=np.int32)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for r, index in enumerate(chunk):
            row_ids, row_types = rows[index]
            ids[r, :len(row_ids)] = row_ids
            types[r, :len(row_types)] = row_types
            mask[r, :len(row_ids)] = 1
        yield chunk, model.forward(ids, types, mask)
        start += count


class WordVectors:
    """A whole-word embedding from the teacher, for words of any number of pieces: the word alone,
    "[CLS] pieces [SEP]", through the teacher, its pieces' last-layer states averaged.

    GloVe's stand-in: no file to fetch, and it lives in the same space as `ContextCandidates`'
    in-context vectors. For all-MiniLM-L6-v2, a sentence-embedding model, it is close to the
    model's own embedding of the one-word sentence. The mean of a word's input piece embeddings is
    the cheaper alternative; it lands multi-piece words next to their pieces ("unwatchable" by
    "watch"), and tools/augment_quality.py measures the two."""

    def __init__(self, model, tokenizer: Tokenizer):
        _check_vocab(model, tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.max_len = int(model.config.max_position_embeddings)
        self._pool: WordPool | None = None

    def encode(self, words: list[str]) -> np.ndarray:
        """(n, C) vectors of the words, each encoded alone."""
        tok = self.tokenizer
        pieces = [tok.token_ids(w)[:self.max_len - 2] or [tok.unk_id] for w in words]
        rows = [([tok.cls_id] + p + [tok.sep_id], [0] * (len(p) + 2)) for p in pieces]
        out = np.zeros((len(words), self.model.config.hidden_size), dtype=np.float32)
        for chunk, result in forward_in_batches(self.model, rows, tok.pad_id):
            last = result.hidden_states[-1]
            for r, index in enumerate(chunk):
                out[index] = last[r, 1:1 + len(pieces[index])].mean(axis=0)
        return out

    @property
    def pool(self) -> WordPool:
        """Every replacement word with its vector (computed once: the vocabulary's ~22k whole words)."""
        if self._pool is None:
            words = replacement_words(self.tokenizer)
            self._pool = WordPool(words, self.encode(words), self.tokenizer.lowercase)
        return self._pool


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
    """Nearest replacement words in the teacher's input word-embedding matrix (cosine similarity); a
    word of several pieces is the mean of its pieces' embeddings. Blind to the sentence."""
    kind = "embedding"

    def __init__(self, model, tokenizer: Tokenizer, k: int = 15):
        super().__init__(tokenizer, k)
        _check_vocab(model, tokenizer)
        self._embeddings = np.asarray(model.params["embeddings.word_embeddings.weight"], dtype=np.float32)
        words = replacement_words(tokenizer)
        self._pool = WordPool(words, self._embeddings[[tokenizer.vocab[w] for w in words]], tokenizer.lowercase)
        self._memo: dict[str, list[str]] = {}

    def _weights_digest(self) -> str:
        return _sha256_array(self._embeddings)

    def neighbours(self, words: list[str]) -> dict[str, list[str]]:
        """The K nearest replacement words of each word (memoised); [word] for a word with an unknown piece."""
        todo, queries = [], []
        for word in dict.fromkeys(words):
            if word in self._memo:
                continue
            ids = self.tokenizer.token_ids(word)
            if not ids or self.tokenizer.unk_id in ids:
                self._memo[word] = [word]
                continue
            todo.append(word)
            queries.append(self._embeddings[ids].mean(axis=0))
        if todo:
            for word, found in zip(todo, self._pool.nearest(np.stack(queries), self.k, todo)):
                self._memo[word] = found
        return {w: self._memo[w] for w in words}

    def candidates(self, sentences, positions):
        wanted = [sentences[s][j] for s in range(len(sentences)) for j in positions[s]]
        table = self.neighbours(wanted)
        return [[table[sentences[s][j]] for j in positions[s]] for s in range(len(sentences))]


def _pieces_and_spans(tokenizer: Tokenizer, words: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """A sentence's piece ids and each word's [start, end) among them."""
    pieces = tokenizer.word_pieces(words)
    flat = [tokenizer.vocab.get(p, tokenizer.unk_id) for w in pieces for p in w]
    ends = np.cumsum([len(w) for w in pieces]).tolist()
    return flat, list(zip([0] + ends[:-1], ends))


class ContextCandidates(CandidateGenerator):
    """The nearest replacement words to a word's meaning in its sentence: the mean of the teacher's
    last-layer states over the word's pieces in "[CLS] sentence [SEP]", against every replacement
    word's `WordVectors` vector. One forward pass per sentence serves all its words."""
    kind = "context"

    def __init__(self, model, tokenizer: Tokenizer, k: int = 15):
        super().__init__(tokenizer, k)
        _check_vocab(model, tokenizer)
        self.model = model
        self.vectors = WordVectors(model, tokenizer)
        self.max_len = int(model.config.max_position_embeddings)

    def _weights_digest(self) -> str:
        return _sha256_array(self.model.params.data)

    def in_context(self, sentences, positions) -> tuple[list[tuple[int, int]], np.ndarray]:
        """((sentence, slot) of each word that fits the model's length, (n, C) its in-context vector)."""
        tok = self.tokenizer
        rows, spans = [], []
        for s, words in enumerate(sentences):
            flat, word_spans = _pieces_and_spans(tok, words)
            flat = flat[:self.max_len - 2]
            rows.append(([tok.cls_id] + flat + [tok.sep_id], [0] * (len(flat) + 2)))
            spans.append(word_spans)
        where, vectors = [], []
        todo = [s for s in range(len(sentences)) if positions[s]]
        for chunk, out in forward_in_batches(self.model, [rows[s] for s in todo], tok.pad_id):
            last = out.hidden_states[-1]
            for r, index in enumerate(chunk):
                s = todo[index]
                kept = len(rows[s][0]) - 2
                for slot, j in enumerate(positions[s]):
                    start, end = spans[s][j]
                    if end <= kept:                                   # cut off by truncation: keeps itself
                        where.append((s, slot))
                        vectors.append(last[r, 1 + start:1 + end].mean(axis=0))
        width = self.model.config.hidden_size
        return where, (np.stack(vectors) if vectors else np.zeros((0, width), np.float32))

    def candidates(self, sentences, positions):
        results = [[[sentences[s][j]] for j in positions[s]] for s in range(len(sentences))]
        where, vectors = self.in_context(sentences, positions)
        originals = [sentences[s][positions[s][slot]] for s, slot in where]
        for (s, slot), found in zip(where, self.vectors.pool.nearest(vectors, self.k, originals)):
            results[s][slot] = found
        return results


class MlmCandidates(CandidateGenerator):
    """The teacher's top-K masked-language-model predictions for each single-piece word; a
    multi-piece word's K nearest whole words by `WordVectors` (the official code: GloVe).

    Every (sentence, word) becomes one row "[CLS] sentence-with-[MASK] [SEP] sentence [SEP]"; rows are
    sorted by length and run through the model many at a time."""
    kind = "mlm"

    def __init__(self, model, tokenizer: Tokenizer, k: int = 15, max_rows: int = 128,
                 score_budget: int = 1 << 19):
        super().__init__(tokenizer, k)
        if not getattr(model.config, "mlm_head", False):
            raise AugmentError("MlmCandidates needs a teacher with a masked-language-model head "
                               "(cls.predictions.*); use ContextCandidates for this checkpoint")
        _check_vocab(model, tokenizer)
        if self.k > model.config.vocab_size:
            raise AugmentError(f"k={self.k} exceeds the vocabulary size {model.config.vocab_size}")
        self.model = model
        self.vectors = WordVectors(model, tokenizer)
        self.max_len = int(model.config.max_position_embeddings)
        self.max_rows = int(max_rows)
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
        rows, where, multi = [], [], []   # MLM rows and their (sentence, slot); multi-piece (sentence, slot)
        for s, words in enumerate(sentences):
            if not positions[s]:
                continue
            flat, spans = _pieces_and_spans(tok, words)
            for slot, j in enumerate(positions[s]):
                start, end = spans[j]
                if end - start != 1:
                    multi.append((s, slot))
                    continue
                mask_index = 1 + start
                if mask_index >= self.max_len:
                    continue                                          # cut off by truncation
                masked = list(flat)
                masked[start] = tok.mask_id
                ids = [tok.cls_id] + masked + [tok.sep_id] + flat + [tok.sep_id]
                types = [0] * (len(flat) + 2) + [1] * (len(flat) + 1)
                rows.append((ids[:self.max_len], types[:self.max_len]))
                where.append((s, slot, mask_index))
        for chunk, out in forward_in_batches(self.model, rows, tok.pad_id, self.max_rows, self.score_budget):
            hidden = out.hidden_states[-1][np.arange(len(chunk)), [where[i][2] for i in chunk]]   # (n, C)
            logits = self.model.mlm_logits(hidden)
            top = np.argpartition(-logits, self.k - 1, axis=1)[:, :self.k]
            for r, index in enumerate(chunk):
                s, slot, _ = where[index]
                best = top[r][np.argsort(-logits[r, top[r]], kind="stable")]
                words = [tok.id_to_token[int(t)] for t in best if self._usable[t]]
                if words:
                    results[s][slot] = words
        if multi:
            originals = [sentences[s][positions[s][slot]] for s, slot in multi]
            found = self.vectors.pool.nearest(self.vectors.encode(originals), self.k, originals)
            for (s, slot), words in zip(multi, found):
                results[s][slot] = words
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
                  stream: int = 0, chunk_size: int = 1024, bar=None) -> list[list[str]]:
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
        if bar is not None:
            bar.update(len(chunk))
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
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:   # never a half-written cache
        f.write(json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "examples": n,
                            "n_aug": n_aug, "fields": fields}) + "\n")
        for i in range(n):
            f.write(json.dumps({name: generated[name][i] for name in fields}, ensure_ascii=False) + "\n")


def augment_examples(examples: Examples, candidates: CandidateGenerator, n_aug: int = 20, p: float = 0.4,
                     seed: int = 0, cache_dir: str | Path | None = None, progress: bool = True,
                     augment_pair: bool | None = None, dedupe: bool = True, chunk_size: int = 1024) -> Examples:
    """The original examples followed by the augmented copies of each (labels copied).

    Copies of example i come in one block, in order: those of its first text, then (pair tasks)
    those of its second text, the other text as it was. `augment_pair` (default: whenever the task
    has second texts) augments the second texts too, as the official script does; False augments
    the first only. `dedupe` drops copies identical to the original or to an earlier copy, as the
    official script does, so a text without a replaceable word adds nothing; there are then at most
    n_aug copies per text. With `cache_dir` the generated texts are stored as JSONL under a key of
    everything that determines them; a later call with the same key reads the file and never runs
    the model."""
    if n_aug < 0:
        raise AugmentError(f"n_aug must be >= 0, got {n_aug}")
    if not 0.0 <= p <= 1.0:
        raise AugmentError(f"p must lie in [0, 1], got {p}")
    if augment_pair is None:
        augment_pair = examples.pairs is not None
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
        bar = progress_bar(n * len(fields), f"augment {examples.task.name}", progress)
        try:
            generated = {"text": augment_texts(examples.texts, candidates, n_aug, p, seed, stream=0,
                                               chunk_size=chunk_size, bar=bar)}
            if augment_pair:
                generated["pair"] = augment_texts(examples.pairs, candidates, n_aug, p, seed, stream=1,
                                                  chunk_size=chunk_size, bar=bar)
        finally:
            if bar is not None:
                bar.close()
        if path is not None:
            _write_cache(path, key, n, n_aug, generated)

    texts = list(examples.texts)
    pairs = None if examples.pairs is None else list(examples.pairs)
    source = []
    words_of = candidates.tokenizer.pre_tokenize
    for i in range(n):
        for name in fields:
            original = examples.texts[i] if name == "text" else examples.pairs[i]
            # copies are words joined by spaces: an unchanged copy is the original in that form
            seen = {original, " ".join(words_of(original))}
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
                    source=f"{examples.source} + {len(source)} augmented copies ({candidates.kind}, up to {n_aug} "
                           f"per text)")


# --- command line: augment a task's training set ahead of distillation -----------------------------

def main(argv=None) -> int:
    """python -m minitinybert.data.augment --task sst2 [--n-aug 4] ...: fills the cache that `distill task`
    reads (same --out, --n-aug, --augment-p, --seed, --candidates), and says what it cost."""
    import argparse
    import sys
    import time

    from ..engine.teacher import TeacherError, resolve_teacher
    from ..engine.weights import WeightsError, load_model
    from .task_files import load_split
    from .tasks import get_task

    parser = argparse.ArgumentParser(prog="python -m minitinybert.data.augment", description=main.__doc__)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data", default=None, help="data directory (default: $MINITINYBERT_DATA)")
    parser.add_argument("--teacher", default=None, help="the pre-trained teacher (default all-MiniLM-L6-v2)")
    parser.add_argument("--out", default=None, help="run directory whose augment-cache/ to fill (default runs/<task>)")
    parser.add_argument("--augment-cache", default=None, help="the cache directory itself (default <out>/augment-cache)")
    parser.add_argument("--n-aug", type=int, default=4)
    parser.add_argument("--augment-p", type=float, default=0.4)
    parser.add_argument("--augment-limit", type=int, default=None, help="the first N training examples (default all)")
    parser.add_argument("--candidates", choices=("auto", "mlm", "context", "embedding"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        task = get_task(args.task)
        teacher_dir = resolve_teacher(args.teacher)
        model, tokenizer = load_model(teacher_dir), Tokenizer.from_dir(teacher_dir)
        train = load_split(task, "train", args.data, limit=args.augment_limit)
        source = args.candidates if args.candidates != "auto" else ("mlm" if model.config.mlm_head else "context")
        kind = {"mlm": MlmCandidates, "context": ContextCandidates, "embedding": EmbeddingCandidates}[source]
        cache = Path(args.augment_cache or Path(args.out or Path("runs") / task.name) / "augment-cache")
        before = set(cache.glob("*.jsonl"))
        t0 = time.perf_counter()
        out = augment_examples(train, kind(model, tokenizer), n_aug=args.n_aug, p=args.augment_p, seed=args.seed,
                               cache_dir=cache)
        seconds = time.perf_counter() - t0
    except (AugmentError, TeacherError, WeightsError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = set(cache.glob("*.jsonl")) - before
    how = f"in {seconds / 60:.1f} min" if written else "read from the cache"
    where = "; ".join(f"cache {f} ({f.stat().st_size / 1e6:.1f} MB)" for f in written)
    print(f"{task.name}: {len(train)} examples -> {len(out)} with {len(out) - len(train)} augmented copies "
          f"({source} candidates, n_aug {args.n_aug}, duplicates dropped) {how}" + (f"; {where}" if where else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
