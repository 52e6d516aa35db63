"""TinyBERT data augmentation: candidates (embedding, in-context, batched MLM; multi-piece words too),
replacement rate, duplicates dropped, both texts of a pair, copies, cache."""
import json

import numpy as np
import pytest

from minitinybert.data.augment import (AugmentError, CandidateGenerator, ContextCandidates, EmbeddingCandidates,
                                  MlmCandidates, WordVectors, augment_examples, is_augmentable, replacement_words)
from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.data.tasks import Examples, get_task
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.engine.weights import load_model

LONG_TEXT = ("the young director delivers a bold film with brilliant acting , beautiful music and clever "
             "writing ; yet the plot feels slow , the dialogue sounds forced and the ending seems rushed . "
             "still , fans of quiet drama will enjoy this honest story about family , memory and loss .")


@pytest.fixture(scope="module")
def teacher():
    directory = resolve_teacher(None, log=lambda *a: None)
    return load_model(directory), Tokenizer.from_dir(directory)


@pytest.fixture(scope="module")
def embedding(teacher):
    model, tok = teacher
    return EmbeddingCandidates(model, tok)


class CountingCandidates(CandidateGenerator):
    """A model-free generator that counts its calls: candidates are the word with a suffix."""
    kind = "counting"

    def __init__(self, tokenizer, k=3):
        super().__init__(tokenizer, k)
        self.calls = 0

    def _weights_digest(self):
        return "none"

    def candidates(self, sentences, positions):
        self.calls += 1
        return [[[sentences[s][j] + suffix for suffix in ("x", "y", "z")[:self.k]] for j in positions[s]]
                for s in range(len(sentences))]


def _examples(texts, pairs=None, task="sst2"):
    return Examples(list(texts), None if pairs is None else list(pairs), np.arange(len(texts)) % 2,
                    get_task(task))


# --- candidates ----------------------------------------------------------------------------------

def test_embedding_candidates_are_real_words(teacher, embedding):
    model, tok = teacher
    good = embedding.neighbours(["good"])["good"]
    assert len(good) == 15 and "good" not in good and len(set(good)) == 15
    for word in good:
        assert word in tok.vocab and word.isalpha() and word.isascii()
    assert {"great", "excellent", "bad", "better", "nice"} & set(good)
    again = EmbeddingCandidates(model, tok).neighbours(["good", "tokenization", "Sunshine"])
    assert again["good"] == good                                   # deterministic
    assert len(tok.word_pieces(["tokenization"])[0]) > 1           # several pieces: still replaced
    assert len(again["tokenization"]) == 15 and "tokenization" not in again["tokenization"]
    assert all(w in tok.vocab and is_augmentable(w) for w in again["tokenization"])
    assert all(w.istitle() for w in again["Sunshine"])             # title case kept, as the official code
    assert embedding.fingerprint() == EmbeddingCandidates(model, tok).fingerprint()
    assert EmbeddingCandidates(model, tok, k=5).fingerprint() != embedding.fingerprint()


def test_is_augmentable():
    assert is_augmentable("movie") and is_augmentable("Movie")
    assert not any(is_augmentable(w) for w in ("the", "not", ",", "3", "don't", "'s", "naïve"))


def test_replacement_rate_near_p(teacher, embedding):
    _, tok = teacher
    words = tok.pre_tokenize(LONG_TEXT)
    eligible = [j for j, w in enumerate(words) if is_augmentable(w)]
    assert len(eligible) > 25
    out = augment_examples(_examples([LONG_TEXT]), embedding, n_aug=40, p=0.4, seed=3, progress=False,
                           dedupe=False)
    changed = np.zeros(len(words))
    for copy in out.texts[1:]:
        new = copy.split(" ")
        assert len(new) == len(words)
        for j in range(len(words)):
            if new[j] != words[j]:
                changed[j] += 1
                assert new[j] in embedding.neighbours([words[j]])[words[j]]
    others = [j for j in range(len(words)) if j not in eligible]
    assert changed[others].sum() == 0                              # stop words and punctuation stay
    rate = changed[eligible].sum() / (40 * len(eligible))
    assert 0.35 < rate < 0.45, rate
    none = augment_examples(_examples([LONG_TEXT]), embedding, n_aug=3, p=0.0, progress=False, dedupe=False)
    assert none.texts[1:] == [" ".join(words)] * 3


