"""How good are augmentation candidates? Measured with a teacher fine-tuned on the task.

    python -m tools.experiments.augment_quality --judge runs/sst2/teacher/best [--task sst2] [--texts 300]
        [--sources embedding-single,embedding,words,context] [--n-aug 4] [--p 0.4] [--seed 0]

Candidates come from the pre-trained teacher (--teacher, as the pipeline does); the judge is a
teacher fine-tuned on the task (a classification task). For each candidate source, on --texts
training texts drawn at random (seeded):
  kept      share of augmented copies (p, n_aug as the pipeline; duplicates dropped) on which the
            judge predicts what it predicts on the original;
  gold      share of copies on which the judge predicts the original's gold label;
  shift     mean total-variation distance between the judge's class probabilities on a copy and on
            its original (0: the same belief; a finer measure than a flipped label);
  changed   share of replaceable words a copy changes; copies: copies kept per text;
  one-word  copies with exactly one word replaced (each replaceable word once, by a seeded draw
            from its K candidates): share that keep the judge's prediction, and mean shift, over
            single-piece words and over multi-piece words apart;
  seconds   candidate generation for the --texts texts.
A source that replaced nothing would keep every label: read `kept` next to `changed`.

Sources: embedding-single (input-embedding neighbours, multi-piece words kept as they are: the
pipeline before this tool), embedding (the same, multi-piece words as the mean of their pieces),
words (the teacher's vector of each word encoded alone, `WordVectors`: context-blind), context
(`ContextCandidates`: the word's in-context vector against those), context+words (context for
single-piece words, words for multi-piece words), mask (the teacher's last-layer
state at a [MASK] in place of the word, against its input word embeddings, one forward per word).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from minitinybert.data.augment import (CandidateGenerator, ContextCandidates, EmbeddingCandidates, WordPool,
                                       WordVectors, augment_texts, forward_in_batches, is_augmentable,
                                       replacement_words)
from minitinybert.data.batches import predict_logits
from minitinybert.data.task_files import load_split
from minitinybert.data.tasks import Examples, get_task
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.engine.weights import load_model


def pieces_and_spans(tokenizer: Tokenizer, words: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """A sentence's piece ids and each word's [start, end) among them (as augment.py splits them)."""
    pieces = tokenizer.word_pieces(words)
    flat = [tokenizer.vocab.get(p, tokenizer.unk_id) for w in pieces for p in w]
    ends = np.cumsum([len(w) for w in pieces]).tolist()
    return flat, list(zip([0] + ends[:-1], ends))


class SinglePieceOnly(CandidateGenerator):
    """Another source's candidates for single-piece words; multi-piece words keep themselves."""

    def __init__(self, inner: CandidateGenerator):
        super().__init__(inner.tokenizer, inner.k)
        self.inner, self.kind = inner, inner.kind + "-single"

    def _weights_digest(self):
        return self.inner.fingerprint()

    def candidates(self, sentences, positions):
        found = self.inner.candidates(sentences, positions)
        for s, words in enumerate(sentences):
            pieces = self.tokenizer.word_pieces(words)
            for slot, j in enumerate(positions[s]):
                if len(pieces[j]) > 1:
                    found[s][slot] = [words[j]]
        return found


class IsolatedWordCandidates(CandidateGenerator):
    """Nearest replacement words to the word encoded alone (`WordVectors`): blind to the sentence."""
    kind = "words"

    def __init__(self, vectors: WordVectors, k: int = 15):
        super().__init__(vectors.tokenizer, k)
        self.vectors = vectors

    def _weights_digest(self):
        return "words"

    def candidates(self, sentences, positions):
        originals = [sentences[s][j] for s in range(len(sentences)) for j in positions[s]]
        distinct = list(dict.fromkeys(originals))
        table = dict(zip(distinct, self.vectors.pool.nearest(self.vectors.encode(distinct), self.k, distinct)))
        return [[table[sentences[s][j]] for j in positions[s]] for s in range(len(sentences))]


