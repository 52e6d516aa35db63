"""minitinybert edge runtime: BERT inference from one file, on the standard library and NumPy.

    import runtime
    model = runtime.load("sst2-int8.safetensors")
    model.predict(["a gripping film", ("A man plays guitar.", "Someone makes music.")])  # texts, pairs
    # [{"label": "positive", "scores": {"negative": 0.02, "positive": 0.98}}, ...]
    model.embed(["some text"], pooling="mean")                         # (N, hidden) L2-normalised

    python runtime.py MODEL "text" ["text2" ...]     # JSON lines on stdout (stdin when no text)

Optional, same results to float rounding: Numba (GELU, layer norm, softmax, a block product of few tokens on weights
packed at load), imported in a thread at the first forward pass (~2 s, ~110 MB of LLVM; NumPy answers meanwhile);
kernels="numpy" or MINITINYBERT_NUMBA=0 keeps it off, "numba" waits for it. Forward passes run on sub-batches of
~CHUNK_TOKENS tokens in reused buffers. threads=None leaves BLAS's threads as the environment sets them; threads=N gives
one sub-batch N threads (on x86-64 Numba's, in bands of rows, for few tokens; else BLAS's), and shares a larger
batch's sub-batches among N threads of ours over single-threaded BLAS.

File format "minitinybert-runtime/1" (in full in docs/formats.md): safetensors with Hugging Face BERT tensor names and
"__metadata__" format, config (JSON), labels, vocab, do_lower_case, max_length, dtype; F32, F16 (F64, BF16 converted
at load), or I8 2-D weights with an F32 "<name>_scale" per row: w = q * scale; embedding tables also U8 (V, ceil(C/2)),
4-bit q in [-7, 7] two a byte, low nibble first, scales per row or (V, G) per ceil(C/G) values. Back-to-back query,
key, value weights are used as one (3C, C).

Numerics: float32, as the training engine (post-LN, exact erf GELU, -10000 key mask, tanh pooler); predict(),
logits(), embed(pooling="cls") run the last layer for the [CLS] positions only. float32 weights are used from the
memory map, float16 linear weights upcast at load, embedding tables kept as stored; int8 weights stay int8 (cast in
blocks into a reused float32 buffer for BLAS past KERNEL_MAX_TOKENS tokens or without Numba).
"""
from __future__ import annotations

import json
import math
import mmap
import os
import platform
import re
import sys
import threading
import unicodedata
from types import FunctionType, SimpleNamespace

import numpy as np

__all__ = ["load", "RuntimeModel", "RuntimeModelError", "WordPieceTokenizer", "read_safetensors", "FORMAT", "main"]

FORMAT, MASK_VALUE = "minitinybert-runtime/1", -10000.0
MAX_HEADER_BYTES, MAX_DIMS, MAX_DIM = 100 * 1024 * 1024, 8, 2 ** 31 - 1
SPECIAL_TOKENS, MAX_WORD_CHARS = ("[UNK]", "[SEP]", "[CLS]", "[PAD]", "[MASK]"), 100


def _can_import(name: str) -> bool:
    """Importable (found without importing it), and not turned off by MINITINYBERT_<NAME>=0."""
    from importlib.util import find_spec
    off = os.environ.get("MINITINYBERT_" + name.upper(), "1").strip().lower() in ("0", "false", "no", "off", "")
    try:
        return not off and find_spec(name) is not None
    except (ImportError, ValueError):
        return False


HAVE_NUMBA = _can_import("numba") and sys.maxsize > 2 ** 32   # 32-bit (armhf): its numba aborts at a first compile


class RuntimeModelError(ValueError):
    """A model file that cannot be used, or inputs the model cannot take: the message says which."""


def _need(ok, message):
    if not ok:
        raise RuntimeModelError(message)


# === safetensors reader ===========================================================================

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise RuntimeModelError(f"duplicate key {key!r} in the header")
        out[key] = value
    return out


def read_safetensors(path):
    """(metadata, {name: (safetensors dtype, array, file offset)}, mmap) of a safetensors file.

    Arrays are read-only views of a memory map (copied only when misaligned: their offset is then None).
    Every header field is checked before anything is mapped: a hostile header never allocates much."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RuntimeModelError(f"cannot open model file {path}: {e.strerror or e}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            _need(size >= 8, f"{path}: not a model file: {size} bytes, shorter than the 8-byte safetensors header")
            header_len = int.from_bytes(f.read(8), "little")
            if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
                raise RuntimeModelError(f"{path}: corrupt safetensors header: it claims {header_len} bytes, the "
                                        f"file has {size - 8} after the length field (limit {MAX_HEADER_BYTES})")
            raw = f.read(header_len)
        except OSError as e:
            raise RuntimeModelError(f"cannot read model file {path}: {e}") from None
        _need(len(raw) == header_len, f"{path}: truncated header")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except RuntimeModelError as e:
            raise RuntimeModelError(f"{path}: corrupt safetensors header: {e}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RuntimeModelError(f"{path}: corrupt safetensors header (not JSON: {str(e)[:200]})") from None
        _need(isinstance(header, dict), f"{path}: corrupt safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise RuntimeModelError(f"{path}: __metadata__ must map names to strings")
        data_start, data_size = 8 + header_len, size - 8 - header_len
        entries = [(name,) + _check_entry(path, name, info, data_size) for name, info in header.items()]
        # The tensors must tile the data section exactly: sorted, no overlap, no gap.
        position = 0
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
            if begin != position:
                what = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
                raise RuntimeModelError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) {what} "
                                        f"(previous tensors end at {position})")
            position = end
        _need(position == data_size, f"{path}: the tensors cover {position} data bytes, the file holds {data_size} "
              f"(truncated, or trailing bytes)")
        mm = None
        if data_size:
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise RuntimeModelError(f"cannot map model file {path}: {e}") from None
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        np_dtype, offset = np.dtype(_DTYPES[dtype]), data_start + begin
        count = (end - begin) // np_dtype.itemsize
        if count == 0:
            arr, offset = np.zeros(shape, dtype=np_dtype), None
        else:
            arr = np.frombuffer(mm, dtype=np_dtype, count=count, offset=offset).reshape(shape)
            if not arr.flags.aligned:
                arr, offset = arr.copy(), None
        tensors[name] = (dtype, arr, offset)
    return metadata, tensors, mm


def _check_entry(path, name, info, data_size):
    _need(isinstance(info, dict), f"{path}: header entry {name!r} is not an object")
    dtype = info.get("dtype")
    _need(isinstance(dtype, str) and dtype in _DTYPES, f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    shape = info.get("shape")
    ok = isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)
    _need(ok, f"{path}: tensor {name!r} has an invalid shape {str(shape)[:100]} (a list of at most {MAX_DIMS} integers "
          f"in [0, {MAX_DIM}])")
    offsets = info.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
        raise RuntimeModelError(f"{path}: tensor {name!r} has invalid data_offsets {str(offsets)[:100]}")
    begin, end = offsets
    _need(0 <= begin <= end <= data_size, f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] outside the "
          f"{data_size} data bytes of the file (truncated or corrupt)")
    _need(math.prod(d for d in shape if d) <= 2 ** 48, f"{path}: tensor {name!r} has an absurd shape {shape}")
    expected = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize   # Python ints: no overflow
    _need(expected == end - begin, f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} needs {expected} "
          f"bytes, its data_offsets span {end - begin}")
    return dtype, tuple(shape), begin, end


# === WordPiece tokenizer (equal to tokenizers' BertWordPieceTokenizer) ============================
# Character classes as tokenizers' BertNormalizer and BertPreTokenizer see them (their Unicode tables, not Python's,
# which are newer for some characters): "other" (Cc Cf Co Cs, dropped by clean-up), "Mn" (non-spacing marks, dropped by
# accent stripping) and punctuation (ASCII punctuation or Unicode P*). Hexadecimal code point ranges.

_OTHER_RANGES = """
    1-8 B-C E-1F 7F-9F AD 600-605 61C 6DD 70F 180E 200B-200F 202A-202E 2060-2064 2066-206F E000-F8FF FEFF FFF9-FFFB
    110BD 1BCA0-1BCA3 1D173-1D17A E0001 E0020-E007F F0000-FFFFD 100000-10FFFD