def test_copies_count_labels_and_determinism(teacher):
    _, tok = teacher
    gen = CountingCandidates(tok)
    ex = Examples(["a fine film", "dull story here", "nothing"], ["p one", "p two", "p three"],
                  np.array([1, 0, 1]), get_task("rte"))
    out = augment_examples(ex, gen, n_aug=4, seed=1, progress=False, augment_pair=False, dedupe=False)
    assert len(out) == 3 + 3 * 4
    assert out.texts[:3] == ex.texts and out.pairs[:3] == ex.pairs          # originals first
    assert out.labels.tolist() == [1, 0, 1] + [1] * 4 + [0] * 4 + [1] * 4
    assert out.pairs[3:] == ["p one"] * 4 + ["p two"] * 4 + ["p three"] * 4  # first text only
    assert out.labels.dtype == np.int64 and out.task is ex.task
    same = augment_examples(ex, gen, n_aug=4, seed=1, progress=False, augment_pair=False, dedupe=False,
                            chunk_size=1)
    assert same.texts == out.texts                                           # independent of chunking
    other = augment_examples(ex, gen, n_aug=4, seed=2, progress=False, augment_pair=False, dedupe=False)
    assert other.texts != out.texts
    stsb = Examples(["a b"], ["c"], np.array([3.5], dtype=np.float32), get_task("stsb"))
    assert augment_examples(stsb, gen, n_aug=2, progress=False, augment_pair=False,
                            dedupe=False).labels.tolist() == [3.5] * 3


def test_duplicates_are_dropped(teacher):
    _, tok = teacher
    gen = CountingCandidates(tok, k=1)            # one candidate a word: copies often coincide
    ex = Examples(["It's a fine film.", "it is so", "a quiet drama"], None, np.array([5, 6, 7]), get_task("sst2"))
    every = augment_examples(ex, gen, n_aug=8, p=0.5, seed=0, progress=False, dedupe=False)
    kept = augment_examples(ex, gen, n_aug=8, p=0.5, seed=0, progress=False)          # the default
    assert len(every) == 3 + 3 * 8
    assert every.texts[3 + 8:3 + 16] == ["it is so"] * 8          # stop words only: 8 copies of itself
    # "fine" and "film" each change or not: of 2^2 versions, the unchanged one is the original
    first = list(dict.fromkeys(every.texts[3:3 + 8]))
    assert "it ' s a fine film ." in first                        # the original, in words joined by spaces
    expected = [c for c in first if c != "it ' s a fine film ."]
    third = [c for c in dict.fromkeys(every.texts[3 + 16:]) if c != "a quiet drama"]
    assert kept.texts == ex.texts + expected + third
    assert 1 <= len(expected) <= 3 and 1 <= len(third) <= 3
    assert kept.labels.tolist() == [5, 6, 7] + [5] * len(expected) + [7] * len(third)
    unchanged = augment_examples(ex, gen, n_aug=8, p=0.0, progress=False)      # every copy is the original
    assert unchanged.texts == ex.texts and len(unchanged) == 3


def test_pair_tasks_augment_both_texts(teacher):
    _, tok = teacher
    gen = CountingCandidates(tok)
    ex = Examples(["a fine film", "dull story here"], ["the first premise", "the second premise"],
                  np.array([1, 0]), get_task("rte"))
    out = augment_examples(ex, gen, n_aug=3, p=1.0, seed=1, progress=False, dedupe=False)   # default: both texts
    assert len(out) == 2 + 2 * 6
    assert out.texts[:2] == ex.texts and out.pairs[:2] == ex.pairs
    first_copies = slice(2, 5)
    assert out.pairs[first_copies] == ["the first premise"] * 3                # first text augmented ...
    assert all(t != "a fine film" and len(t.split()) == 3 for t in out.texts[first_copies])
    assert out.texts[5:8] == ["a fine film"] * 3                              # ... then the second
    assert all(p.startswith("the ") and p != "the first premise" for p in out.pairs[5:8])
    assert out.texts[8:11] != ["dull story here"] * 3 and out.pairs[8:11] == ["the second premise"] * 3
    assert out.texts[11:] == ["dull story here"] * 3 and out.pairs[11:] != ["the second premise"] * 3
    assert out.labels.tolist() == [1, 0] + [1] * 6 + [0] * 6
    # the second texts' copies differ from the first texts' draws: a stream of their own
    first_only = augment_examples(ex, gen, n_aug=3, p=1.0, seed=1, progress=False, dedupe=False,
                                  augment_pair=False)
    assert len(first_only) == 2 + 2 * 3 and first_only.pairs[2:] == ["the first premise"] * 3 + \
        ["the second premise"] * 3
    assert first_only.texts[2:5] == out.texts[2:5]                            # same draws for the first texts