class MaskStateCandidates(CandidateGenerator):
    """The teacher's last-layer state at a [MASK] put in place of the word (all its pieces), against
    its input word embeddings: an MLM head's job done without one."""
    kind = "mask"

    def __init__(self, model, tokenizer, k: int = 15):
        super().__init__(tokenizer, k)
        self.model = model
        words = replacement_words(tokenizer)
        embeddings = np.asarray(model.params["embeddings.word_embeddings.weight"])
        self.pool = WordPool(words, embeddings[[tokenizer.vocab[w] for w in words]], tokenizer.lowercase)

    def _weights_digest(self):
        return "mask"

    def candidates(self, sentences, positions):
        tok = self.tokenizer
        rows, where = [], []
        for s, words in enumerate(sentences):
            flat, spans = pieces_and_spans(tok, words)
            for slot, j in enumerate(positions[s]):
                start, end = spans[j]
                ids = [tok.cls_id] + flat[:start] + [tok.mask_id] + flat[end:] + [tok.sep_id]
                rows.append((ids[:512], [0] * min(len(ids), 512)))
                where.append((s, slot, 1 + start))
        results = [[None] * len(p) for p in positions]
        states = np.zeros((len(rows), self.model.config.hidden_size), np.float32)
        for chunk, out in forward_in_batches(self.model, rows, tok.pad_id):
            states[chunk] = out.hidden_states[-1][np.arange(len(chunk)), [where[i][2] for i in chunk]]
        originals = [sentences[s][positions[s][slot]] for s, slot, _ in where]
        for (s, slot, _), found in zip(where, self.pool.nearest(states, self.k, originals)):
            results[s][slot] = found
        return results


class ByPieces(CandidateGenerator):
    """One source's candidates for single-piece words, another's for multi-piece words."""

    def __init__(self, single: CandidateGenerator, multi: CandidateGenerator):
        super().__init__(single.tokenizer, single.k)
        self.single, self.multi, self.kind = single, multi, f"{single.kind}+{multi.kind}"

    def _weights_digest(self):
        return self.single.fingerprint() + self.multi.fingerprint()

    def candidates(self, sentences, positions):
        found = self.single.candidates(sentences, positions)
        pieces = [self.tokenizer.word_pieces(words) for words in sentences]
        multi_positions = [[j for j in p if len(pieces[s][j]) > 1] for s, p in enumerate(positions)]
        from_multi = self.multi.candidates(sentences, multi_positions)
        for s, p in enumerate(positions):
            replacement = dict(zip(multi_positions[s], from_multi[s]))
            found[s] = [replacement.get(j, c) for j, c in zip(p, found[s])]
        return found


def make_source(name: str, model, tok, vectors: WordVectors, k: int) -> CandidateGenerator:
    if name == "embedding-single":
        return SinglePieceOnly(EmbeddingCandidates(model, tok, k))
    if name == "embedding":
        return EmbeddingCandidates(model, tok, k)
    if name == "words":
        return IsolatedWordCandidates(vectors, k)
    if name == "context":
        source = ContextCandidates(model, tok, k)
        source.vectors = vectors                      # one pool for every source that needs it
        return source
    if name == "context+words":
        return ByPieces(make_source("context", model, tok, vectors, k), IsolatedWordCandidates(vectors, k))
    if name == "mask":
        return MaskStateCandidates(model, tok, k)
    raise SystemExit(f"unknown source {name!r}")


class FixedCandidates(CandidateGenerator):
    """Candidates found beforehand for exactly the sentences that will ask for them."""
    kind = "fixed"

    def __init__(self, tokenizer, found):
        super().__init__(tokenizer, 1)
        self.found = found

    def _weights_digest(self):
        return ""

    def candidates(self, sentences, positions):
        assert len(sentences) == len(self.found)
        return self.found