"""
_MN_RANGES = """
    300-33F 342 345-36F 483-487 591-5BD 5BF 5C1-5C2 5C4-5C5 5C7 610-61A 64B-65F 670 6D6-6DC 6DF-6E4 6E7-6E8 6EA-6ED 711
    730-74A 7A6-7B0 7EB-7F3 816-819 81B-823 825-827 829-82D 859-85B 8E3-902 93A 93C 941-948 94D 951-957 962-963 981 9BC
    9C1-9C4 9CD 9E2-9E3 A01-A02 A3C A41-A42 A47-A48 A4B-A4D A51 A70-A71 A75 A81-A82 ABC AC1-AC5 AC7-AC8 ACD AE2-AE3 B01
    B3C B3F B41-B44 B4D B56 B62-B63 B82 BC0 BCD C00 C3E-C40 C46-C47 C4A-C4D C55-C56 C62-C63 C81 CBC CBF CC6 CCC-CCD
    CE2-CE3 D01 D41-D44 D4D D62-D63 DCA DD2-DD4 DD6 E31 E34-E3A E47-E4E EB1 EB4-EB9 EBB-EBC EC8-ECD F18-F19 F35 F37 F39
    F71-F72 F74 F77 F79-F7E F80 F82-F84 F86-F87 F8D-F92 F94-F97 F99-F9C F9E-FA1 FA3-FA6 FA8-FAB FAD-FB8 FBA-FBC FC6
    102D-1030 1032-1037 1039-103A 103D-103E 1058-1059 105E-1060 1071-1074 1082 1085-1086 108D 109D 135D-135F 1712-1714
    1732-1734 1752-1753 1772-1773 17B4-17B5 17B7-17BD 17C6 17C9-17D3 17DD 180B-180D 18A9 1920-1922 1927-1928 1932
    1939-193B 1A17-1A18 1A1B 1A56 1A58-1A5E 1A60 1A62 1A65-1A6C 1A73-1A7C 1A7F 1AB0-1ABD 1B00-1B03 1B34 1B36-1B3A 1B3C
    1B42 1B6B-1B73 1B80-1B81 1BA2-1BA5 1BA8-1BA9 1BAB-1BAD 1BE6 1BE8-1BE9 1BED 1BEF-1BF1 1C2C-1C33 1C36-1C37 1CD0-1CD2
    1CD4-1CE0 1CE2-1CE8 1CED 1CF4 1CF8-1CF9 1DC0-1DF5 1DFC-1DFF 20D0-20DC 20E1 20E5-20F0 2CEF-2CF1 2D7F 2DE0-2DFF
    302A-302D 3099-309A A66F A674-A67D A69E-A69F A6F0-A6F1 A802 A806 A80B A825-A826 A8C4 A8E0-A8F1 A926-A92D A947-A951
    A980-A982 A9B3 A9B6-A9B9 A9BC A9E5 AA29-AA2E AA31-AA32 AA35-AA36 AA43 AA4C AA7C AAB0 AAB2-AAB4 AAB7-AAB8 AABE-AABF
    AAC1 AAEC-AAED AAF6 ABE5 ABE8 ABED FB1E FE00-FE0F FE20-FE2F 101FD 102E0 10376-1037A 10A01-10A03 10A05-10A06
    10A0C-10A0F 10A38-10A3A 10A3F 10AE5-10AE6 11001 11038-11046 1107F-11081 110B3-110B6 110B9-110BA 11100-11102
    11127-1112B 1112D 11130-11134 11173 11180-11181 111B6-111BE 111CA-111CC 1122F-11231 11234 11236-11237 112DF
    112E3-112EA 11300-11301 1133C 11340 11366-1136C 11370-11374 114B3-114B8 114BA 114BF-114C0 114C2-114C3 115B2-115B5
    115BC-115BD 115BF-115C0 115DC-115DD 11633-1163A 1163D 1163F-11640 116AB 116AD 116B0-116B5 116B7 1171D-1171F
    11722-11725 11727-1172B 16AF0-16AF4 16B30-16B36 16F8F-16F92 1BC9D-1BC9E 1D167-1D169 1D17B-1D182 1D185-1D18B
    1D1AA-1D1AD 1D242-1D244 1DA00-1DA36 1DA3B-1DA6C 1DA75 1DA84 1DA9B-1DA9F 1DAA1-1DAAF 1E8D0-1E8D6 E0100-E01EF
"""
_PUNCT_RANGES = """
    21-2F 3A-40 5B-60 7B-7E A1 A7 AB B6-B7 BB BF 37E 387 55A-55F 589-58A 5BE 5C0 5C3 5C6 5F3-5F4 609-60A 60C-60D 61B
    61E-61F 66A-66D 6D4 700-70D 7F7-7F9 830-83E 85E 964-965 970 AF0 DF4 E4F E5A-E5B F04-F12 F14 F3A-F3D F85 FD0-FD4
    FD9-FDA 104A-104F 10FB 1360-1368 1400 166D-166E 169B-169C 16EB-16ED 1735-1736 17D4-17D6 17D8-17DA 1800-180A
    1944-1945 1A1E-1A1F 1AA0-1AA6 1AA8-1AAD 1B5A-1B60 1BFC-1BFF 1C3B-1C3F 1C7E-1C7F 1CC0-1CC7 1CD3 2010-2027 2030-2043
    2045-2051 2053-205E 207D-207E 208D-208E 2308-230B 2329-232A 2768-2775 27C5-27C6 27E6-27EF 2983-2998 29D8-29DB
    29FC-29FD 2CF9-2CFC 2CFE-2CFF 2D70 2E00-2E2E 2E30-2E42 3001-3003 3008-3011 3014-301F 3030 303D 30A0 30FB A4FE-A4FF
    A60D-A60F A673 A67E A6F2-A6F7 A874-A877 A8CE-A8CF A8F8-A8FA A8FC A92E-A92F A95F A9C1-A9CD A9DE-A9DF AA5C-AA5F
    AADE-AADF AAF0-AAF1 ABEB FD3E-FD3F FE10-FE19 FE30-FE52 FE54-FE61 FE63 FE68 FE6A-FE6B FF01-FF03 FF05-FF0A FF0C-FF0F
    FF1A-FF1B FF1F-FF20 FF3B-FF3D FF3F FF5B FF5D FF5F-FF65 10100-10102 1039F 103D0 1056F 10857 1091F 1093F 10A50-10A58
    10A7F 10AF0-10AF6 10B39-10B3F 10B99-10B9C 11047-1104D 110BB-110BC 110BE-110C1 11140-11143 11174-11175 111C5-111C9
    111CD 111DB 111DD-111DF 11238-1123D 112A9 114C6 115C1-115D7 11641-11643 1173C-1173E 12470-12474 16A6E-16A6F 16AF5
    16B37-16B3B 16B44 1BC9F 1DA87-1DA8B
