"""export --vocab: a runtime file holding only the word pieces some texts use. The texts it was drawn
from tokenize (and so predict) exactly as with the full vocabulary; any word whose pieces were all
kept does too; a word that needed a dropped piece is split again from the kept pieces or becomes
[UNK]; the embedding rows follow their pieces; sources are read as documented, bad ones refused."""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minitinybert import runtime
from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.engine.weights import save_checkpoint
from minitinybert.export import (ExportError, export_model, export_runtime, kept_piece_ids, main, piece_counts,
                                 prune_vocab, vocab_texts)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# whole words, and their parts, so that dropping a word leaves a re-split (play + ##ing) or [UNK]
WORDS = ["the", "movie", "film", "good", "bad", "great", "dull", "plot", "is", "was", "not", "very", "play",
         "playing", "played", "##ing", "##ed", "##s", "##ly", "un", "##believ", "##able", "believ", "##y", "fun"]
VOCAB = list(dict.fromkeys(SPECIALS[:1] + ["[unused0]"] + SPECIALS[1:] + list("abcdefghijklmnopqrstuvwxyz")
                           + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + list(".,!?") + WORDS))
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def small_model(num_labels=2, seed=0):
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=64, num_labels=num_labels,
                     id2label={0: "negative", 1: "positive"} if num_labels == 2 else {})
    model = Bert(cfg, seed=seed)
    if num_labels:
        model.params["classifier.weight"][...] *= 20.0      # labels that differ between texts
    return model


def tokenizer(tokens):
    return runtime.WordPieceTokenizer(tokens, do_lower_case=True)


def kept_tokens(texts, vocab_size=None):
    keep = kept_piece_ids(VOCAB, piece_counts(VOCAB, True, texts), vocab_size)
    return keep, [VOCAB[i] for i in keep]


# --- which pieces are kept ----------------------------------------------------------------------

def test_kept_ids_are_the_specials_and_the_pieces_used_in_old_order():
    keep, kept = kept_tokens(["the movie was playing", "unbelievably dull!"])
    assert keep == sorted(keep)
    assert set(SPECIALS) <= set(kept) and "[unused0]" not in kept
    assert set(kept) - set(SPECIALS) == {"the", "movie", "was", "playing", "un", "##believ", "##a", "##b", "##ly",
                                         "dull", "!"}


def test_vocab_size_keeps_the_most_frequent_pieces():
    texts = ["good good good film", "good film bad", "dull"]
    keep, kept = kept_tokens(texts, vocab_size=len(SPECIALS) + 2)
    assert set(kept) == set(SPECIALS) | {"good", "film"}          # 3 and 2 uses; bad and dull once
    keep, kept = kept_tokens(texts, vocab_size=len(SPECIALS) + 3)
    assert set(kept) - set(SPECIALS) == {"good", "film", "bad"}     # a tie goes to the lower old id
    with pytest.raises(ExportError, match="special tokens"):
        kept_tokens(texts, vocab_size=len(SPECIALS))


