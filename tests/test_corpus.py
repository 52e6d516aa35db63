"""The general corpus: packed sequences, exact resume from a state_dict, shards that each read their own
documents, formats streamed through `datasets`, errors."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minitinybert.data.corpus import CorpusBatcher, StreamedFiles
from minitinybert.data.shards import Rows, Shards
from minitinybert.data.tasks import DataError
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MINITINYBERT_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"data directory {DATA} not present")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_dir(resolve_teacher(None, log=lambda *a: None))


def _write_corpus(root: Path) -> Path:
    root.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    for f in range(3):
        lines = []
        for d in range(4):
            for s in range(int(rng.integers(1, 6))):
                lines.append(" ".join(rng.choice(words, size=int(rng.integers(1, 25)))))
            lines.append("")
        (root / f"part{f}.txt").write_text("\n".join(lines) + "\n\n")
    (root / "ignored.md").write_text("not a corpus file")
    return root


def _batches(batcher, n):
    return [next(batcher) for _ in range(n)]


def test_corpus_batcher_sequences(tmp_path, tok):
    corpus = _write_corpus(tmp_path / "corpus")
    batcher = CorpusBatcher(corpus, tok, seq_len=16, batch_size=4, seed=1, segments=1)
    assert batcher.num_documents == 12
    for batch in _batches(batcher, 30):                       # several epochs of this tiny corpus
        assert batch.input_ids.shape == (4, 16)                  # padded to seq_len, whatever the rows
        for row in range(4):
            n = int(batch.attention_mask[row].sum())
            assert n >= 3 and batch.input_ids[row, 0] == tok.cls_id and batch.input_ids[row, n - 1] == tok.sep_id
            assert (batch.input_ids[row, 1:n - 1] != tok.sep_id).all()
            assert (batch.input_ids[row, n:] == tok.pad_id).all()
        assert (batch.token_type_ids == 0).all()
    assert batcher.epoch >= 2


@pytest.mark.parametrize("segments", [1, 2])
def test_corpus_batcher_resume_exact(tmp_path, tok, segments):
    corpus = _write_corpus(tmp_path / "corpus")
    make = lambda seed=5, segments=segments: CorpusBatcher(corpus, tok, seq_len=16, batch_size=3,  # noqa: E731
                                                           seed=seed, segments=segments)
    expected = _batches(make(), 40)
    for cut in (1, 7, 23):                                     # mid-epoch and after epoch boundaries
        first = make()
        _batches(first, cut)
        state = json.loads(json.dumps(first.state_dict()))     # survives a JSON checkpoint
        resumed = make()
        resumed.load_state_dict(state)
        for a, b in zip(expected[cut:cut + 8], _batches(resumed, 8)):
            assert np.array_equal(a.input_ids, b.input_ids)
            assert np.array_equal(a.token_type_ids, b.token_type_ids)
            assert np.array_equal(a.attention_mask, b.attention_mask)
    with pytest.raises(DataError, match="seed is 5 in the state, 6 here"):
        make(seed=6).load_state_dict(state)
    with pytest.raises(DataError, match=f"segments is {segments} in the state, {3 - segments} here"):
        make(segments=3 - segments).load_state_dict(state)
    if segments == 1:                                          # a state written before pairs existed
        del state["segments"]
        resumed = make()
        resumed.load_state_dict(state)
        assert np.array_equal(next(resumed).input_ids, expected[23].input_ids)


def test_unpacked_rows_are_one_line_each_and_resume(tmp_path, tok):
    """pack=False (distill embed's rows): every row is one line of the corpus, cut at the sequence, never
    two lines together; the packed control holds rows of several lines; resume is exact."""
    corpus = _numbered_corpus(tmp_path / "c")
    lines = {" ".join(tok.tokenize(x)) for x in (corpus / "docs.txt").read_text().split("\n") if x.strip()}
    make = lambda pack=False: CorpusBatcher(corpus, tok, seq_len=6, batch_size=4, seed=3, segments=1,  # noqa: E731
                                            pack=pack)
    expected = _batches(make(), 30)

    def rows(batches):
        for batch in batches:
            for ids, mask in zip(batch.input_ids, batch.attention_mask):
                yield tok.convert_ids_to_tokens([int(i) for i in ids[1:int(mask.sum()) - 1]])

    cut = [" ".join(r) for r in rows(expected)]
    assert all(sum(t in PAIR_WORDS for t in r.split()) == 1 for r in cut)          # one line a row
    assert all(any(line.startswith(r) for line in lines) for r in cut)              # a whole line, or its start
    assert any(r not in lines for r in cut) and any(r in lines for r in cut)        # long lines are cut
    assert make().num_documents == len([x for x in (corpus / "docs.txt").read_text().split("\n") if x.strip()])
    source = [next(t for t in r.split() if t in PAIR_WORDS) for r in cut]     # lines shuffled one by one:
    assert sum(a == b for a, b in zip(source, source[1:])) < len(source) / 3   # neighbours mostly of two documents
    packed = [" ".join(r) for r in rows(_batches(make(pack=True), 30))]
    assert any(sum(t in PAIR_WORDS for t in r.split()) > 1 for r in packed)         # the control packs lines
    first = make()
    _batches(first, 11)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    for a, b in zip(expected[11:], _batches(resumed, 8)):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
    with pytest.raises(DataError, match="one-line rows, this batcher packed rows"):
        make(pack=True).load_state_dict(state)
    with pytest.raises(DataError, match="unpacked rows .* take segments=1"):
        CorpusBatcher(corpus, tok, segments=2, pack=False)


# --- sentence pairs ----------------------------------------------------------------------------------

PAIR_WORDS = "apple river castle window garden pencil rocket violin forest candle".split()


def _numbered_corpus(root: Path) -> Path:
    """Document d's line k is `word_d k k ...`: a token tells its document, and the number its line."""
    root.mkdir()
    rng = np.random.default_rng(3)
    docs = ["\n".join(f"{word} " + " ".join([str(k)] * int(rng.integers(1, 6))) for k in range(int(rng.integers(1, 14))))
            for word in PAIR_WORDS]
    (root / "docs.txt").write_text("\n\n".join(docs) + "\n")
    return root


def _sentences_of(tokens: list[str]) -> list[tuple[str, int | None]]:
    """(document word, line number) of each sentence in a segment; a sentence whose number truncation
    cut off (B's last) is the one after its predecessor (None if it has none); the numbers before
    A's first word (truncation cut its start) are left out."""
    out = []
    for k, token in enumerate(tokens):
        if token in PAIR_WORDS:
            number = int(tokens[k + 1]) if k + 1 < len(tokens) else (out[-1][1] + 1 if out else None)
            out.append((token, number))
    return out


def test_pair_batches_layout_and_sources(tmp_path, tok):
    """[CLS] A [SEP] B [SEP]: token types 0 then 1, both segments non-empty, packed near the sequence
    length; A is consecutive lines of one document, B either the lines that follow A or a run of
    lines of another document, about half the time each."""
    batcher = CorpusBatcher(_numbered_corpus(tmp_path / "c"), tok, seq_len=24, batch_size=4, seed=0)
    first_document = None
    kinds, lengths = {"next": 0, "other": 0}, []
    for batch in _batches(batcher, 60):
        assert batch.input_ids.shape == batch.token_type_ids.shape == (4, 24)
        for row in range(4):
            n = int(batch.attention_mask[row].sum())
            assert (batch.attention_mask[row, :n] == 1).all() and (batch.input_ids[row, n:] == tok.pad_id).all()
            ids, types = batch.input_ids[row, :n], batch.token_type_ids[row]
            seps = np.flatnonzero(ids == tok.sep_id)
            assert ids[0] == tok.cls_id and len(seps) == 2 and seps[1] == n - 1
            middle = int(seps[0])
            assert 1 < middle < n - 2                                    # A and B both non-empty
            assert (types[:middle + 1] == 0).all() and (types[middle + 1:n] == 1).all() and (types[n:] == 0).all()
            lengths.append(n)
            a = _sentences_of(tok.convert_ids_to_tokens(ids[1:middle]))
            b = _sentences_of(tok.convert_ids_to_tokens(ids[middle + 1:n - 1]))
            if not a or not b:                                      # cut down to a number
                continue
            first_document = first_document or a[0][0]
            assert len({w for w, _ in a}) == 1 and len({w for w, _ in b}) == 1   # one document each
            if a[0][1] is None or b[0][1] is None:                  # one token left of a segment
                continue
            for segment in (a, b):
                assert [k for _, k in segment] == list(range(segment[0][1], segment[0][1] + len(segment)))
            if a[0][0] == b[0][0] and a[-1][1] + 1 == b[0][1]:
                kinds["next"] += 1
            elif a[0][0] != b[0][0]:
                kinds["other"] += 1
            else:
                assert a[0][0] == first_document        # a shard's first document is its own "other"
    assert np.mean(lengths) > 0.8 * 24                                       # packed
    share = kinds["other"] / (kinds["next"] + kinds["other"])
    assert 0.3 < share < 0.8, kinds


def test_pair_batches_shards_and_streaming(tmp_path, tok):
    """Pairs from two single-shard processes make the one-process batch; streamed files make the
    indexed-text batches' layout, and resume exactly across a file boundary."""
    corpus = _numbered_corpus(tmp_path / "c")
    whole = CorpusBatcher(corpus, tok, seq_len=20, batch_size=4, seed=1, shards=Shards(0, 2, 2))
    parts = [CorpusBatcher(corpus, tok, seq_len=20, batch_size=4, seed=1, shards=Shards(s, 1, 2)) for s in (0, 1)]
    for _ in range(10):
        batch, pieces = next(whole), [next(p) for p in parts]
        for field in ("input_ids", "token_type_ids"):
            np.testing.assert_array_equal(np.concatenate([getattr(p.item, field) for p in pieces]),
                                          getattr(batch, field))
    files = _write_documents(tmp_path)
    streamed = _save(files, tmp_path / "jsonl", "jsonl")
    make = lambda: CorpusBatcher(streamed, tok, seq_len=16, batch_size=3, seed=2)   # noqa: E731
    expected = _batches(make(), 50)
    assert all((b.token_type_ids.max(1) == 1).all() for b in expected)
    for cut in (3, 31):
        first = make()
        _batches(first, cut)
        resumed = make()
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        for a, b in zip(expected[cut:cut + 10], _batches(resumed, 10)):
            np.testing.assert_array_equal(a.input_ids, b.input_ids)
            np.testing.assert_array_equal(a.token_type_ids, b.token_type_ids)


def test_corpus_batcher_errors(tmp_path, tok):
    with pytest.raises(DataError, match="corpus directory not found"):
        CorpusBatcher(tmp_path / "none", tok)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .txt, .jsonl"):
        CorpusBatcher(tmp_path / "empty", tok)
    (tmp_path / "empty" / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="holds no text"):
        CorpusBatcher(tmp_path / "empty", tok)
    with pytest.raises(DataError, match="seq_len must be >= 3"):
        CorpusBatcher(tmp_path / "empty", tok, seq_len=2, segments=1)
    with pytest.raises(DataError, match="seq_len must be >= 5"):
        CorpusBatcher(tmp_path / "empty", tok, seq_len=4)
    with pytest.raises(DataError, match="segments must be 1"):
        CorpusBatcher(tmp_path / "empty", tok, segments=3)


@needs_data
def test_real_corpus_quick(tok):
    corpus = DATA / "corpus"
    batcher = CorpusBatcher(corpus, tok, seq_len=64, batch_size=8, seed=0)
    expected = _batches(batcher, 6)
    assert all(b.input_ids.shape[1] == 64 and (b.input_ids[:, 0] == tok.cls_id).all() for b in expected)
    assert all((b.token_type_ids.max(1) == 1).all() for b in expected)      # sentence pairs by default
    filled = np.mean([b.attention_mask.sum(1).mean() for b in expected])
    assert filled > 32                                         # sentences are packed, not one per sequence
    again = CorpusBatcher(corpus, tok, seq_len=64, batch_size=8, seed=0)
    _batches(again, 3)
    resumed = CorpusBatcher(corpus, tok, seq_len=64, batch_size=8, seed=0)
    resumed.load_state_dict(again.state_dict())
    for a, b in zip(expected[3:], _batches(resumed, 3)):
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.token_type_ids, b.token_type_ids)