def one_word_copies(sample: Examples, found, tok, rng):
    """Each replaceable word replaced alone by a random candidate: (texts, original index, multi-piece?)."""
    texts, origin, multi = [], [], []
    for i, text in enumerate(sample.texts):
        words = tok.pre_tokenize(text)
        positions = [j for j, w in enumerate(words) if is_augmentable(w)]
        pieces = tok.word_pieces(words)
        for slot, j in enumerate(positions):
            candidates = [c for c in found[i][slot] if c != words[j]]
            if not candidates:
                continue
            new = list(words)
            new[j] = candidates[int(rng.integers(len(candidates)))]
            texts.append(" ".join(new))
            origin.append(i)
            multi.append(len(pieces[j]) > 1)
    return texts, np.array(origin), np.array(multi, dtype=bool)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judge", required=True, help="a teacher fine-tuned on --task (a checkpoint directory)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data", default=None)
    parser.add_argument("--teacher", default=None, help="the pre-trained teacher that proposes candidates")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--sources", default="embedding-single,embedding,words,context")
    parser.add_argument("--n-aug", type=int, default=4)
    parser.add_argument("--p", type=float, default=0.4)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--show", type=int, default=0, help="print this many examples of copies per source")
    args = parser.parse_args(argv)

    task = get_task(args.task)
    if task.is_regression:
        raise SystemExit("the judge's label is a class: use a classification task")
    train = load_split(task, "train", args.data)
    rng = np.random.default_rng(args.seed)
    sample = train.subset(np.sort(rng.choice(len(train), size=min(args.texts, len(train)), replace=False)))
    teacher_dir = resolve_teacher(args.teacher, log=lambda *a: None)
    model, tok = load_model(teacher_dir), Tokenizer.from_dir(teacher_dir)
    judge = load_model(args.judge)
    probabilities = lambda ex: _softmax(predict_logits(judge, ex, tok, args.max_length))   # noqa: E731
    original_p = probabilities(sample)
    original = original_p.argmax(1)
    print(f"{task.name}: {len(sample)} training texts (seed {args.seed}); judge {args.judge} agrees with gold on "
          f"{np.mean(original == sample.labels):.1%} of them; n_aug {args.n_aug}, p {args.p}, K {args.k}")

    vectors = WordVectors(model, tok)
    if any(s in ("words", "context", "context+words") for s in args.sources.split(",")):
        t0 = time.perf_counter()
        pool = vectors.pool
        print(f"WordVectors pool: {len(pool.words)} words encoded in {time.perf_counter() - t0:.0f} s")
    print("| source | kept | gold | shift | changed | copies/text | one-word kept (single / multi-piece) | "
          "one-word shift (single / multi-piece) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.sources.split(","):
        source = make_source(name, model, tok, vectors, args.k)
        sentences = [tok.pre_tokenize(t) for t in sample.texts]
        positions = [[j for j, w in enumerate(ws) if is_augmentable(w)] for ws in sentences]
        t0 = time.perf_counter()
        found = source.candidates(sentences, positions)
        seconds = time.perf_counter() - t0

        generated = augment_texts(sample.texts, FixedCandidates(tok, found), args.n_aug, args.p, args.seed,
                                  chunk_size=len(sample))
        kept_copies, origin = [], []
        for i, copies_of_text in enumerate(generated):     # duplicates dropped, as augment_examples does
            seen = {" ".join(tok.pre_tokenize(sample.texts[i]))}
            for copy in copies_of_text:
                if copy not in seen:
                    seen.add(copy)
                    kept_copies.append(copy)
                    origin.append(i)
        origin = np.array(origin, dtype=np.int64)
        copies = Examples(kept_copies, None, sample.labels[origin], task)
        copies_p = probabilities(copies)
        verdict = copies_p.argmax(1)
        changed = np.mean([_changed(sample.texts[i], c, tok) for i, c in zip(origin, copies.texts)])
        single_texts, single_origin, multi = one_word_copies(sample, found, tok, np.random.default_rng(args.seed))
        single_p = probabilities(Examples(single_texts, None, sample.labels[single_origin], task))
        single_kept = single_p.argmax(1) == original[single_origin]
        single_shift = _shift(single_p, original_p[single_origin])
        print(f"| {name} | {np.mean(verdict == original[origin]):.1%} | {np.mean(verdict == copies.labels):.1%} | "
              f"{_shift(copies_p, original_p[origin]).mean():.3f} | {changed:.1%} | {len(copies) / len(sample):.2f} | "
              f"{np.mean(single_kept[~multi]):.1%} / {_mean_or_nan(single_kept[multi]):.1%} "
              f"({(~multi).sum()} / {multi.sum()}) | {single_shift[~multi].mean():.3f} / "
              f"{_mean_or_nan(single_shift[multi]):.3f} | {seconds:.0f} |", flush=True)
        for i in range(min(args.show, len(copies))):
            print(f"    {sample.texts[origin[i]]!r} -> {copies.texts[i]!r}")
    return 0


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _shift(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance between the judge's class probabilities on a copy and on its original."""
    return 0.5 * np.abs(p - q).sum(axis=1)


def _mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _changed(original: str, copy: str, tok) -> float:
    a, b = tok.pre_tokenize(original), copy.split(" ")
    eligible = [j for j, w in enumerate(a) if is_augmentable(w)]
    if not eligible or len(a) != len(b):
        return 0.0
    return sum(a[j] != b[j] for j in eligible) / len(eligible)


if __name__ == "__main__":
    sys.exit(main())
