"""The fuzzing regression corpus stays fixed (see tools/fuzz.py and tests/fuzz_corpus/README.md).

tests/fuzz_corpus/reader/: every model file that found a bug, and hand-made hostile headers (huge
shapes, overlapping and overflowing offsets, non-UTF-8 and deeply nested JSON, duplicate keys, NaN
where a string or integer belongs). Each one goes through read_safetensors() and load(): success or
RuntimeModelError only, never more than O(file size) of memory (the fuzzer's bound).
tests/fuzz_corpus/tokenizer/cases.jsonl: texts that broke the WordPiece tokenizer: no exception, ids
in range, the `tokenizers` backend agreeing with the pure-Python one."""
import functools
import json
import tracemalloc
from pathlib import Path

import pytest

from minitinybert import runtime
from minitinybert.runtime import RuntimeModelError, WordPieceTokenizer

CORPUS = Path(__file__).parent / "fuzz_corpus"
FILES = sorted((CORPUS / "reader").glob("*.safetensors"))
CASES = [json.loads(line) for line in (CORPUS / "tokenizer" / "cases.jsonl").read_text().splitlines() if line]
ALLOC_PER_BYTE, ALLOC_SLACK = 64, 2 * 2 ** 20          # as tools/fuzz.py
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdx.,") + ["##" + c for c in "abcdx"] + ["café"]


def test_corpus_is_there():
    names = {p.name for p in FILES}
    assert len(FILES) >= 40 and "nasty-labels-default-million.safetensors" in names
    assert len(CASES) >= 3


def load_or_refuse(fn, path):
    """(loaded?, peak bytes allocated) of fn(path); any exception but RuntimeModelError propagates."""
    tracemalloc.start()
    try:
        try:
            result = fn(path)
            loaded = True
        except RuntimeModelError:
            result, loaded = None, False
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if loaded and isinstance(result, runtime.RuntimeModel):
        try:                                     # a loaded model also runs (or refuses the input)
            result.predict(["abc, d"]) if result.num_labels else result.embed(["abc, d"])
        except RuntimeModelError:
            pass
    return loaded, peak


@pytest.mark.parametrize("path", FILES, ids=[p.name[:-len(".safetensors")] for p in FILES])
def test_reader_and_load_refuse_or_succeed_within_file_size(path):
    size = path.stat().st_size
    bound = ALLOC_PER_BYTE * size + ALLOC_SLACK
    read_ok, read_peak = load_or_refuse(runtime.read_safetensors, path)
    load_ok, load_peak = load_or_refuse(lambda p: runtime.load(p, tokenizer="python", kernels="numpy"), path)
    assert read_ok or not load_ok                # load reads through read_safetensors
    assert read_peak <= bound and load_peak <= bound, f"{read_peak} / {load_peak} bytes for a {size}-byte file"


def test_default_label_names_need_a_head_the_file_can_hold():
    # found by review, kept as a nasty file: num_labels 10**6 with no label names made a million
    # "LABEL_i" strings (120 MB) for a 4 KB file before the tensors were checked
    with pytest.raises(RuntimeModelError, match="too small"):
        runtime.load(CORPUS / "reader" / "nasty-labels-default-million.safetensors")


@functools.lru_cache(maxsize=None)
def bert_vocab():
    from minitinybert.engine.teacher import resolve_teacher
    with open(resolve_teacher(None) / "vocab.txt", encoding="utf-8") as f:
        return tuple(line.rstrip("\r\n") for line in f)


def huggingface_wordpiece(tokens, lower):
    """The `tokenizers` library's BERT WordPiece on the same vocabulary: the independent reference."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = Tokenizer(WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=runtime.MAX_WORD_CHARS))
    tk.add_special_tokens([t for t in runtime.SPECIAL_TOKENS if t in vocab])
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                               lowercase=lower)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tk


@pytest.mark.parametrize("vocab", ["tiny", "bert"])
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_tokenizer_cases(case, vocab):
    pytest.importorskip("tokenizers")
    tokens = TINY_VOCAB if vocab == "tiny" else bert_vocab()
    python = WordPieceTokenizer(tokens, case["lower"], backend="python")
    reference = huggingface_wordpiece(tokens, case["lower"])
    text, pair, max_length = case["text"], case["pair"], case["max_length"]
    assert isinstance(python.normalize(text), str)
    for t in (text, pair or ""):
        ids = python.token_ids([t])[0]
        assert all(0 <= i < len(tokens) for i in ids)
        # lone surrogates are dropped by the runtime (the reference raises TypeError on them)
        clean = "".join(c for c in t if not 0xD800 <= ord(c) <= 0xDFFF)
        assert reference.encode(clean, add_special_tokens=False).ids == ids
    inputs = [text] if pair is None else [(text, pair)]
    (ids, types, _), = python.encode(inputs, max_length)
    assert ids[0] == python.cls_id and ids[-1] == python.sep_id and len(ids) <= max_length