"""
# BertNormalizer's Chinese character blocks (spaced out as words of their own)
_CJK_RANGES = "4E00-9FFF 3400-4DBF 20000-2A6DF 2A700-2B73F 2B740-2B81F 2B920-2CEAF F900-FAFF 2F800-2FA1F"
# Unicode White_Space (Rust's char::is_whitespace) minus the control characters clean-up drops first
_SPACE_RANGES = "9-A D 20 A0 1680 2000-200A 2028-2029 202F 205F 3000"
# Lower-case mappings Rust knows (Unicode 16) for characters Python's tables may not have yet
_EXTRA_LOWER = {0x1C89: 0x1C8A, 0xA7CB: 0x264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3,
                0xA7D4: 0xA7D5, 0xA7DA: 0xA7DB, 0xA7DC: 0x19B,
                **{c: c + 0x20 for c in range(0x10D50, 0x10D66)}, **{c: c + 0x1B for c in range(0x16EA0, 0x16EB9)}}
# Canonical decompositions newer than tokenizers' tables: kept whole
_NO_DECOMPOSE = "\U00011938"


def _char_class(ranges: str) -> str:
    pairs = [(chr(int(lo, 16)), chr(int(hi or lo, 16))) for lo, _, hi in (r.partition("-") for r in ranges.split())]
    return "".join(re.escape(a) if a == b else f"{re.escape(a)}-{re.escape(b)}" for a, b in pairs)


class _Patterns:
    """Compiled once, on first use (compiling the character classes takes a few milliseconds)."""
    _lock, ready = threading.Lock(), False

    @classmethod
    def get(cls):
        with cls._lock:
            if not cls.ready:
                punct = _char_class(_PUNCT_RANGES)
                cls.drop = re.compile("[\x00\ufffd" + _char_class(_OTHER_RANGES) + "]")
                cls.space = re.compile("[" + _char_class(_SPACE_RANGES) + "]")
                cls.cjk = re.compile("[" + _char_class(_CJK_RANGES) + "]")
                cls.mn = re.compile("[" + _char_class(_MN_RANGES) + "]")
                cls.word = re.compile(f"[{punct}]|[^ {punct}]+")
                cls.ascii_clean = {**dict.fromkeys(range(32)), 9: " ", 10: " ", 13: " ", 127: None}
                cls.ready = True
        return cls


class WordPieceTokenizer:
    """BERT WordPiece, id for id as tokenizers' BertWordPieceTokenizer(vocab, lowercase=...):

    the vocabulary's special tokens ([UNK] [SEP] [CLS] [PAD] [MASK]) written in the text are kept whole; clean-up drops
    NUL, U+FFFD and control/format characters and turns whitespace into spaces; CJK ideographs become words of their
    own; with do_lower_case, NFD + removal of non-spacing marks, then per-character lower-casing; split on whitespace
    and punctuation; greedy longest-match-first WordPiece with "##" continuations, words over 100 characters -> [UNK].
    encode() adds [CLS] A [SEP] (B [SEP]), token types 0/1, and truncates longest-first. backend: "auto" = "python"."""

    # Lone surrogates (bytes decoded with surrogateescape, broken UTF-16) are not characters and
    # cannot reach Rust: both backends drop them first, as clean-up drops the other Cs characters.
    _SURROGATES = re.compile("[\ud800-\udfff]")

    def __init__(self, tokens, do_lower_case=True, backend="auto"):
        tokens, self.vocab = list(tokens), {}
        for index, token in enumerate(tokens):
            if token in self.vocab:
                raise RuntimeModelError(f"vocabulary token {token!r} appears twice (ids "
                                        f"{self.vocab[token]} and {index})")
            self.vocab[token] = index
        self.id_to_token = tokens
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        _need(not missing, f"the vocabulary lacks the special token(s) {', '.join(missing)}")
        self.do_lower_case = bool(do_lower_case)
        self.unk_id, self.cls_id, self.sep_id = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]"))
        self.pad_id = self.vocab.get("[PAD]", 0)
        self.specials = [t for t in SPECIAL_TOKENS if t in self.vocab]
        self._special_re = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len)[::-1])) + ")")
        self._max_piece = max([len(t) - 2 if t.startswith("##") else len(t) for t in tokens] + [1])
        self._cache = {}
        _need(backend in ("auto", "python"), f"backend must be 'auto' or 'python', got {backend!r}")
        self.backend = "python"

    # --- one text -> word-piece ids ------------------------------------------------------------

    def normalize(self, text: str) -> str:
        P = _Patterns.get()
        if text.isascii():
            text = text.translate(P.ascii_clean)
            return text.lower() if self.do_lower_case else text
        text = P.drop.sub("", self._SURROGATES.sub("", text))
        text = P.space.sub(" ", text)
        text = P.cjk.sub(r" \g<0> ", text)
        if self.do_lower_case:
            if _NO_DECOMPOSE[0] in text:
                text = _NO_DECOMPOSE[0].join(unicodedata.normalize("NFD", p) for p in text.split(_NO_DECOMPOSE[0]))
            else:
                text = unicodedata.normalize("NFD", text)
            text = P.mn.sub("", text)
            # per character, as Rust does: no final-sigma rule (Python's lower() has one)
            text = text.replace("\u03a3", "\u03c3").lower().translate(_EXTRA_LOWER)
        return text

    def pre_tokenize(self, text: str) -> list:
        """Words of a text (normalized, split on whitespace and punctuation)."""
        return _Patterns.get().word.findall(self.normalize(text))

    def _word_ids(self, word: str) -> list:
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        n = len(word)
        if n > MAX_WORD_CHARS:
            ids = [self.unk_id]
        else:
            vocab, ids, start = self.vocab, [], 0
            while start < n:
                end = min(n, start + self._max_piece)
                found = None
                while start < end:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    found = vocab.get(piece)
                    if found is not None:
                        break
                    end -= 1
                if found is None:
                    ids = [self.unk_id]
                    break
                ids.append(found)
                start = end
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _python_ids(self, text: str) -> list:
        out = []
        for i, part in enumerate(self._special_re.split(text) if self.specials else [text]):
            if i % 2:                                      # a special token written in the text
                out.append(self.vocab[part])
            elif part:
                for word in self.pre_tokenize(part):
                    out.extend(self._word_ids(word))
        return out

    def token_ids(self, texts) -> list:
        """Word-piece ids of each text, without special tokens and without truncation."""
        return [self._python_ids(t if t.isascii() else self._SURROGATES.sub("", t)) for t in map(_check_text, texts)]

    def tokenize(self, text: str) -> list:
        """Word-piece strings of one text (no special tokens, no truncation)."""
        return [self.id_to_token[i] for i in self.token_ids([text])[0]]

    # --- model inputs ------------------------------------------------------------------------

    def encode(self, inputs, max_length: int):
        """[(ids, type_ids, truncated)] for a list of texts or (text, pair) tuples."""
        texts, pairs = _split_inputs(inputs)
        min_length = 4 if pairs is not None else 3
        if type(max_length) is not int or max_length < min_length:
            raise RuntimeModelError(f"max_length must be an integer >= {min_length}, got {max_length!r}")
        a_ids = self.token_ids(texts)
        b_ids = self.token_ids(pairs) if pairs is not None else [None] * len(texts)
        return [self._assemble(a, b, max_length) for a, b in zip(a_ids, b_ids)]

    def _assemble(self, a, b, max_length):
        cls_, sep = self.cls_id, self.sep_id
        if b is None:
            budget = max_length - 2
            truncated = len(a) > budget
            a = a[:budget]
            return [cls_] + a + [sep], [0] * (len(a) + 2), truncated
        budget = max_length - 3
        n1, n2 = len(a), len(b)
        truncated = n1 + n2 > budget
        if truncated:                                      # tokenizers' longest_first, exactly
            short, long = sorted((n1, n2))
            long = short if short > budget else max(short, budget - short)
            if short + long > budget:
                short, long = budget // 2, budget // 2 + budget % 2
            n1, n2 = (short, long) if n1 <= n2 else (long, short)
            a, b = a[:n1], b[:n2]
        ids = [cls_] + a + [sep] + b + [sep]
        return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1), truncated


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise RuntimeModelError(f"expected a string, got {type(text).__name__}: {text!r:.80}")
    return text


def _split_inputs(inputs):
    """texts, pairs (None for single texts) from a list of strings or of (a, b) tuples."""
    inputs = [inputs] if isinstance(inputs, (str, tuple)) else list(inputs)
    _need(inputs, "no inputs: give at least one text")
    if all(isinstance(x, str) for x in inputs):
        return inputs, None
    for index, item in enumerate(inputs):
        if isinstance(item, str) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise RuntimeModelError(f"inputs mix single texts and pairs, or input {index} is not a (text, "
                                    f"pair) tuple: {item!r:.80}")
    return [_check_text(a) for a, _ in inputs], [_check_text(b) for _, b in inputs]


# === numerical kernels: NumPy, and Numba twins used when available (same results to float rounding) ===
# Activations are feature-major, (features, tokens): a linear layer is W @ X with W (out, in) as stored (the
# product OpenBLAS runs fastest here). Kernels work in place, on workspace buffers: no large allocation.

# erf(x) = x P(x^2) / Q(x^2) on [-4, 4], +-1 beyond (float32 saturates there); |error| < 7e-8 in
# exact arithmetic (the rational approximation Eigen and XLA use for float32).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_F32 = np.float32


def _erf_into(t, p, q):
    """p <- erf(t) for t clipped to [-4, 4]; t and q are overwritten."""
    np.multiply(t, t, out=q)
    p[...] = _ERF_P[0]
    for c in _ERF_P[1:]:
        p *= q
        p += c
    p *= t
    t[...], q[...] = q, _ERF_Q[0]
    for c in _ERF_Q[1:]:
        q *= t
        q += c
    p /= q


def _np_bias_gelu(h, bias, ws):
    """h <- gelu(h + bias[:, None]), exact (erf) GELU, on (F, N), in row blocks of ~64K values (cached)."""
    step = max(1, 65536 // h.shape[1])
    for r in range(0, h.shape[0], step):
        x = h[r:r + step]
        x += bias[r:r + step, None]
        t, p, q = (ws(name, x.shape) for name in ("gelu_t", "gelu_p", "gelu_q"))
        np.multiply(x, _F32(1 / math.sqrt(2)), out=t)
        np.clip(t, -4.0, 4.0, out=t)
        _erf_into(t, p, q)
        p += _F32(1.0)
        p *= _F32(0.5)
        x *= p


def _np_add_layernorm(x, residual, bias, gamma, beta, eps):
    """x <- LayerNorm over the features of (x + bias[:, None] + residual), in place on (C, N)."""
    if bias is not None:
        x += bias[:, None]
    if residual is not None:
        x += residual
    x -= x.mean(axis=0)
    x /= np.sqrt(np.einsum("ij,ij->j", x, x) * _F32(1.0 / x.shape[0]) + _F32(eps))
    x *= gamma[:, None]
    x += beta[:, None]


def _np_softmax(scores, mask_bias, scale):
    """scores (B, H, Tq, T) <- softmax(scale * scores + mask_bias[:, None, None, :]) over the last axis."""
    scores *= scale
    if mask_bias is not None:
        scores += mask_bias[:, None, None, :]
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)


def _np_int8_matmul(q, scale, x, out, ws, xt=None):
    """out <- (q * scale[:, None]) @ x: NumPy has no int8 product: blocks of ~64K weights cast into a reused buffer."""
    for r in range(0, q.shape[0], step := max(1, 65536 // q.shape[1])):
        w = ws("int8_weight", q[r:r + step].shape)
        np.copyto(w, q[r:r + step], casting="unsafe")
        np.matmul(w, x, out=out[r:r + step])
    out *= scale[:, None]


# Numba twins, compiled (cached on disk) on first use, fastmath so that LLVM vectorises them: the GELU, the layer
# norm (float64 sums), the softmax with its own vectorisable exp (Cephes' expf, relative error ~1e-7), int8 product.

def _nb_bias_gelu(h, bias):
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            u = h[i, j] + bias[i]
            t = min(max(u * np.float32(0.7071067811865476), np.float32(-4.0)), np.float32(4.0))
            t2, p, q = t * t, np.float32(_ERF_P[0]), np.float32(_ERF_Q[0])
            for c in _ERF_P[1:]:
                p = p * t2 + np.float32(c)
            for c in _ERF_Q[1:]:
                q = q * t2 + np.float32(c)
            h[i, j] = np.float32(0.5) * u * (np.float32(1.0) + t * p / q)


def _nb_add_layernorm(x, residual, bias, gamma, beta, eps):
    c, n = x.shape
    mean, var = np.zeros(n), np.zeros(n)
    for i in range(c):
        for j in range(n):
            x[i, j] += bias[i] + residual[i, j]
            mean[j] += x[i, j]
    mean /= c
    for i in range(c):
        for j in range(n):
            var[j] += (x[i, j] - mean[j]) ** 2
    var = 1.0 / np.sqrt(var / c + eps)
    for i in range(c):
        for j in range(n):
            x[i, j] = (x[i, j] - mean[j]) * var[j] * gamma[i] + beta[i]


def _nb_softmax(scores, mask_bias, use_mask, scale):
    nb, nh, nt, ns = scores.shape
    bits = np.empty(ns, np.int32)
    pow2 = bits.view(np.float32)
    for b in range(nb):
        for h in range(nh):
            for r in range(nt):
                row = scores[b, h, r]
                for j in range(ns):
                    row[j] = row[j] * scale + (mask_bias[b, j] if use_mask else np.float32(0.0))
                m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = row[0]   # eight running maxima: one is a chain
                j = 0                                          # of dependent compares, not vectorised
                while j + 8 <= ns:
                    m0, m1, m2, m3 = max(m0, row[j]), max(m1, row[j + 1]), max(m2, row[j + 2]), max(m3, row[j + 3])
                    m4, m5, m6, m7 = max(m4, row[j + 4]), max(m5, row[j + 5]), max(m6, row[j + 6]), max(m7, row[j + 7])
                    j += 8
                m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
                for j in range(j, ns):
                    m = max(m, row[j])
                for j in range(ns):         # exp(x) = 2^k exp(x - k ln 2), x <= 0; exp(< -87) = 0
                    x = max(row[j] - m, np.float32(-87.0))
                    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
                    y = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
                    p = np.float32(1.9875691500e-4)
                    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
                        p = p * y + np.float32(c)
                    row[j] = (p * y * y + y + np.float32(1.0)) * np.float32(row[j] - m >= np.float32(-87.0))
                    bits[j] = (np.int32(k) + np.int32(127)) << 23      # 2^k as float32 bits
                row *= pow2
                row *= np.float32(1.0) / row.sum()


def _nb_block_product(w, xt, scale, out):
    """out (O, N) <- scale[:, None] * (w @ xt.T)[:O, :N]: w (>= O, I) float32 or int8 (converted in registers), xt
    (>= N, I) tokens (I: a multiple of 16, zero-padded, for no scalar tail); blocks of 4 rows x 4 tokens."""
    (O, N), I, z = out.shape, w.shape[1], np.float32(0.0)
    for o in range(0, O, 4):
        w0, w1, w2, w3 = w[o], w[min(o + 1, O - 1)], w[min(o + 2, O - 1)], w[min(o + 3, O - 1)]
        for n in range(0, N, 4):                  # 16 accumulators: 8 loads for 16 FMAs
            x0, x1, x2, x3 = xt[n], xt[min(n + 1, N - 1)], xt[min(n + 2, N - 1)], xt[min(n + 3, N - 1)]
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
            for i in range(I):
                u0, u1, u2, u3 = np.float32(w0[i]), np.float32(w1[i]), np.float32(w2[i]), np.float32(w3[i])
                v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                a00, a01, a02, a03 = a00 + u0 * v0, a01 + u0 * v1, a02 + u0 * v2, a03 + u0 * v3
                a10, a11, a12, a13 = a10 + u1 * v0, a11 + u1 * v1, a12 + u1 * v2, a13 + u1 * v3
                a20, a21, a22, a23 = a20 + u2 * v0, a21 + u2 * v1, a22 + u2 * v2, a23 + u2 * v3
                a30, a31, a32, a33 = a30 + u3 * v0, a31 + u3 * v1, a32 + u3 * v2, a33 + u3 * v3
            for r, b in enumerate(((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23),
                                   (a30, a31, a32, a33))):
                for k in range(min(4, N - n) if o + r < O else 0):
                    out[o + r, n + k] = b[k] * scale[o + r]


def _nb_block_bands(w, xt, scale, out, parts):
    """_nb_block_product on `parts` bands of rows (multiples of 4), compiled with prange: a band per Numba thread."""
    step = (-(-out.shape[0] // parts) + 3) // 4 * 4
    for p in _prange(parts):                      # (range in Python; numba.prange in the compiled kernel)
        r0, r1 = min(p * step, out.shape[0]), min((p + 1) * step, out.shape[0])
        _block_product(w[r0:r1], xt, scale[r0:r1], out[r0:r1])


_prange, _block_product = range, _nb_block_product


class _Kernels:
    """The steps of a layer besides BLAS's products: NumPy by default, Numba twins when enabled (block_product: products
    of up to KERNEL_MAX_TOKENS tokens on weights packed at load; block_bands: the same on N threads, or None)."""
    numba, lock = [], threading.Lock()          # Numba's kernels, loaded once per process (or [None]: it cannot)

    @staticmethod
    def block_input(x, ws):
        """x (I, N) as the block kernels read it, (N, I padded to 16) zeros past I; None past KERNEL_MAX_TOKENS."""
        if x.shape[1] <= KERNEL_MAX_TOKENS:
            xt = ws("block_x", (x.shape[1], -(-x.shape[0] // 16) * 16))
            xt[:, x.shape[0]:] = 0.0
            return np.copyto(xt[:, :x.shape[0]], x.T) or xt

    def __init__(self):
        self.name, self.block_bands, self.int8_matmul, self.int8_input = "numpy", None, _np_int8_matmul, lambda *_: None
        self.bias_gelu, self.add_layernorm, self.softmax = _np_bias_gelu, _np_add_layernorm, _np_softmax

    def use_numba(self) -> bool:
        """Switch to the Numba kernels (compiled or cache-loaded once per process); False if Numba cannot build them."""
        with _Kernels.lock:
            for cache in (True, False) if not _Kernels.numba else ():   # a stale disk cache must not break us
                try:
                    import numba
                    fast = numba.njit(cache=cache, nogil=True, error_model="numpy", fastmath=True)
                    fns = (fast(_nb_bias_gelu), numba.njit(cache=cache, nogil=True, error_model="numpy")(
                        _nb_add_layernorm), fast(_nb_softmax), fast(_nb_block_product))
                    x, v, o = np.ones((2, 16), _F32), np.ones(2, _F32), np.empty((2, 2), _F32)   # compile (or load)
                    fns[0](x, v), fns[1](x, x.copy(), v, v, v, 1e-12), fns[3](x, x, v, o)
                    fns[2](np.ones((1, 1, 2, 2), _F32), np.zeros((1, 2), _F32), True, _F32(1.0))
                    fns[3](x.astype(np.int8), x, v, o)
                    bands = None            # the block kernel in bands on Numba's threads: x86-64 only (arm64's 0.56
                    try:                    # segfaults at any parallel kernel under qemu), not on its workqueue layer
                        if platform.machine() in ("x86_64", "AMD64"):                   # (two callers abort it)
                            bands = numba.njit(cache=cache, nogil=True, parallel=True)(FunctionType(
                                _nb_block_bands.__code__, dict(globals(), _prange=numba.prange, _block_product=fns[3])))
                            bands(x, x, v, o, 2), bands(x.astype(np.int8), x, v, o, 2)
                            bands, _Kernels.pid = bands if numba.threading_layer() != "workqueue" else None, os.getpid()
                    except Exception:  # noqa: BLE001    (no threading layer, say: the block kernel alone)
                        bands = None
                    _Kernels.numba.append(fns + (bands,))
                    break
                except Exception:  # noqa: BLE001
                    continue
            if (_Kernels.numba or _Kernels.numba.append(None) or _Kernels.numba)[0] is None:
                return False
        gelu, addln, softmax, self.block_product, self.block_bands = _Kernels.numba[0]
        no_mask = np.zeros((1, 0), _F32)
        self.name, self.add_layernorm, self.int8_input = "numba", addln, self.block_input
        self.bias_gelu, self.softmax = (lambda h, bias, ws: gelu(h, bias)), (lambda s, mask_bias, scale: softmax(
            s, no_mask if mask_bias is None else mask_bias, mask_bias is not None, scale))
        return True


def kernel_set(name: str):
    """The kernels forward passes run, "numpy" or "numba" (None if Numba cannot build them), for tests and tools."""
    return kernels if (kernels := _Kernels()) and (name == "numpy" or kernels.use_numba()) else None


_BLAS_SETTERS = []


def set_blas_threads(n: int) -> bool:
    """Set the thread count of NumPy's OpenBLAS (process-wide; Linux, bundled or system). True if done."""
    if not _BLAS_SETTERS:
        import ctypes
        try:
            with open("/proc/self/maps") as f:
                paths = dict.fromkeys(line.split()[-1] for line in f if "openblas" in line.lower())
        except OSError:
            paths = {}
        for lib in (ctypes.CDLL(path) for path in paths if os.path.isfile(path)):
            _BLAS_SETTERS.extend([getattr(lib, name) for name in ("scipy_openblas_set_num_threads64_",
                                  "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
                                  "openblas_set_num_threads") if hasattr(lib, name)][:1])
        _BLAS_SETTERS.append(None)                # searched
    for fn in _BLAS_SETTERS[:-1]:
        fn(int(n))
    return len(_BLAS_SETTERS) > 1