def test_prune_vocab_takes_the_embedding_rows_along_and_refuses_bad_ids():
    model = small_model()
    keep, kept = kept_tokens(["a dull film"])
    state, cfg, tokens = prune_vocab(model.state_dict(), model.config, VOCAB, keep)
    assert tokens == kept and cfg.vocab_size == len(kept) and model.config.vocab_size == len(VOCAB)
    table = model.state_dict()["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(state["embeddings.word_embeddings.weight"], table[keep])
    for bad in ([], [3, 2], [0, 0, 1], [0, len(VOCAB)]):
        with pytest.raises(ExportError, match="ascending"):
            prune_vocab(model.state_dict(), model.config, VOCAB, bad)
    with pytest.raises(ExportError, match=r"\[CLS\]"):
        prune_vocab(model.state_dict(), model.config, VOCAB, [i for i in keep if VOCAB[i] != "[CLS]"])


# --- the tokenization rule ----------------------------------------------------------------------

words = st.text(LETTERS, min_size=1, max_size=12)
texts = st.lists(words, min_size=1, max_size=8).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(source=st.lists(texts, min_size=1, max_size=6), other=st.lists(texts, min_size=1, max_size=6))
def test_source_texts_tokenize_identically_and_other_words_as_documented(source, other):
    full = tokenizer(VOCAB)
    _, kept = kept_tokens(source)
    small = tokenizer(kept)
    for text in source:
        assert small.tokenize(text) == full.tokenize(text)
    for text in other:
        for word in full.pre_tokenize(text):
            before, after = full.tokenize(word), small.tokenize(word)
            if set(before) <= set(kept):
                assert after == before                    # all its pieces kept: exactly as before
            else:                                         # re-split from kept pieces, or [UNK]
                assert after != before and set(after) <= set(kept)
                assert after == ["[UNK]"] or "".join(p[2:] if p.startswith("##") else p for p in after) == word


def test_a_dropped_word_is_re_split_or_becomes_unk():
    _, kept = kept_tokens(["play the film", "was dull doing"])    # doing = d ##o ##ing
    small = tokenizer(kept)
    assert tokenizer(VOCAB).tokenize("playing") == ["playing"]
    assert "##ing" in kept and small.tokenize("playing") == ["play", "##ing"]
    assert small.tokenize("great") == ["[UNK]"]                  # "g" was never used: nothing fits


# --- the runtime file ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,quantize", [("float32", False), ("float16", False), ("int8", True)])
def test_pruned_file_predicts_source_texts_as_the_full_file(tmp_path, dtype, quantize):
    model = small_model()
    source = ["the movie was great", "a dull plot , not very good !", "playing unbelievably", "fun fun"]
    keep, kept = kept_tokens(source)
    full = runtime.load(export_model(model, tmp_path / "full.st", VOCAB, True, dtype, quantize))
    small = runtime.load(export_model(model, tmp_path / "small.st", VOCAB, True, dtype, quantize, keep_ids=keep))
    assert small.config["vocab_size"] == len(kept) < full.config["vocab_size"]
    assert (tmp_path / "small.st").stat().st_size < (tmp_path / "full.st").stat().st_size
    np.testing.assert_array_equal(small.logits(source), full.logits(source))
    # a text needing dropped pieces runs on other ids: its logits move (the check above can fail)
    other = ["zebra xylophone quiz"]
    assert small.tokenize(other)["input_ids"].tolist() != full.tokenize(other)["input_ids"].tolist()
    assert not np.array_equal(small.logits(other), full.logits(other))


def test_int8_rows_are_the_full_files_rows(tmp_path):
    model = small_model()
    keep, _ = kept_tokens(["good film", "bad plot"])
    full = export_model(model, tmp_path / "full.st", VOCAB, True, "int8", True)
    small = export_model(model, tmp_path / "small.st", VOCAB, True, "int8", True, keep_ids=keep)
    name = "embeddings.word_embeddings.weight"
    (_, a, _), (_, b, _) = runtime.read_safetensors(full), runtime.read_safetensors(small)
    for key in (name, name + "_scale"):
        assert a[key][0] == b[key][0] == ("I8" if key == name else "F32")
        np.testing.assert_array_equal(b[key][1], a[key][1][keep])


# --- sources ------------------------------------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_sources_text_file_tsv_task_directory_and_folder(tmp_path):
    assert vocab_texts(write(tmp_path / "a.txt", "\ufeffone text\n\n  two  \n")) == ["one text", "two"]
    assert vocab_texts(write(tmp_path / "own.tsv", 'id\tsentence\tlabel\n1\tbare "quote\t0\n')) == ['bare "quote']
    sst = tmp_path / "glue" / "SST-2"
    write(sst / "train.tsv", "sentence\tlabel\ntrain text\t1\n")
    write(sst / "dev.tsv", "sentence\tlabel\ndev text\t0\n")
    assert vocab_texts(sst) == ["train text"]                 # the dev split stays unseen
    cola = tmp_path / "glue" / "CoLA"                          # no header: the sentence is column 3
    write(cola / "train.tsv", "src\t1\t\tA sentence.\n")
    assert vocab_texts(cola) == ["A sentence."]
    rte = write(tmp_path / "glue" / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tfirst\tsecond\tx\n")
    assert vocab_texts(rte) == ["first", "second"]
    corpus = tmp_path / "corpus"
    write(corpus / "b.txt", "bee\n")
    write(corpus / "a.txt", "ay\n")
    write(corpus / "notes.md", "ignored\n")
    assert vocab_texts(corpus) == ["ay", "bee"]


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        vocab_texts(tmp_path / "missing.txt")
    with pytest.raises(ExportError, match="no text"):
        vocab_texts(write(tmp_path / "empty.txt", "\n \n"))
    with pytest.raises(ExportError, match="no text column"):
        vocab_texts(write(tmp_path / "x.tsv", "id\tlabel\n1\t0\n"))
    with pytest.raises(ExportError, match="no .txt or .tsv"):
        (tmp_path / "void").mkdir()
        vocab_texts(tmp_path / "void")
    with pytest.raises(ExportError, match="train"):
        (tmp_path / "SST-2").mkdir()
        vocab_texts(tmp_path / "SST-2")
    with pytest.raises(ExportError, match="not UTF-8"):
        (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
        vocab_texts(tmp_path / "latin.txt")


# --- command line -------------------------------------------------------------------------------

@pytest.fixture
def task_data(tmp_path):
    """A checkpoint and an SST-2 folder whose dev texts use only train's words but one."""
    model = small_model(seed=3)
    vocab = write(tmp_path / "vocab.txt", "\n".join(VOCAB) + "\n")
    save_checkpoint(model, tmp_path / "ckpt", vocab_from=vocab)
    sst = tmp_path / "data" / "glue" / "SST-2"
    train = ["the movie was great", "a dull plot", "not very good", "playing unbelievably", "fun film"]
    dev = [("the movie was great", 1), ("a dull plot", 0), ("not very good", 0), ("zebra quiz", 1)]
    write(sst / "train.tsv", "sentence\tlabel\n" + "".join(f"{t}\t1\n" for t in train))
    write(sst / "dev.tsv", "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in dev))
    return tmp_path


def test_command_prints_pieces_sizes_and_metrics(task_data, capsys):
    out = task_data / "out"
    code = main([str(task_data / "ckpt"), "--out", str(out), "--dtypes", "float32,int8", "--quantize-embeddings",
                 "--vocab", str(task_data / "data" / "glue" / "SST-2"), "--task", "sst2",
                 "--data", str(task_data / "data")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    used = {p for t in vocab_texts(task_data / "data" / "glue" / "SST-2") for p in tokenizer(VOCAB).tokenize(t)}
    kept = len(used) + len(SPECIALS)
    assert f"kept {kept} of {len(VOCAB)} pieces" in printed and f"dropped {len(VOCAB) - kept}" in printed
    assert "sst2 dev: 1 of 4 examples tokenize differently" in printed      # only "zebra quiz"
    assert sorted(p.name for p in out.iterdir()) == ["runtime-float32.safetensors", "runtime-int8.safetensors"]
    header = next(line for line in printed.splitlines() if line.startswith("dtype"))
    assert "full MB" in header and header.endswith("vocab delta")
    rows = [line.split() for line in printed.splitlines() if re.match(r"(float32|int8)\s", line)]
    assert [row[0] for row in rows] == ["float32", "int8"]
    for dtype, size, _ratio, metric, _delta, full_size, full_metric, vocab_delta in rows:
        path = out / f"runtime-{dtype}.safetensors"
        full = export_runtime(task_data / "ckpt", task_data / "full.st", dtype, quantize_embeddings=True)
        assert float(size) == pytest.approx(path.stat().st_size / 1e6, abs=0.006)
        assert float(full_size) == pytest.approx(full.stat().st_size / 1e6, abs=0.006)
        assert path.stat().st_size < full.stat().st_size
        assert float(vocab_delta) == pytest.approx(float(metric) - float(full_metric), abs=2e-4)
        assert abs(float(vocab_delta)) <= 0.25 + 1e-9            # one dev example of four could change
        assert runtime.load(path).config["vocab_size"] == kept


@pytest.mark.parametrize("args,message", [
    (["--vocab", "MISSING"], "does not exist"),
    (["--vocab-size", "10"], "needs --vocab"),
    (["--vocab", "EMPTY"], "no text"),
])
def test_command_errors(task_data, capsys, args, message):
    write(task_data / "empty.txt", "\n")
    args = [a.replace("MISSING", str(task_data / "nope.txt")).replace("EMPTY", str(task_data / "empty.txt"))
            for a in args]
    assert main([str(task_data / "ckpt"), "--out", str(task_data / "out")] + args) == 2
    assert message in capsys.readouterr().err


def test_export_runtime_with_keep_ids_reads_the_checkpoints_vocabulary(task_data):
    keep, kept = kept_tokens(["good film"])
    path = export_runtime(task_data / "ckpt", task_data / "m.st", "float32", keep_ids=keep)
    model = runtime.load(path)
    assert model.config["vocab_size"] == len(kept)
    assert model.tokenize(["good film"])["input_ids"][0].tolist() == [kept.index(t) for t in
                                                                       ["[CLS]", "good", "film", "[SEP]"]]