# --- shards ------------------------------------------------------------------------------------------

def test_shards_read_their_own_documents_and_make_the_same_batches(tmp_path, tok):
    """Two processes of one shard each get, between them, the batch one process of both shards makes;
    each of them packs only documents of its own."""
    corpus = _write_corpus(tmp_path / "corpus")
    whole = CorpusBatcher(corpus, tok, seq_len=16, batch_size=5, seed=2, shards=Shards(0, 2, 2))
    parts = [CorpusBatcher(corpus, tok, seq_len=16, batch_size=5, seed=2, shards=Shards(s, 1, 2)) for s in (0, 1)]
    for _ in range(12):
        batch, (first, second) = next(whole), [next(p) for p in parts]
        assert isinstance(first, Rows) and (first.lo, first.hi, second.lo, second.hi, first.n_rows) == (0, 2, 2, 5, 5)
        np.testing.assert_array_equal(np.concatenate([first.item.input_ids, second.item.input_ids]), batch.input_ids)
    # a shard's documents: every other one of each epoch's order, the two shards' disjoint
    source = parts[0].source
    for epoch in range(2):
        seen = [{p["doc"] for p, _ in _first_epoch(source, s, 2, epoch)} for s in (0, 1)]
        assert [len(x) for x in seen] == [6, 6]
    one = CorpusBatcher(corpus, tok, seq_len=16, batch_size=5, seed=2)
    assert not np.array_equal(next(one).input_ids, next(CorpusBatcher(corpus, tok, seq_len=16, batch_size=5, seed=2,
                                                                         shards=Shards(0, 2, 2))).input_ids)
    with pytest.raises(DataError, match="smaller than the 3 shards"):
        CorpusBatcher(corpus, tok, batch_size=2, shards=Shards(0, 3, 3))
    state = parts[1].state_dict()
    with pytest.raises(DataError, match="this process reads \\[0\\]"):
        parts[0].load_state_dict(state)
    with pytest.raises(DataError, match="shards is 2 in the state, 1 here"):
        CorpusBatcher(corpus, tok, seq_len=16, batch_size=5, seed=2).load_state_dict(state)