def test_cache_is_reused(tmp_path, teacher):
    _, tok = teacher
    ex = _examples(["a fine film", "a dull story", "quiet drama"])
    gen = CountingCandidates(tok)
    first = augment_examples(ex, gen, n_aug=5, seed=0, cache_dir=tmp_path, progress=False)
    assert gen.calls > 0
    files = list(tmp_path.glob("augment-sst2-*.jsonl"))
    assert len(files) == 1 and not list(tmp_path.glob("*.part"))
    gen.calls = 0
    second = augment_examples(ex, gen, n_aug=5, seed=0, cache_dir=tmp_path, progress=False)
    assert gen.calls == 0                                                   # read from disk, no generator
    assert second.texts == first.texts and np.array_equal(second.labels, first.labels)
    augment_examples(ex, gen, n_aug=5, seed=1, cache_dir=tmp_path, progress=False)
    assert gen.calls > 0 and len(list(tmp_path.glob("*.jsonl"))) == 2       # another key, another file
    lines = files[0].read_text().splitlines()
    assert json.loads(lines[0])["examples"] == 3 and len(lines) == 4
    files[0].write_text("\n".join(lines[:2]) + "\n")                        # damaged by hand
    with pytest.raises(AugmentError, match="holds 1 examples, expected 3; delete it"):
        augment_examples(ex, gen, n_aug=5, seed=0, cache_dir=tmp_path, progress=False)


def test_argument_errors(teacher, embedding):
    model, tok = teacher
    ex = _examples(["a b"])
    with pytest.raises(AugmentError, match="p must lie in"):
        augment_examples(ex, embedding, p=1.5, progress=False)
    with pytest.raises(AugmentError, match="has no second text"):
        augment_examples(ex, embedding, augment_pair=True, progress=False)
    with pytest.raises(AugmentError, match="needs a teacher with a masked-language-model head"):
        MlmCandidates(model, tok)


# --- MLM candidates on a tiny random model -------------------------------------------------------

TINY_WORDS = ("the cat dog sat ran on mat big small red blue green happy sad house tree car road fast slow "
              "good bad film movie story plot un ##s ##ing ##ly").split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + list(TINY_WORDS)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = Tokenizer.from_vocab(directory / "vocab.txt")
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, mlm_head=True,
                        initializer_range=0.5)   # large weights: predictions depend on the context
    return Bert(config, seed=0), tok