# === the model ====================================================================================

KERNEL_MAX_TOKENS = INT8_KERNEL_MAX_TOKENS = 32   # Numba's block kernel serves int8 weights up to this many tokens,
F32_KERNEL_MAX_TOKENS = 12      # float32 from 2 to this many: BLAS wins at 1 and from 16, on 1 and 2 threads (measured)
CHUNK_TOKENS = 512              # a forward pass runs on sub-batches of about this many tokens
SHARD_MIN_TOKENS = 256          # threads=N shares batches of at least this many tokens among N threads


def workspace():
    """ws(name, shape): float32 buffers reused across layers and calls (growing as needed); one per thread."""
    buffers = {}

    def ws(name, shape):
        size = math.prod(shape)
        if name not in buffers or buffers[name].size < size:
            buffers[name] = np.empty(size, _F32)
        return buffers[name][:size].reshape(shape)
    return ws


def _embedding_rows(table, ids, width):
    """Float32 rows (a new array), `width` wide, of an embedding: (array as stored, float, int8 or uint8 of 4-bit pairs;
    scales (R,) or (R, G) or None; (file descriptor, offset) to read the rows with pread, not from the map, or None)."""
    array, scale, source = table
    if source is None:
        rows = array[ids]
    else:
        unique, inverse = np.unique(ids, return_inverse=True)
        raw = b"".join(os.pread(source[0], array.strides[0], source[1] + int(i) * array.strides[0]) for i in unique)
        rows = np.frombuffer(raw, array.dtype).reshape(-1, array.shape[1])[inverse.reshape(ids.shape)]
    if rows.dtype == np.uint8:     # 4-bit: nibbles, low first, sign-extended; an odd width's last one is padding
        rows = ((np.stack((rows & 15, rows >> 4), -1).view(np.int8) ^ 8) - 8).reshape(*ids.shape, -1)[..., :width]
    if scale is None or scale.ndim == 1:
        return rows.astype(_F32, copy=False) if scale is None else rows * scale[ids][..., None]
    return rows * np.repeat(scale[ids].astype(_F32), -(-width // scale.shape[1]), axis=-1)[..., :width]   # groups


class RuntimeModel:
    """A loaded model: predict(), embed(), tokenize(), forward(). See load()."""

    def __init__(self, path, metadata, tensors, mm, tokenizer_backend="auto", kernels="auto", threads=None):
        _need(kernels in ("auto", "numpy", "numba"), f"kernels must be 'auto', 'numpy' or 'numba', got {kernels!r}")
        _need(threads is None or type(threads) is int and threads > 0, f"threads must be None or > 0: {threads!r}")
        self.path, self._mm, self._lock = os.fspath(path), mm, threading.RLock()
        tokens = self._parse_metadata(metadata)
        self.tokenizer = WordPieceTokenizer(tokens, self.do_lower_case, backend=tokenizer_backend)
        self._build(tensors)
        self._kernel_choice, self._kernels, self._loader, self.threads = kernels, None, None, threads
        self._workspaces, self._executor, self._parts = [workspace() for _ in range(threads or 1)], None, 1

    # --- metadata and tensors -------------------------------------------------------------------

    def _parse_metadata(self, meta):
        """Checks the metadata and sets config, labels, ...; returns the vocabulary."""
        def need(ok, message):
            _need(ok, f"{self.path}: {message}")

        need(meta.get("format") == FORMAT, f"not a minitinybert runtime model (metadata format "
             f"{meta.get('format')!r}, expected {FORMAT!r}); export one with python -m minitinybert.export")
        for key in ("config", "labels", "vocab", "do_lower_case", "max_length"):
            need(key in meta, f"metadata lacks {key!r}")
        try:
            cfg, labels = json.loads(meta["config"]), json.loads(meta["labels"])
        except (ValueError, RecursionError) as e:
            raise RuntimeModelError(f"{self.path}: metadata config/labels are not valid JSON ({str(e)[:99]})") from None
        need(isinstance(cfg, dict), "metadata config is not a JSON object")
        for key, limit in dict(vocab_size=10 ** 7, hidden_size=65536, num_hidden_layers=1024, num_attention_heads=4096,
                               intermediate_size=10 ** 6, max_position_embeddings=10 ** 6,
                               type_vocab_size=10 ** 6).items():
            need(type(cfg.get(key)) is int and 1 <= cfg[key] <= limit,
                 f"config {key} must be an integer in [1, {limit}], got {cfg.get(key)!r}")
        n = cfg.get("num_labels", 0)
        need(type(n) is int and 0 <= n <= 10 ** 6, f"config num_labels must be an integer >= 0, got {n!r}")
        eps = cfg.get("layer_norm_eps", 1e-12)
        need(type(eps) in (int, float) and 0 < eps < 1, f"config layer_norm_eps must be a small positive number, "
                                                        f"got {eps!r}")
        need(cfg["hidden_size"] % cfg["num_attention_heads"] == 0, f"hidden_size {cfg['hidden_size']} is not "
             f"divisible by num_attention_heads {cfg['num_attention_heads']}")
        need((act := cfg.get("hidden_act", "gelu")) in ("gelu", "gelu_python"), f"hidden_act {act!r}: not erf GELU")
        problem = "embedding" if n == 0 else "regression" if n == 1 else "single_label_classification"
        need(cfg.get("problem_type") in (None, "", problem), f"problem_type {cfg.get('problem_type')!r} for {n} labels")
        need(isinstance(labels, list) and all(isinstance(x, str) for x in labels), "labels must be a list of strings")
        # default names only for a head the file can hold (a row takes >= 2 bytes): not a million strings for a lie
        need(labels or n < 2 or 2 * n <= (len(self._mm) if self._mm is not None else 0),
             f"config num_labels {n}: the file is too small for a classifier of that many rows")
        labels = (labels or [f"LABEL_{i}" for i in range(n)]) if n >= 2 else []
        need(len(labels) == len(set(labels)) == (n if n >= 2 else 0), f"{len(labels)} distinct label names for "
                                                                     f"{n} classes")
        tokens = meta["vocab"].split("\n")
        need(len(tokens) == cfg["vocab_size"], f"the vocabulary has {len(tokens)} tokens, config vocab_size is "
                                               f"{cfg['vocab_size']}")
        lower = meta["do_lower_case"].strip().lower()
        need(lower in ("true", "false"), f"do_lower_case must be 'true' or 'false', got {meta['do_lower_case']!r}")
        max_length = int(meta["max_length"]) if re.fullmatch(r"\s*\d{1,9}\s*", meta["max_length"]) else -1
        need(3 <= max_length <= cfg["max_position_embeddings"], f"max_length must be an integer in "
             f"[3, {cfg['max_position_embeddings']}], got {meta['max_length']!r}")
        self.config = dict(cfg, num_labels=n, layer_norm_eps=float(eps), problem_type=problem)
        self.labels, self.num_labels, self.problem_type, self.dtype = labels, n, problem, meta.get("dtype", "")
        self.do_lower_case, self.max_length = lower == "true", max_length
        self.pooling, self.normalize = meta.get("pooling", "mean"), meta.get("normalize", "true") == "true"
        need(self.pooling in ("mean", "cls", "cls_token"), f"pooling {self.pooling!r} is not mean, cls or cls_token")
        return tokens

    def _build(self, tensors):
        cfg, path, self._denses = self.config, self.path, []   # denses: linear layers
        C, F = cfg["hidden_size"], cfg["intermediate_size"]

        def get(name, shape, bits=0):
            """(array as stored: float, I8 (bits 8, 4) or U8 4-bit pairs (bits 4); scales (R,) or U8's (R, G); None)"""
            _need(name in tensors, f"{path}: missing tensor {name!r}")
            (dtype, array, _), (R, width) = tensors[name], shape + (0,) * (2 - len(shape))
            shape = (R, (width + 1) // 2) if (packed := bits == 4 and dtype == "U8") else shape  # 2 a byte
            _need(array.shape == shape, f"{path}: tensor {name!r} has shape {array.shape}, the config says {shape}"
                  + (" (U8: two 4-bit values a byte)" if packed else ""))
            if dtype == "I8" and bits or packed:
                if packed and (G := tensors.get(name + "_scale", (0, np.empty(0)))[1].shape[1:]):   # group scales
                    _need(G[0] > 0 and -(-width // -(-width // G[0])) == G[0], f"{path}: tensor {name + '_scale'!r}:"
                          f" {G[0]} groups do not split rows of {width} (G groups of ceil({width} / G) values)")
                scale = get(name + "_scale", (R, G[0]))[0] if packed and G else vec(name + "_scale", R)
                _need(np.all(np.isfinite(scale)), f"{path}: tensor {name + '_scale'!r} holds NaN or infinite values")
                return array, scale
            _need(dtype in ("F32", "F16", "F64", "BF16"), f"{path}: tensor {name!r} has dtype {dtype}, expected "
                  f"F32, F16" + {8: " or I8", 4: ", I8 or U8"}.get(bits, " (int8 is for 2-D weights only)"))
            return (array.astype(np.uint32) << 16).view(_F32) if dtype == "BF16" else array, None

        def vec(name, n):                  # biases, norms, scales: tiny, copied (one type for the kernels)
            return np.array(get(name, (n,))[0], dtype=_F32)

        def dense(prefix, out_f, in_f, parts=("",)):
            """A linear layer; query, key and value parts as one product (in place if back to back)."""
            names = [f"{prefix}{x}weight" for x in parts]
            got = [get(n, (out_f, in_f), bits=8) for n in names]
            if any(s is None for _, s in got):     # float (or mixed) parts: float32
                weights, scales = [w.astype(_F32, copy=False) if s is None else w * s[:, None] for w, s in got], None
            else:
                weights, scales = [w for w, _ in got], [s for _, s in got]
            offsets = [tensors[n][2] for n in names]
            if len(names) > 1 and all(w is tensors[n][1] for w, n in zip(weights, names)) and None not in offsets \
                    and all(o == offsets[0] + i * weights[0].nbytes for i, o in enumerate(offsets)):
                weight = np.frombuffer(self._mm, weights[0].dtype, len(names) * weights[0].size,
                                       offsets[0]).reshape(-1, in_f)
            else:
                weight = weights[0] if len(names) == 1 else np.concatenate(weights)
            bias = np.concatenate([vec(f"{prefix}{x}bias", out_f) for x in parts])
            return self._denses.append(SimpleNamespace(weight=weight, bias=bias, packed=None,
                                                       scale=scales and np.concatenate(scales))) or self._denses[-1]

        # embedding tables stay as stored (float16, int8, 4-bit): only the rows used are converted, the word table's
        tables = (("word", "vocab_size"), ("position", "max_position_embeddings"), ("token_type", "type_vocab_size"))
        self._embeddings = [get(f"embeddings.{n}_embeddings.weight", (cfg[s], C), bits=4) + (None,) for n, s in tables]
        if hasattr(os, "pread") and (offset := tensors["embeddings.word_embeddings.weight"][2]) is not None:
            self._file = open(path, "rb")   # read with pread: random rows from the map would fault in whole pages
            self._embeddings[0] = (*self._embeddings[0][:2], (self._file.fileno(), offset))
        self._emb_ln = vec("embeddings.LayerNorm.weight", C), vec("embeddings.LayerNorm.bias", C)
        self._layers = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            self._layers.append(SimpleNamespace(
                qkv=dense(p + "attention.self.", C, C, parts=("query.", "key.", "value.")),
                attn_out=dense(p + "attention.output.dense.", C, C),
                ln1=(vec(f"{p}attention.output.LayerNorm.weight", C), vec(f"{p}attention.output.LayerNorm.bias", C)),
                inter=dense(p + "intermediate.dense.", F, C), out=dense(p + "output.dense.", C, F),
                ln2=(vec(p + "output.LayerNorm.weight", C), vec(p + "output.LayerNorm.bias", C))))
        self._pooler = dense("pooler.dense.", C, C)
        self._classifier = dense("classifier.", self.num_labels, C) if self.num_labels else None
        proj = tensors.get("embedding_projection.weight")     # a Dense after pooling (distilled embedding models)
        self._projection = dense("embedding_projection.", proj[1].shape[0] if proj[1].ndim else 0, C) if proj else None

    @property
    def kernels(self) -> str:
        """"numba" or "numpy": what the forward passes use once Numba's kernels are loaded (waits for them)."""
        with self._lock:
            self._settle(wait=True)
            return self._kernels.name

    def _settle(self, wait=False):
        """NumPy's kernels from the first forward pass; Numba's ("auto": loaded in a thread, so that a fresh process
        does not wait ~2 s) from the first pass after they are loaded, the weights then packed for the block kernel."""
        if self._kernels is None:
            self._kernels, choice = _Kernels(), self._kernel_choice
            if choice == "numba" or choice == "auto" and HAVE_NUMBA:   # (loaded once per process: a later model's
                self._loader = threading.Thread(target=_Kernels().use_numba, daemon=True)   # thread finds them)
                self._loader.start()
        if self._loader is not None and (wait or self._kernel_choice == "numba" or _Kernels.numba):
            self._loader = None
            if (kernels := _Kernels()).use_numba():       # (waits for the thread)
                for d in self._denses:             # our copy in the block kernel's layout: inputs zero-padded to 16
                    d.packed = np.pad(d.weight, ((0, 0), (0, -d.weight.shape[1] % 16)))
                    d.packed_scale = np.ones(d.weight.shape[0], _F32) if d.scale is None else d.scale
                self._kernels = kernels
            _need(kernels.name == "numba" or self._kernel_choice == "auto", "kernels='numba', but Numba cannot load")

    # --- forward -------------------------------------------------------------------------------

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, hidden=True):
        """(B, T) ids -> dict(hidden (B, T, C), pooled (B, C), logits (B, K) or None), float32. hidden=False
        runs the last layer for the [CLS] positions only (all the pooler and head read) and returns hidden None."""
        cfg, ids = self.config, np.asarray(input_ids)
        _need(ids.ndim == 2 and ids.size and np.issubdtype(ids.dtype, np.integer),
              f"input_ids must be a non-empty (batch, tokens) integer array, got {ids.dtype} {ids.shape}")
        (B, T), C, K = ids.shape, cfg["hidden_size"], self.num_labels
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        _need(types.shape == ids.shape == mask.shape, f"token_type_ids {types.shape}, attention_mask {mask.shape}: not "
              f"input_ids' shape {ids.shape}")
        _need(T <= (P := cfg["max_position_embeddings"]), f"{T} tokens exceed max_position_embeddings {P}")
        _need(0 <= ids.min() and ids.max() < cfg["vocab_size"], f"token ids must lie in [0, {cfg['vocab_size']})")
        _need(0 <= types.min() and types.max() < (V := cfg["type_vocab_size"]), f"token type ids must lie in [0, {V})")
        out = {"hidden": np.empty((B, T, C), _F32) if hidden else None, "pooled": np.empty((B, C), _F32),
               "logits": np.empty((B, K), _F32) if K else None}
        ids, types = ids.astype(np.intp, copy=False), types.astype(np.intp, copy=False)

        def run(rows, ws):                        # sequences rows[0]:rows[1] into `out`
            r = slice(*rows)
            x, cls = self._encode(ids[r], types[r], mask[r], ws, all_positions=hidden)
            if hidden:
                out["hidden"][r] = x.T.reshape(-1, T, C)
            pooled = self._product(self._pooler, cls, ws("pooled", cls.shape), ws)
            pooled += self._pooler.bias[:, None]
            out["pooled"][r] = np.tanh(pooled, out=pooled).T
            if K:
                logits = self._product(self._classifier, pooled, ws("logits", (K, cls.shape[1])), ws)
                out["logits"][r] = (logits + self._classifier.bias[:, None]).T

        with self._lock:
            self._settle()                        # Numba's kernels once loaded
            threads = self.threads or 1
            rows = max(1, CHUNK_TOKENS // T)      # sub-batches: bounded memory
            rows = min(rows, -(-B // threads)) if threads > 1 and B > 1 and B * T >= SHARD_MIN_TOKENS else rows
            chunks = [(b, min(b + rows, B)) for b in range(0, B, rows)]
            few = KERNEL_MAX_TOKENS if self._denses[0].scale is not None else F32_KERNEL_MAX_TOKENS  # the kernel's
            self._parts = threads if len(chunks) == 1 and T <= few and self._kernels.block_bands \
                and os.getpid() == _Kernels.pid else 1    # one sub-batch of few tokens: Numba's threads, in bands
            if self.threads:     # else BLAS's split one sub-batch (not while Numba loads in our thread); ours, several
                set_blas_threads(threads if len(chunks) == 1 and not self._loader and self._parts == 1 else 1)
            if threads == 1 or len(chunks) == 1:
                for chunk in chunks:
                    run(chunk, self._workspaces[0])
            else:                                 # one sub-batch at a time per thread, on single-threaded BLAS
                self._share(lambda i, ws: run(chunks[i], ws), len(chunks))
        return out

    def _share(self, fn, count):
        """fn(i, ws) for i < count, each of the model's threads (own workspaces; the caller too) taking the next i."""
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(len(self._workspaces) - 1, thread_name_prefix="minitinybert-runtime")
        pieces = iter(range(count))

        def work(ws):
            for i in pieces:                      # next() on a shared iterator is atomic under the GIL
                fn(i, ws)

        helpers = [self._executor.submit(work, ws) for ws in self._workspaces[1:count]]
        work(self._workspaces[0])
        [helper.result() for helper in helpers]

    def _product(self, dense, x, out, ws, rows=None):
        """out <- W[r0:r1] @ x, no bias: Numba's block kernel on the weight packed at load, in the pass's bands if any
        (float32: 2 to F32_KERNEL_MAX_TOKENS tokens); else BLAS (int8, row scales: on the weight cast in blocks)."""
        r0, r1, n = *(rows or (0, dense.weight.shape[0])), x.shape[1]
        if dense.packed is not None and (dense.scale is not None or 1 < n <= F32_KERNEL_MAX_TOKENS) and (
                xt := self._kernels.int8_input(x, ws)) is not None:
            args, K = (dense.packed[r0:r1], xt, dense.packed_scale[r0:r1], out), self._kernels
            K.block_bands(*args, self._parts) if self._parts > 1 else K.block_product(*args)
        elif dense.scale is None:
            np.matmul(dense.weight[r0:r1], x, out=out)
        else:
            _np_int8_matmul(dense.weight[r0:r1], dense.scale[r0:r1], x, out, ws)
        return out

    def _encode(self, ids, types, mask, ws, all_positions=True):
        """(last hidden states feature-major (C, B*T), column b*T + t, or None; [CLS] states (C, B)).
        all_positions=False runs the last layer for the [CLS] queries only."""
        (B, T), C = ids.shape, self.config["hidden_size"]
        emb = sum(_embedding_rows(table, i, C) for table, i in zip(self._embeddings, (ids, np.arange(T), types)))
        np.copyto(x := ws("hidden0", (C, B * T)), emb.reshape(B * T, C).T)
        _np_add_layernorm(x, None, None, *self._emb_ln, self.config["layer_norm_eps"])
        mask_bias = None if np.all(mask != 0) else (mask == 0).astype(_F32) * _F32(MASK_VALUE)
        for i, layer in enumerate(self._layers):
            cls_only = i == len(self._layers) - 1 and not all_positions
            x = self._layer(layer, x, B, T, mask_bias, ws, "cls" if cls_only else f"hidden{(i + 1) % 2}", cls_only)
        return (x, np.ascontiguousarray(x[:, ::T])) if all_positions else (None, x)   # (BLAS: contiguous)

    def _layer(self, layer, x, B, T, mask_bias, ws, out_name, cls_only=False):
        """One post-LN encoder layer on feature-major x (C, B*T) -> (C, B*T), or (C, B) for the
        [CLS] positions only (their queries; keys and values of all positions)."""
        cfg, K, product = self.config, self._kernels, self._product
        C, H, F, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"], cfg["layer_norm_eps"]
        D, N, Tq = C // H, B * T, 1 if cls_only else T
        if cls_only:
            np.copyto(x_q := ws("x_cls", (C, B)), x[:, ::T])
            q = product(layer.qkv, x_q, ws("q", (C, B)), ws, rows=(0, C))
            kv = product(layer.qkv, x, ws("kv", (2 * C, N)), ws, rows=(C, 3 * C))
            q += layer.qkv.bias[:C, None]
            kv += layer.qkv.bias[C:, None]
        else:
            x_q, qkv = x, product(layer.qkv, x, ws("qkv", (3 * C, N)), ws)     # (3C, N): q, k, v
            qkv += layer.qkv.bias[:, None]
            q, kv = qkv[:C], qkv[C:]
        q_heads = q.reshape(H, D, B, Tq).transpose(2, 0, 3, 1)                  # (B, H, Tq, D)
        k_heads, v_heads = kv.reshape(2, H, D, B, T).transpose(0, 3, 1, 2, 4)   # (B, H, D, T) each
        scores = np.matmul(q_heads, k_heads, out=ws("scores", (B, H, Tq, T)))   # softmax(q k^T / sqrt D)
        K.softmax(scores, mask_bias, _F32(1.0 / math.sqrt(D)))
        ctx = ws("ctx", (C, B * Tq))                                          # ctx^T = v^T P^T, in place
        np.matmul(v_heads, scores.swapaxes(-1, -2), out=ctx.reshape(H, D, B, Tq).transpose(2, 0, 1, 3))
        a = product(layer.attn_out, ctx, ws("attn", ctx.shape), ws)
        K.add_layernorm(a, x_q, layer.attn_out.bias, *layer.ln1, eps)
        h = product(layer.inter, a, ws("ffn", (F, a.shape[1])), ws)
        K.bias_gelu(h, layer.inter.bias, ws)
        y = product(layer.out, h, ws(out_name, a.shape), ws)
        K.add_layernorm(y, a, layer.out.bias, *layer.ln2, eps)
        return y

    # --- tokenization, batching and the public API --------------------------------------------------

    def _check_max_length(self, max_length):
        limit = self.config["max_position_embeddings"]
        _need(max_length is None or type(max_length) is int and 3 <= max_length <= limit,
              f"max_length must be an integer in [3, {limit}], got {max_length!r}")
        return self.max_length if max_length is None else max_length

    def tokenize(self, inputs, max_length=None):
        """Padded model inputs: dict(input_ids, token_type_ids, attention_mask: (B, T) int64; truncated: (B,) bool)."""
        return self._pad(self.tokenizer.encode(inputs, self._check_max_length(max_length)))

    def _pad(self, encoded):
        shape = (len(encoded), max(len(ids) for ids, _, _ in encoded))
        ids, types, mask = (np.full(shape, value, np.int64) for value in (self.tokenizer.pad_id, 0, 0))
        for row, (i, t, _) in enumerate(encoded):
            ids[row, :len(i)], types[row, :len(t)], mask[row, :len(i)] = i, t, 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                "truncated": np.array([tr for _, _, tr in encoded], bool)}

    def _run(self, inputs, batch_size, max_length, want):
        """Outputs of `want` ("logits", "mean" or "pooled") per input, in input order: inputs are
        sorted by length into buckets of batch_size, each padded only to its own longest."""
        _need(type(batch_size) is int and batch_size >= 1, f"batch_size must be a positive integer, got {batch_size!r}")
        encoded = self.tokenizer.encode(inputs, self._check_max_length(max_length))
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        results = [None] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = self._pad([encoded[i] for i in chunk])
            out = self.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                               hidden=want in ("mean", "first"))
            out["first"] = out["hidden"][:, 0] if want == "first" else None
            if want == "mean":
                m = batch["attention_mask"].astype(_F32)[:, :, None]
                out["mean"] = (out["hidden"] * m).sum(axis=1) / m.sum(axis=1)
            for row, index in enumerate(chunk):
                results[index] = out[want][row]
        return np.stack(results).astype(_F32, copy=False), [e[2] for e in encoded]

    def logits(self, inputs, batch_size=32, max_length=None) -> np.ndarray:
        """(N, num_labels) raw head outputs (for evaluation)."""
        _need(self._classifier, f"{self.path} is an embedding model without a task head: use embed()")
        return self._run(inputs, batch_size, max_length, "logits")[0]

    def predict(self, inputs, batch_size=32, max_length=None, return_truncated=False):
        """Texts or (text, pair) tuples -> [{"label", "scores": {label: probability}}] for classifiers,
        [{"score"}] for regression models; in input order. A single text or pair may be given bare."""
        _need(self._classifier, f"{self.path} is an embedding model without a task head: use embed()")
        logits, truncated = self._run(inputs, batch_size, max_length, "logits")
        if self.num_labels == 1:
            out = [{"score": float(row[0])} for row in logits]
        else:
            z = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
            z /= z.sum(axis=1, keepdims=True)
            out = [{"label": self.labels[int(np.argmax(row))], "scores": dict(zip(self.labels, row.tolist()))}
                   for row in z]
        return (out, truncated) if return_truncated else out

    def embed(self, inputs, pooling=None, batch_size=32, max_length=None, normalize=None) -> np.ndarray:
        """(N, D) sentence embeddings as the file's metadata says (pooling, projection, normalize; default mean, L2),
        unless given: pooling "mean" (of the last hidden states over real tokens), "cls_token" (the [CLS] state)
        or "cls" (the pooler output, tanh(W h_CLS + b)); normalize False: no L2 normalisation."""
        pooling = pooling or self.pooling
        want = {"mean": "mean", "cls_token": "first", "cls": "pooled", "pooler": "pooled"}.get(pooling)
        _need(want, f"pooling must be 'mean', 'cls' or 'cls_token', got {pooling!r}")
        vectors = self._run(inputs, batch_size, max_length, want)[0]
        if self._projection is not None and pooling == self.pooling:
            p = self._projection                         # int8: per-row scales, as every linear weight
            vectors = vectors @ (p.weight if p.scale is None else p.weight * p.scale[:, None]).T + p.bias
        if self.normalize if normalize is None else normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), _F32(1e-12))
        return vectors

    def __repr__(self):
        return f"RuntimeModel({self.path!r}, {self.problem_type}, labels={self.labels}, dtype={self.dtype or '?'})"


def load(path, tokenizer="auto", kernels="auto", threads=None) -> RuntimeModel:
    """A runtime model from its file. `tokenizer`: "auto" | "python"; `kernels`: "auto" (Numba when available) |
    "numpy" | "numba"; `threads`: None (BLAS's threads, as the environment sets them) or N (see the top)."""
    metadata, tensors, mm = read_safetensors(path)
    return RuntimeModel(path, metadata, tensors, mm, tokenizer_backend=tokenizer, kernels=kernels, threads=threads)


# === script mode ==================================================================================

def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="runtime.py", description="Run a minitinybert runtime model: one JSON line "
                                     "per input; texts from the arguments, else stdin lines (TAB: a sentence pair)")
    parser.add_argument("model", help="the runtime model file")
    parser.add_argument("texts", nargs="*", help="texts to classify (or embed)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--pooling", choices=("mean", "cls", "cls_token"), help="embedding pooling (default: the file's)")
    parser.add_argument("--embed", action="store_true", help="sentence embeddings, also from a model with a task head")
    args = parser.parse_intermixed_args(argv)
    try:
        try:
            lines = list(args.texts) or sys.stdin.buffer.read().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise RuntimeModelError(f"stdin is not UTF-8 text ({e.reason} at byte {e.start})") from None
        inputs = lines if args.texts else [tuple(x.split("\t", 1)) if "\t" in x else x for x in lines if x.strip()]
        if not inputs:
            raise RuntimeModelError("no input texts (give them as arguments or on stdin)")
        model = load(args.model, kernels="auto" if len(inputs) >= 64 else "numpy")
        options = dict(batch_size=args.batch_size, max_length=args.max_length)
        results = model.predict(inputs, **options) if model.num_labels and not args.embed else [
            {"embedding": [round(float(v), 6) for v in row]} for row in model.embed(inputs, args.pooling, **options)]
    except RuntimeModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for item, result in zip(inputs, results):
            record = {"text": item[0], "text_pair": item[1]} if isinstance(item, tuple) else {"text": item}
            print(json.dumps({**record, **result}, ensure_ascii=False))
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

