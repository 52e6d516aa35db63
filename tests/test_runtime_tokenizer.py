"""The runtime's built-in WordPiece gives the ids of tokenizers' BertWordPieceTokenizer, on drawn
Unicode text (accents, CJK, punctuation, control characters, long words, special tokens) and on
fixed tricky cases, cased and uncased, with and without pairs and truncation."""
import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minitinybert.runtime import RuntimeModelError, WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")
from tokenizers.implementations import BertWordPieceTokenizer  # noqa: E402


@functools.lru_cache(maxsize=None)
def vocab_path() -> str:
    from minitinybert.engine.teacher import resolve_teacher
    return str(resolve_teacher(None) / "vocab.txt")


@functools.lru_cache(maxsize=None)
def tokenizers_for(lowercase: bool):
    with open(vocab_path(), encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    ours = WordPieceTokenizer(tokens, do_lower_case=lowercase, backend="python")
    reference = BertWordPieceTokenizer(vocab_path(), lowercase=lowercase)
    return ours, reference


def reference_ids(reference, text):
    return reference.encode(text, add_special_tokens=False).ids


PIECES = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=8),                   # any code point
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),      # ASCII words
    st.text(st.sampled_from("àáâãäåçèéêëìíîïñòóôõöùúûüýÿÀÉÎÕÜßøæœŁłŠšŽžİıΣσςΑΒΓ" + "\u0301\u0308\u0327"),
            max_size=6),                                                              # accents
    st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF), max_size=4),   # CJK
    st.text(st.sampled_from("\u3001\u3002\uff01\uff0c\u300c\u300d\u2014\u2026\u00bf\u00a1!?.,;:'\"()[]{}#$%&*+-/<=>@\\^_`|~"),
            max_size=4),                                                              # punctuation
    st.text(st.sampled_from("\x00\x01\x07\x0b\x0c\x1b\x7f\x85\u200b\u200d\u2028\ufeff\ufffd\t\n\r \u00a0\u3000"),
            max_size=4),                                                              # controls, spaces
    st.integers(95, 105).map(lambda n: "a" * n),                                      # around the 100-char limit
    st.sampled_from(["[MASK]", "[SEP]", "[CLS]", "[UNK]", "[PAD]", "[mask]", "##ing", "unaffable", "Straße"]),
)
TEXT = st.lists(PIECES, max_size=8).map("".join)


@given(TEXT, st.booleans())
def test_ids_equal_bert_wordpiece_tokenizer(text, lowercase):
    ours, reference = tokenizers_for(lowercase)
    assert ours.token_ids([text])[0] == reference_ids(reference, text)


@given(TEXT, TEXT, st.integers(4, 24), st.booleans())
def test_pairs_and_truncation_equal_bert_wordpiece_tokenizer(a, b, max_length, lowercase):
    ours, reference = tokenizers_for(lowercase)
    reference.enable_truncation(max_length)        # longest_first, the default
    try:
        ref = reference.encode(a, b)
        ref_single = reference.encode(a)
    finally:
        reference.no_truncation()
    (ids, types, _), = ours.encode([(a, b)], max_length)
    assert ids == ref.ids and types == ref.type_ids
    (ids, types, _), = ours.encode([a], max_length)
    assert ids == ref_single.ids and types == ref_single.type_ids


TRICKY = [
    "", " ", "\t\n\r", "Hello, World!", "HELLO hello HeLLo", "unaffable", "don't stop-believing...",
    "Café crème brûlée", "naïve résumé", "İstanbul", "ΟΔΥΣΣΕΥΣ Σίσυφος", "Straße", "ﬁnancial ﬀ",
    "中文字符测试", "日本語のテキスト", "한국어 텍스트", "mixed中文and English", "\u4e00\u9fff\u3400\U00020000\U0002b820",
    "\uf900\uf901 compatibility", "e\u0301\u0300 combining", "\x00null\x01ctl\x7fdel", "zero\u200bwidth\ufeffbom",
    "line\u2028sep\u2029para", "nbsp\u00a0space\u3000ideographic", "\ufffd replacement", "emoji 😀👍🏽 ok",
    "a" * 100, "a" * 101, "ab" * 60 + " short", "x" * 300, "[MASK]", "[mask]", "a[SEP]b", "[CLS][SEP]",
    "[ UNK ]", "##", "##ing", "#hash #tag", "$100.00 & 50% off!!!", "e-mail: someone@example.com",
    "¿Qué? ¡Sí!", "«quoted» „low“ ‘single’", "tab\tseparated\tvalues", "\U00011938\U00010d50\u1c89",
    "\u0378\u0379 unassigned", "\ue000 private use", "ǅ Dž title case", "ﬃ ligature", "ΣΑΣ σας",
]


@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("text", TRICKY)
def test_tricky_examples(text, lowercase):
    ours, reference = tokenizers_for(lowercase)
    assert ours.token_ids([text])[0] == reference_ids(reference, text)


def test_batch_and_pairs_equal_reference():
    ours, reference = tokenizers_for(True)
    assert ours.token_ids(TRICKY) == [e.ids for e in reference.encode_batch(TRICKY, add_special_tokens=False)]
    pairs = list(zip(TRICKY, reversed(TRICKY)))
    reference.enable_truncation(16, strategy="longest_first")
    try:
        expected = [(e.ids, e.type_ids) for e in reference.encode_batch(pairs)]
    finally:
        reference.no_truncation()
    assert [(ids, types) for ids, types, _ in ours.encode(pairs, 16)] == expected
    assert ours.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    with pytest.raises(ValueError, match="backend"):
        WordPieceTokenizer(["[UNK]", "[CLS]", "[SEP]"], backend="tokenizers")


def test_tokenizer_errors():
    with pytest.raises(RuntimeModelError, match="twice"):
        WordPieceTokenizer(["[UNK]", "[CLS]", "[SEP]", "a", "a"])
    with pytest.raises(RuntimeModelError, match="special"):
        WordPieceTokenizer(["[UNK]", "a"])
    tok = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"], backend="python")
    with pytest.raises(RuntimeModelError, match="string"):
        tok.token_ids([b"bytes"])
    with pytest.raises(RuntimeModelError, match="max_length"):
        tok.encode([("a", "a")], 3)
    assert tok.encode(["a a a a"], 3) == [([2, 4, 3], [0, 0, 0], True)]