class ForwardCalls:
    """Records the inputs of every forward pass of `model` while in effect."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __enter__(self):
        forward = self.model.forward

        def recording_forward(ids, types=None, mask=None, **kw):
            self.calls.append((ids.copy(), types.copy(), mask.copy()))
            return forward(ids, types, mask, **kw)
        self.model.forward = recording_forward
        return self

    def __exit__(self, *exc):
        del self.model.forward            # the class's method again
        return False


def test_mlm_candidates_are_batched(tiny):
    model, tok = tiny
    gen = MlmCandidates(model, tok, k=6)
    sentences = [tok.pre_tokenize(t) for t in ("the big cat sat on the mat .", "a sad dog ran fast",
                                               "unhappy films , slow plot", "good movie")]
    positions = [[j for j, w in enumerate(s) if is_augmentable(w)] for s in sentences]
    n_words = sum(len(p) for p in positions)
    gen.vectors.pool                                                    # encoded once, before counting
    with ForwardCalls(model) as forward:
        batched = gen.candidates(sentences, positions)
    calls = [c for c in forward.calls if (c[0] == tok.mask_id).any()]   # the MLM rows (not WordVectors')
    assert 1 <= len(calls) < n_words
    single_piece = sum(len(tok.word_pieces([s[j]])[0]) == 1 for s, p in zip(sentences, positions) for j in p)
    assert sum(len(ids) for ids, _, _ in calls) == single_piece         # a row per single-piece word
    one_by_one = MlmCandidates(model, tok, k=6, max_rows=1).candidates(sentences, positions)
    assert batched == one_by_one                                        # padding changes nothing
    assert len({tuple(c) for per_sentence in batched for c in per_sentence}) > n_words // 2

    # the rows are the official "[CLS] masked [SEP] sentence [SEP]" with segment ids 0 / 1
    ids, types, mask = calls[0]
    row = ids[0][mask[0] == 1].tolist()
    assert row[0] == tok.cls_id and row.count(tok.mask_id) == 1 and row.count(tok.sep_id) == 2
    middle = row.index(tok.sep_id)
    masked, original = row[1:middle], row[middle + 1:-1]
    assert len(masked) == len(original)
    assert [a for a, b in zip(masked, original) if a != b] == [tok.mask_id]
    assert types[0][mask[0] == 1].tolist() == [0] * (middle + 1) + [1] * (len(row) - middle - 1)

    for s, words in enumerate(sentences):
        for slot, j in enumerate(positions[s]):
            found = batched[s][slot]
            assert found and not any(w.startswith("##") or w.startswith("[") for w in found)
            assert len(found) <= 6
            if len(tok.word_pieces([words[j]])[0]) > 1:                # multi-piece: nearest whole words
                assert len(found) == 6 and words[j] not in found
                assert found == gen.vectors.pool.nearest(gen.vectors.encode([words[j]]), 6, [words[j]])[0]
    assert "films" in sentences[2] and len(tok.word_pieces(["films"])[0]) == 2


def test_mlm_augmentation_end_to_end(tiny, tmp_path):
    model, tok = tiny
    gen = MlmCandidates(model, tok, k=5)
    ex = _examples(["the big cat sat on the mat", "a sad dog ran fast"])
    with ForwardCalls(model) as forward:
        out = augment_examples(ex, gen, n_aug=3, cache_dir=tmp_path, progress=False, dedupe=False)
    assert len(out) == 2 + 6 and len(forward.calls) >= 1
    with ForwardCalls(model) as forward:
        again = augment_examples(ex, gen, n_aug=3, cache_dir=tmp_path, progress=False, dedupe=False)
    assert again.texts == out.texts and forward.calls == []            # read from the cache: no model run


# --- whole-word vectors and in-context candidates on the tiny model ----------------------------------

def test_word_vectors_are_the_word_alone_averaged_over_its_pieces(tiny):
    model, tok = tiny
    vectors = WordVectors(model, tok)
    words = ["cat", "films", "slowly", "green"]
    got = vectors.encode(words)
    for word, vector in zip(words, got):
        ids = [tok.cls_id] + tok.token_ids(word) + [tok.sep_id]
        states = model.forward(np.array([ids], dtype=np.int32)).hidden_states[-1][0]
        np.testing.assert_allclose(vector, states[1:-1].mean(axis=0), rtol=1e-5, atol=1e-6)
    pool = vectors.pool.words
    assert pool == replacement_words(tok) and "the" not in pool and "##s" not in pool and "un" in pool
    assert not any(w.startswith("[") for w in pool)


def test_context_candidates_follow_the_sentence(tiny):
    model, tok = tiny
    gen = ContextCandidates(model, tok, k=5)
    texts = ["the big cat sat on the mat .", "a sad dog ran fast", "good films , slow plot", "the cat ran",
             "cats ran slowly on the road"]
    sentences = [tok.pre_tokenize(t) for t in texts]
    positions = [[j for j, w in enumerate(s) if is_augmentable(w)] for s in sentences]
    gen.vectors.pool
    with ForwardCalls(model) as forward:
        found = gen.candidates(sentences, positions)
    assert sum(len(ids) for ids, _, _ in forward.calls) == len(texts)          # one row per sentence
    assert found == [gen.candidates([s], [p])[0] for s, p in zip(sentences, positions)]   # batching: no change
    pool = set(gen.vectors.pool.words)
    for words, pos, per_word in zip(sentences, positions, found):
        for j, candidates in zip(pos, per_word):
            assert len(candidates) == 5 and words[j] not in candidates and set(candidates) <= pool
    # multi-piece words ("films", "cats", "slowly") are replaced too, from their in-context vector
    where, vectors = gen.in_context(sentences[4:], positions[4:])
    states = model.forward(np.array([[tok.cls_id] + tok.token_ids(texts[4]) + [tok.sep_id]],
                                    dtype=np.int32)).hidden_states[-1][0]
    assert [slot for _, slot in where] == [0, 1, 2, 3] and sentences[4][positions[4][0]] == "cats"
    np.testing.assert_allclose(vectors[0], states[1:3].mean(axis=0), rtol=1e-5, atol=1e-6)     # cat ##s
    assert found[4][0] == gen.vectors.pool.nearest(vectors[:1], 5, ["cats"])[0]
    # the same word in two sentences: its context changes its candidates
    assert found[0][1] != found[3][0] and sentences[0][2] == sentences[3][1] == "cat"


def test_context_augmentation_on_a_pair_task(tiny, tmp_path):
    model, tok = tiny
    ex = Examples(["the big cat sat on the mat", "a sad dog"], ["green tree", "slow cars on the road"],
                  np.array([0, 1]), get_task("rte"))
    out = augment_examples(ex, ContextCandidates(model, tok, k=4), n_aug=4, p=0.5, cache_dir=tmp_path,
                           progress=False)
    copies = list(zip(out.texts[2:], out.pairs[2:]))
    assert any(t != ex.texts[0] and p == ex.pairs[0] for t, p in copies)       # first texts changed ...
    assert any(t == ex.texts[0] and p != ex.pairs[0] for t, p in copies)       # ... and second texts
    assert len(tok.word_pieces(["cars"])[0]) == 2
    assert any(p.split()[1] != "cars" for _, p in copies if p.endswith("on the road"))   # multi-piece: replaced
    assert len(copies) == len(set(copies))