def _first_epoch(source, shard, shards, epoch=0):
    out = []
    for position, lines in source.documents(shard, shards, None):
        if position["epoch"] > epoch:
            return out
        if position["epoch"] == epoch:
            out.append((position, lines))
    return out


# --- streamed through datasets: JSON lines, Parquet, text ----------------------------------------------

def _write_documents(root: Path, n_files=4, docs_per_file=25) -> list[list[list[str]]]:
    """Documents of a few lines, each line naming its file and document: files[f][d] = lines."""
    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [[[f"file{f} doc{d} " + " ".join(rng.choice(words, size=int(rng.integers(2, 12))))
              for _ in range(int(rng.integers(1, 5)))] for d in range(docs_per_file)] for f in range(n_files)]


def _save(files, root: Path, fmt: str) -> Path:
    root.mkdir()
    for f, docs in enumerate(files):
        texts = ["\n".join(lines) for lines in docs]
        if fmt == "jsonl":
            (root / f"part{f}.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                                                         for i, t in enumerate(texts)))
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq
            pq.write_table(pa.table({"text": texts}), root / f"part{f}.parquet", row_group_size=7)
        else:
            (root / f"part{f}.txt").write_text("\n\n".join(texts) + "\n")
    return root


def test_streamed_formats_shard_by_file_and_agree(tmp_path, tok):
    files = _write_documents(tmp_path)
    corpora = {fmt: _save(files, tmp_path / fmt, fmt) for fmt in ("jsonl", "parquet", "txt")}
    # each shard reads only its files, and the two shards' documents are the whole corpus once
    source = StreamedFiles(sorted(corpora["jsonl"].iterdir()), "json", seed=4)
    for epoch in (0, 1):
        read = []
        for shard in (0, 1):
            planned, every_other = source.plan(shard, 2, epoch)
            assert len(planned) == 2 and not every_other
            docs = [lines for _, lines in _first_epoch(source, shard, 2, epoch)]
            assert {lines[0].split()[0] for lines in docs} == {p.stem.replace("part", "file") for p in planned}
            read += ["\n".join(lines) for lines in docs]
        assert sorted(read) == sorted("\n".join(lines) for docs in files for lines in docs)
    # three shards do not divide four files: every shard reads all, keeps every third document
    thirds = [[lines for _, lines in _first_epoch(source, s, 3)] for s in range(3)]
    assert sorted(len(t) for t in thirds) == [33, 33, 34] and source.plan(0, 3, 0)[1]
    # the same documents as JSON lines, Parquet or streamed text make the same batches
    batches = {fmt: _batches(CorpusBatcher(path, tok, seq_len=16, batch_size=4, seed=4, shards=Shards(0, 2, 2),
                                           streaming=True), 6) for fmt, path in corpora.items()}
    for fmt in ("parquet", "txt"):
        for a, b in zip(batches["jsonl"], batches[fmt]):
            np.testing.assert_array_equal(a.input_ids, b.input_ids, err_msg=fmt)


def test_streamed_corpus_is_read_as_needed_and_resumes_exactly(tmp_path, tok):
    """More documents than a few batches use: the stream stays in its first files, and a state taken
    anywhere (JSON) continues exactly, across file and epoch boundaries."""
    corpus = _save(_write_documents(tmp_path, n_files=8, docs_per_file=10), tmp_path / "jsonl", "jsonl")
    make = lambda: CorpusBatcher(corpus, tok, seq_len=16, batch_size=3, seed=0, shards=Shards(1, 1, 2))  # noqa: E731
    reference = make()
    expected = _batches(reference, 110)
    assert all(isinstance(b, Rows) and (b.lo, b.hi) == (2, 3) for b in expected)
    assert reference.epoch >= 1                                # shard 1's four files, more than once
    early = make()
    _batches(early, 2)
    at = early.state_dict()["streams"]["1"]["at"]
    assert (at["epoch"], at["file"]) == (0, 0) and at["record"] < 10
    for cut in (1, 23, 67):
        first = make()
        _batches(first, cut)
        resumed = make()
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        for a, b in zip(expected[cut:cut + 10], _batches(resumed, 10)):
            np.testing.assert_array_equal(a.item.input_ids, b.item.input_ids)


def test_streamed_corpus_errors(tmp_path, tok):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text(json.dumps({"body": "no text field here"}) + "\n")
    with pytest.raises(DataError, match="a.jsonl, record 0: no text field 'text' \\(fields: body\\)"):
        next(CorpusBatcher(bad, tok, seq_len=16, batch_size=2))
    assert next(CorpusBatcher(bad, tok, seq_len=16, batch_size=2, column="body")).input_ids.shape == (2, 16)
    (bad / "b.txt").write_text("text\n")
    with pytest.raises(DataError, match="mixes formats"):
        CorpusBatcher(bad, tok)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jsonl").write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(DataError, match="a.jsonl"):
        _batches(CorpusBatcher(broken, tok, seq_len=16, batch_size=2), 3)
