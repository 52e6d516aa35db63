"""minitinybert edge runtime: BERT inference from one file, on the standard library and NumPy.

Copy this file next to a model file onto any machine with Python >= 3.9 and NumPy:

    import runtime
    model = runtime.load("sst2-int8.safetensors")
    model.predict(["a gripping film", "dull and lifeless"])
    # [{"label": "positive", "scores": {"negative": 0.02, "positive": 0.98}}, ...]
    model.predict([("A man plays guitar.", "Someone makes music.")])   # sentence pairs
    model.embed(["some text"], pooling="mean")                         # (N, hidden) L2-normalised

    python runtime.py MODEL "text" ["text2" ...]     # JSON lines on stdout (stdin when no text)

Nothing else is required. Two optional speed-ups are used when importable, with the same results
(to float rounding): Numba (fused bias + GELU, residual + layer norm and masked softmax kernels,
vectorised; imported and loaded from its on-disk cache at the first forward pass, not at load,
because importing Numba alone takes ~0.3 s) and `tokenizers` (the Rust WordPiece; the built-in one
gives the same ids). load(..., kernels="numpy", tokenizer="python") or the environment variables
MINITINYBERT_NUMBA=0 / MINITINYBERT_TOKENIZERS=0 keep them off; script mode skips Numba for fewer
than 64 texts, where its import costs more than it saves (it also adds ~120 MB of resident
memory: LLVM). Threads: by default one Python thread, and BLAS threads as OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS say; load(..., threads=N) runs the runtime's own N threads over
single-threaded BLAS calls (set process-wide through OpenBLAS's API when it can be found), which
degrades gracefully when other processes hold the cores, where OpenBLAS's threads can stall.
A model is safe to share between threads (forward passes are serialised).

Model file format ("minitinybert-runtime/1")
--------------------------------------------
A safetensors file: 8-byte little-endian header length N, N bytes of JSON header (padded with
spaces), then the tensor bytes. The header's "__metadata__" holds (all values are strings):
  format         "minitinybert-runtime/1"
  config         JSON: vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
                 intermediate_size, max_position_embeddings, type_vocab_size, layer_norm_eps,
                 hidden_act ("gelu", exact erf), num_labels (0 embedding model, 1 regression,
                 >= 2 classes), problem_type ("single_label_classification", "regression" or
                 "embedding")
  labels         JSON list of the class names in id order ([] for regression / embedding models)
  vocab          the WordPiece vocabulary, tokens joined by "\\n" (line number = id)
  do_lower_case  "true" or "false" (lower-case + NFD accent stripping)
  max_length     default truncation length in tokens, [CLS] and [SEP]s included
  dtype          informational: "float32", "float16" or "int8"
Tensors use Hugging Face BERT names without prefix: embeddings.{word,position,token_type}_embeddings
.weight, embeddings.LayerNorm.{weight,bias}, encoder.layer.L.attention.self.{query,key,value}.
{weight,bias}, encoder.layer.L.attention.output.dense.{weight,bias}, ...attention.output.LayerNorm.*,
...intermediate.dense.*, ...output.dense.*, ...output.LayerNorm.*, pooler.dense.*, classifier.*
(with a head). Linear weights are (out, in). Dtypes: F32; F16 (computed in float32; F64 and BF16
are read too, converted at load); I8 for 2-D
weights, with a F32 "<name>_scale" of one scale per row (per output channel for linear layers, per
token for embeddings), symmetric: w = q * scale, scale = max|w_row| / 127. When a layer's query,
key and value weights (and biases, and scales) lie back to back in the file, the runtime uses them
as one fused (3C, C) matrix straight from the memory map; otherwise it concatenates them once.

Numerics: float32 throughout, as the training engine (post-LN BERT, exact erf GELU, additive
-10000 key mask, tanh pooler). Activations are feature-major (features, tokens), so that a linear
layer is W @ X with W as stored, the product OpenBLAS runs fastest at these sizes. predict(),
logits() and embed(pooling="cls") compute the last layer for the [CLS] positions only (all that the
pooler reads), a fifth less work for a 4-layer model, same outputs. Weight storage: float32 tensors are used in place from the memory
map (no copy at load; pages are read on first use). float16 linear weights are upcast to float32
once at load (measured: upcasting per product made batch 1x128 1.5x and 1x32 2x slower; float16
is a download-size format), float16 embedding tables stay float16 (only the gathered rows are
converted). int8 weights stay int8 in memory: each product dequantizes its (out, in) weight into
one shared float32 scratch buffer (q * scale, a single pass) and calls BLAS (measured cost vs
float32: +2 % at 1x128, +18 % at 1x32, none at 32x128). Keeping float32 copies would undo
the 4x memory saving, and integer products in NumPy do not use BLAS.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import re
import sys
import threading
import unicodedata

import numpy as np

__all__ = ["load", "RuntimeModel", "RuntimeModelError", "WordPieceTokenizer", "read_safetensors",
           "FORMAT", "main"]

FORMAT = "minitinybert-runtime/1"
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_DIMS = 8
MAX_DIM = 2 ** 31 - 1
MASK_VALUE = -10000.0
SPECIAL_TOKENS = ("[UNK]", "[SEP]", "[CLS]", "[PAD]", "[MASK]")
MAX_WORD_CHARS = 100


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off", "")


def _can_import(name: str) -> bool:
    if not _env_flag("MINITINYBERT_" + name.upper()):
        return False
    try:
        from importlib.util import find_spec
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# Optional speed-ups, detected at import without importing them (Numba alone costs ~0.3 s).
HAVE_NUMBA = _can_import("numba")
HAVE_TOKENIZERS = _can_import("tokenizers")


class RuntimeModelError(ValueError):
    """A model file that cannot be used, or inputs the model cannot take: the message says which."""


# =================================================================================================
# safetensors reader
# =================================================================================================

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

    Arrays are read-only views of a memory map (copied only when misaligned: their offset is then
    None). Every header field is
    checked before anything is mapped, so a hostile header can never cause a large allocation."""
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RuntimeModelError(f"cannot open model file {path}: {e.strerror or e}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise RuntimeModelError(f"{path}: not a model file: {size} bytes, shorter than the "
                                        f"8-byte safetensors header length")
            header_len = int.from_bytes(f.read(8), "little")
            if header_len > size - 8 or header_len > MAX_HEADER_BYTES:
                raise RuntimeModelError(f"{path}: corrupt safetensors header: it claims {header_len} bytes, the "
                                        f"file has {size - 8} after the length field (limit {MAX_HEADER_BYTES})")
            raw = f.read(header_len)
        except OSError as e:
            raise RuntimeModelError(f"cannot read model file {path}: {e}") from None
        if len(raw) != header_len:
            raise RuntimeModelError(f"{path}: truncated header")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except RuntimeModelError as e:
            raise RuntimeModelError(f"{path}: corrupt safetensors header: {e}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RuntimeModelError(f"{path}: corrupt safetensors header (not JSON: {str(e)[:200]})") from None
        if not isinstance(header, dict):
            raise RuntimeModelError(f"{path}: corrupt safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise RuntimeModelError(f"{path}: __metadata__ must map names to strings")
        data_start = 8 + header_len
        data_size = size - data_start
        entries = []
        for name, info in header.items():
            entries.append((name,) + _check_entry(path, name, info, data_size))
        # The tensors must tile the data section exactly: sorted, no overlap, no gap.
        position = 0
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
            if begin != position:
                what = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
                raise RuntimeModelError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) {what} "
                                        f"(previous tensors end at {position})")
            position = end
        if position != data_size:
            raise RuntimeModelError(f"{path}: the tensors cover {position} data bytes, the file holds "
                                    f"{data_size} (truncated, or trailing bytes)")
        mm = None
        if data_size:
            try:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as e:
                raise RuntimeModelError(f"cannot map model file {path}: {e}") from None
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        np_dtype = np.dtype(_DTYPES[dtype])
        count = (end - begin) // np_dtype.itemsize
        offset = data_start + begin
        if count == 0:
            arr, offset = np.zeros(shape, dtype=np_dtype), None
        else:
            arr = np.frombuffer(mm, dtype=np_dtype, count=count, offset=offset).reshape(shape)
            if not arr.flags.aligned:
                arr, offset = arr.copy(), None
        tensors[name] = (dtype, arr, offset)
    return metadata, tensors, mm


def _check_entry(path, name, info, data_size):
    if not isinstance(info, dict):
        raise RuntimeModelError(f"{path}: header entry {name!r} is not an object")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise RuntimeModelError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    shape = info.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
        raise RuntimeModelError(f"{path}: tensor {name!r} has an invalid shape {str(shape)[:100]} "
                                f"(a list of at most {MAX_DIMS} integers in [0, {MAX_DIM}])")
    offsets = info.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
        raise RuntimeModelError(f"{path}: tensor {name!r} has invalid data_offsets {str(offsets)[:100]}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise RuntimeModelError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] outside the "
                                f"{data_size} data bytes of the file (truncated or corrupt)")
    if math.prod(d for d in shape if d) > 2 ** 48:
        raise RuntimeModelError(f"{path}: tensor {name!r} has an absurd shape {shape}")
    expected = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize   # Python ints: no overflow
    if expected != end - begin:
        raise RuntimeModelError(f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} needs "
                                f"{expected} bytes, its data_offsets span {end - begin}")
    return dtype, tuple(shape), begin, end


# =================================================================================================
# WordPiece tokenizer (equal to tokenizers' BertWordPieceTokenizer)
# =================================================================================================
# Character classes as tokenizers' BertNormalizer and BertPreTokenizer see them (their Unicode
# tables, not Python's, which are newer for some characters): "other" (Cc Cf Co Cs, dropped by
# clean-up), "Mn" (non-spacing marks, dropped by accent stripping) and punctuation (ASCII
# punctuation or Unicode P*). Hexadecimal code point ranges.

_OTHER_RANGES = """
    1-8 B-C E-1F 7F-9F AD 600-605 61C 6DD 70F 180E 200B-200F 202A-202E 2060-2064 2066-206F
    E000-F8FF FEFF FFF9-FFFB 110BD 1BCA0-1BCA3 1D173-1D17A E0001 E0020-E007F F0000-FFFFD
    100000-10FFFD
"""
_MN_RANGES = """
    300-33F 342 345-36F 483-487 591-5BD 5BF 5C1-5C2 5C4-5C5 5C7 610-61A 64B-65F 670 6D6-6DC
    6DF-6E4 6E7-6E8 6EA-6ED 711 730-74A 7A6-7B0 7EB-7F3 816-819 81B-823 825-827 829-82D 859-85B
    8E3-902 93A 93C 941-948 94D 951-957 962-963 981 9BC 9C1-9C4 9CD 9E2-9E3 A01-A02 A3C A41-A42
    A47-A48 A4B-A4D A51 A70-A71 A75 A81-A82 ABC AC1-AC5 AC7-AC8 ACD AE2-AE3 B01 B3C B3F B41-B44
    B4D B56 B62-B63 B82 BC0 BCD C00 C3E-C40 C46-C47 C4A-C4D C55-C56 C62-C63 C81 CBC CBF CC6
    CCC-CCD CE2-CE3 D01 D41-D44 D4D D62-D63 DCA DD2-DD4 DD6 E31 E34-E3A E47-E4E EB1 EB4-EB9
    EBB-EBC EC8-ECD F18-F19 F35 F37 F39 F71-F72 F74 F77 F79-F7E F80 F82-F84 F86-F87 F8D-F92
    F94-F97 F99-F9C F9E-FA1 FA3-FA6 FA8-FAB FAD-FB8 FBA-FBC FC6 102D-1030 1032-1037 1039-103A
    103D-103E 1058-1059 105E-1060 1071-1074 1082 1085-1086 108D 109D 135D-135F 1712-1714
    1732-1734 1752-1753 1772-1773 17B4-17B5 17B7-17BD 17C6 17C9-17D3 17DD 180B-180D 18A9
    1920-1922 1927-1928 1932 1939-193B 1A17-1A18 1A1B 1A56 1A58-1A5E 1A60 1A62 1A65-1A6C
    1A73-1A7C 1A7F 1AB0-1ABD 1B00-1B03 1B34 1B36-1B3A 1B3C 1B42 1B6B-1B73 1B80-1B81 1BA2-1BA5
    1BA8-1BA9 1BAB-1BAD 1BE6 1BE8-1BE9 1BED 1BEF-1BF1 1C2C-1C33 1C36-1C37 1CD0-1CD2 1CD4-1CE0
    1CE2-1CE8 1CED 1CF4 1CF8-1CF9 1DC0-1DF5 1DFC-1DFF 20D0-20DC 20E1 20E5-20F0 2CEF-2CF1 2D7F
    2DE0-2DFF 302A-302D 3099-309A A66F A674-A67D A69E-A69F A6F0-A6F1 A802 A806 A80B A825-A826
    A8C4 A8E0-A8F1 A926-A92D A947-A951 A980-A982 A9B3 A9B6-A9B9 A9BC A9E5 AA29-AA2E AA31-AA32
    AA35-AA36 AA43 AA4C AA7C AAB0 AAB2-AAB4 AAB7-AAB8 AABE-AABF AAC1 AAEC-AAED AAF6 ABE5 ABE8
    ABED FB1E FE00-FE0F FE20-FE2F 101FD 102E0 10376-1037A 10A01-10A03 10A05-10A06 10A0C-10A0F
    10A38-10A3A 10A3F 10AE5-10AE6 11001 11038-11046 1107F-11081 110B3-110B6 110B9-110BA
    11100-11102 11127-1112B 1112D 11130-11134 11173 11180-11181 111B6-111BE 111CA-111CC
    1122F-11231 11234 11236-11237 112DF 112E3-112EA 11300-11301 1133C 11340 11366-1136C
    11370-11374 114B3-114B8 114BA 114BF-114C0 114C2-114C3 115B2-115B5 115BC-115BD 115BF-115C0
    115DC-115DD 11633-1163A 1163D 1163F-11640 116AB 116AD 116B0-116B5 116B7 1171D-1171F
    11722-11725 11727-1172B 16AF0-16AF4 16B30-16B36 16F8F-16F92 1BC9D-1BC9E 1D167-1D169
    1D17B-1D182 1D185-1D18B 1D1AA-1D1AD 1D242-1D244 1DA00-1DA36 1DA3B-1DA6C 1DA75 1DA84
    1DA9B-1DA9F 1DAA1-1DAAF 1E8D0-1E8D6 E0100-E01EF
"""
_PUNCT_RANGES = """
    21-2F 3A-40 5B-60 7B-7E A1 A7 AB B6-B7 BB BF 37E 387 55A-55F 589-58A 5BE 5C0 5C3 5C6
    5F3-5F4 609-60A 60C-60D 61B 61E-61F 66A-66D 6D4 700-70D 7F7-7F9 830-83E 85E 964-965 970 AF0
    DF4 E4F E5A-E5B F04-F12 F14 F3A-F3D F85 FD0-FD4 FD9-FDA 104A-104F 10FB 1360-1368 1400
    166D-166E 169B-169C 16EB-16ED 1735-1736 17D4-17D6 17D8-17DA 1800-180A 1944-1945 1A1E-1A1F
    1AA0-1AA6 1AA8-1AAD 1B5A-1B60 1BFC-1BFF 1C3B-1C3F 1C7E-1C7F 1CC0-1CC7 1CD3 2010-2027
    2030-2043 2045-2051 2053-205E 207D-207E 208D-208E 2308-230B 2329-232A 2768-2775 27C5-27C6
    27E6-27EF 2983-2998 29D8-29DB 29FC-29FD 2CF9-2CFC 2CFE-2CFF 2D70 2E00-2E2E 2E30-2E42
    3001-3003 3008-3011 3014-301F 3030 303D 30A0 30FB A4FE-A4FF A60D-A60F A673 A67E A6F2-A6F7
    A874-A877 A8CE-A8CF A8F8-A8FA A8FC A92E-A92F A95F A9C1-A9CD A9DE-A9DF AA5C-AA5F AADE-AADF
    AAF0-AAF1 ABEB FD3E-FD3F FE10-FE19 FE30-FE52 FE54-FE61 FE63 FE68 FE6A-FE6B FF01-FF03
    FF05-FF0A FF0C-FF0F FF1A-FF1B FF1F-FF20 FF3B-FF3D FF3F FF5B FF5D FF5F-FF65 10100-10102
    1039F 103D0 1056F 10857 1091F 1093F 10A50-10A58 10A7F 10AF0-10AF6 10B39-10B3F 10B99-10B9C
    11047-1104D 110BB-110BC 110BE-110C1 11140-11143 11174-11175 111C5-111C9 111CD 111DB
    111DD-111DF 11238-1123D 112A9 114C6 115C1-115D7 11641-11643 1173C-1173E 12470-12474
    16A6E-16A6F 16AF5 16B37-16B3B 16B44 1BC9F 1DA87-1DA8B
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
    parts = []
    for item in ranges.split():
        lo, _, hi = item.partition("-")
        lo_c, hi_c = chr(int(lo, 16)), chr(int(hi or lo, 16))
        parts.append(re.escape(lo_c) if lo_c == hi_c else f"{re.escape(lo_c)}-{re.escape(hi_c)}")
    return "".join(parts)


class _Patterns:
    """Compiled once, on first use (compiling the character classes takes a few milliseconds)."""
    _lock = threading.Lock()
    ready = False

    @classmethod
    def get(cls):
        if not cls.ready:
            with cls._lock:
                if not cls.ready:
                    punct = _char_class(_PUNCT_RANGES)
                    cls.drop = re.compile("[\x00\ufffd" + _char_class(_OTHER_RANGES) + "]")
                    cls.space = re.compile("[" + _char_class(_SPACE_RANGES) + "]")
                    cls.cjk = re.compile("[" + _char_class(_CJK_RANGES) + "]")
                    cls.mn = re.compile("[" + _char_class(_MN_RANGES) + "]")
                    cls.word = re.compile(f"[{punct}]|[^ {punct}]+")
                    cls.ascii_clean = {c: None for c in range(32) if chr(c) not in "\t\n\r"}
                    cls.ascii_clean.update({9: " ", 10: " ", 13: " ", 127: None})
                    cls.ready = True
        return cls


class WordPieceTokenizer:
    """BERT WordPiece, id for id as tokenizers' BertWordPieceTokenizer(vocab, lowercase=...):

    the vocabulary's special tokens ([UNK] [SEP] [CLS] [PAD] [MASK]) written in the text are kept
    whole; clean-up drops NUL, U+FFFD and control/format characters and turns whitespace into
    spaces; CJK ideographs become words of their own; with do_lower_case, NFD + removal of
    non-spacing marks, then per-character lower-casing; split on whitespace and punctuation;
    greedy longest-match-first WordPiece with "##" continuations, words over 100 characters ->
    [UNK]. encode() adds [CLS] A [SEP] (B [SEP]) with token types 0/1 and truncates longest-first.
    `backend`: "auto" (tokenizers when importable), "python" or "tokenizers"."""

    # Lone surrogates (bytes decoded with surrogateescape, broken UTF-16) are not characters and
    # cannot reach Rust: both backends drop them first, as clean-up drops the other Cs characters.
    _SURROGATES = re.compile("[\ud800-\udfff]")

    def __init__(self, tokens, do_lower_case=True, backend="auto"):
        tokens = list(tokens)
        self.vocab = {}
        for index, token in enumerate(tokens):
            if token in self.vocab:
                raise RuntimeModelError(f"vocabulary token {token!r} appears twice (ids "
                                        f"{self.vocab[token]} and {index})")
            self.vocab[token] = index
        self.id_to_token = tokens
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise RuntimeModelError(f"the vocabulary lacks the special token(s) {', '.join(missing)}")
        self.do_lower_case = bool(do_lower_case)
        self.unk_id, self.cls_id, self.sep_id = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]"))
        self.pad_id = self.vocab.get("[PAD]", 0)
        self.specials = [t for t in SPECIAL_TOKENS if t in self.vocab]
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.specials, key=len,
                                                                                    reverse=True)) + ")")
        self._max_piece = max([len(t) - 2 if t.startswith("##") else len(t) for t in tokens] + [1])
        self._cache = {}
        if backend not in ("auto", "python", "tokenizers"):
            raise ValueError(f"backend must be 'auto', 'python' or 'tokenizers', got {backend!r}")
        if backend == "tokenizers" and not HAVE_TOKENIZERS:
            raise RuntimeModelError("the tokenizers package is not available")
        self.backend = "tokenizers" if backend == "tokenizers" or (backend == "auto" and HAVE_TOKENIZERS) else "python"
        self._hf = None

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

    def _hf_tokenizer(self):
        if self._hf is None:
            from tokenizers import Tokenizer, normalizers, pre_tokenizers
            from tokenizers.models import WordPiece
            tk = Tokenizer(WordPiece(vocab=self.vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS))
            tk.add_special_tokens(self.specials)
            tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                       strip_accents=None, lowercase=self.do_lower_case)
            tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            self._hf = tk
        return self._hf

    def token_ids(self, texts) -> list:
        """Word-piece ids of each text, without special tokens and without truncation."""
        texts = [t if t.isascii() else self._SURROGATES.sub("", t) for t in map(_check_text, texts)]
        if self.backend == "tokenizers" and texts:
            try:
                hf = self._hf_tokenizer()
            except Exception:  # noqa: BLE001 - a broken install: the built-in tokenizer gives the same ids
                self.backend = "python"
            else:
                return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        return [self._python_ids(t) for t in texts]

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
            swap = n1 > n2
            if swap:
                n1, n2 = n2, n1
            n2 = n1 if n1 > budget else max(n1, budget - n1)
            if n1 + n2 > budget:
                n1 = budget // 2
                n2 = n1 + budget % 2
            if swap:
                n1, n2 = n2, n1
            a, b = a[:n1], b[:n2]
        ids = [cls_] + a + [sep] + b + [sep]
        return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1), truncated


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise RuntimeModelError(f"expected a string, got {type(text).__name__}: {text!r:.80}")
    return text


def _split_inputs(inputs):
    """texts, pairs (None for single texts) from a list of strings or of (a, b) tuples."""
    if isinstance(inputs, (str, tuple)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise RuntimeModelError("no inputs: give at least one text")
    is_pair = [not isinstance(x, str) for x in inputs]
    if not any(is_pair):
        return inputs, None
    texts, pairs = [], []
    for index, item in enumerate(inputs):
        if isinstance(item, str) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise RuntimeModelError(f"inputs mix single texts and pairs, or input {index} is not a (text, "
                                    f"pair) tuple: {item!r:.80}")
        texts.append(_check_text(item[0]))
        pairs.append(_check_text(item[1]))
    return texts, pairs


# =================================================================================================
# numerical kernels: NumPy, and Numba twins used when available
# =================================================================================================

# erf(x) = x P(x^2) / Q(x^2) on [-4, 4], +-1 beyond (float32 saturates there); |error| < 7e-8
# in exact arithmetic (the rational approximation Eigen and XLA use for float32).
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_F32 = np.float32
_ERF_P32 = tuple(_F32(c) for c in _ERF_P)
_ERF_Q32 = tuple(_F32(c) for c in _ERF_Q)


def erf(x):
    """Vectorised erf in NumPy (float32 in, float32 out; float64 evaluation for other inputs)."""
    x = np.asarray(x)
    dt = np.float32 if x.dtype == np.float32 else np.float64
    P = _ERF_P32 if dt is np.float32 else _ERF_P
    Q = _ERF_Q32 if dt is np.float32 else _ERF_Q
    x = np.clip(x, -4.0, 4.0).astype(dt, copy=False)
    x2 = x * x
    p = np.full_like(x2, P[0])
    for c in P[1:]:
        p *= x2
        p += c
    q = np.full_like(x2, Q[0])
    for c in Q[1:]:
        q *= x2
        q += c
    p *= x
    p /= q
    return p


# Activations are kept feature-major, (features, tokens): a linear layer is then W @ X with the
# weight as stored (out, in), the product OpenBLAS runs fastest at these shapes (10-45 % faster
# than X @ W^T at 32-128 tokens), and per-feature biases are column vectors.

def _np_bias_gelu(x, bias):
    """x <- gelu(x + bias[:, None]), exact (erf) GELU, in place on a float32 (F, N) array (or rows of one)."""
    x += bias[:, None]
    t = x * _F32(1.0 / math.sqrt(2.0))
    np.clip(t, -4.0, 4.0, out=t)
    t2 = t * t
    p = np.full_like(t2, _ERF_P32[0])
    for c in _ERF_P32[1:]:
        p *= t2
        p += c
    q = np.full_like(t2, _ERF_Q32[0])
    for c in _ERF_Q32[1:]:
        q *= t2
        q += c
    p *= t
    p /= q                       # erf(x / sqrt 2)
    p += _F32(1.0)
    p *= _F32(0.5)
    x *= p
    return x


def _np_add_layernorm(x, residual, bias, gamma, beta, eps, j0=0, j1=None):
    """x <- LayerNorm over the features of (x + bias[:, None] + residual), in place on (C, N) (on its
    columns j0:j1 only, if given); residual and bias may be None."""
    if j0 != 0 or (j1 is not None and j1 != x.shape[1]):
        out = x[:, j0:j1]
        _np_add_layernorm(out, None if residual is None else residual[:, j0:j1], bias, gamma, beta, eps)
        return x
    if bias is not None:
        x += bias[:, None]
    if residual is not None:
        x += residual
    mean = x.mean(axis=0)
    x -= mean
    var = np.einsum("ij,ij->j", x, x)
    var *= _F32(1.0 / x.shape[0])
    var += _F32(eps)
    np.sqrt(var, out=var)
    x /= var
    x *= gamma[:, None]
    x += beta[:, None]
    return x


def _np_softmax(scores, mask_bias):
    """scores (B, H, T, T) <- softmax(scores + mask_bias[:, None, None, :]) over the last axis."""
    if mask_bias is not None:
        scores += mask_bias[:, None, None, :]
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


# Plain Python bodies of the Numba kernels: compiled (and cached on disk) on first use, with
# fastmath so that LLVM vectorises them: the GELU in float32 (the same rational erf), the layer
# norm accumulating in float64, the softmax with its own vectorisable float32 exp (Cephes' expf
# polynomial, relative error ~1e-7; a scalar exp call per element would make it 3x slower than
# NumPy's SIMD exp).

def _nb_bias_gelu(x, bias):
    f, n = x.shape
    for i in range(f):
        b = bias[i]
        for j in range(n):
            u = x[i, j] + b
            t = min(max(u * np.float32(0.7071067811865476), np.float32(-4.0)), np.float32(4.0))
            t2 = t * t
            p = np.float32(-2.72614225801306e-10)
            p = p * t2 + np.float32(2.77068142495902e-08)
            p = p * t2 + np.float32(-2.10102402082508e-06)
            p = p * t2 + np.float32(-5.69250639462346e-05)
            p = p * t2 + np.float32(-7.34990630326855e-04)
            p = p * t2 + np.float32(-2.95459980854025e-03)
            p = p * t2 + np.float32(-1.60960333262415e-02)
            q = np.float32(-1.45660718464996e-05)
            q = q * t2 + np.float32(-2.13374055278905e-04)
            q = q * t2 + np.float32(-1.68282697438203e-03)
            q = q * t2 + np.float32(-7.37332916720468e-03)
            q = q * t2 + np.float32(-1.42647390514189e-02)
            x[i, j] = np.float32(0.5) * u * (np.float32(1.0) + t * p / q)


def _nb_softmax(scores, mask_bias, use_mask):
    nb, nh, nt, ns = scores.shape
    bits = np.empty(ns, np.int32)
    pow2 = bits.view(np.float32)
    for b in range(nb):
        for h in range(nh):
            for r in range(nt):
                row = scores[b, h, r]
                if use_mask:
                    for j in range(ns):
                        row[j] += mask_bias[b, j]
                m = row[0]
                for j in range(ns):
                    m = max(m, row[j])
                for j in range(ns):                 # exp(x) = 2^k exp(x - k ln 2), x <= 0
                    x = row[j] - m
                    keep = np.float32(x >= np.float32(-87.0))   # exp(< -87) is 0 (as NumPy's, below 1e-38)
                    x = max(x, np.float32(-87.0))
                    k = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
                    y = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
                    p = np.float32(1.9875691500e-4)
                    p = p * y + np.float32(1.3981999507e-3)
                    p = p * y + np.float32(8.3334519073e-3)
                    p = p * y + np.float32(4.1665795894e-2)
                    p = p * y + np.float32(1.6666665459e-1)
                    p = p * y + np.float32(5.0000001201e-1)
                    row[j] = (p * y * y + y + np.float32(1.0)) * keep
                    bits[j] = (np.int32(k) + np.int32(127)) << 23      # 2^k as float32 bits
                total = np.float32(0.0)
                for j in range(ns):
                    v = row[j] * pow2[j]
                    row[j] = v
                    total += v
                inv = np.float32(1.0) / total
                for j in range(ns):
                    row[j] *= inv


def _nb_add_layernorm(x, residual, bias, gamma, beta, eps, j0, j1):
    """Columns j0:j1 of x (C, N): x <- LayerNorm over features of (x + bias + residual)."""
    c = x.shape[0]
    n = j1 - j0
    mean = np.zeros(n)
    var = np.zeros(n)
    for i in range(c):
        b = bias[i]
        for j in range(n):
            v = x[i, j0 + j] + b + residual[i, j0 + j]
            x[i, j0 + j] = v
            mean[j] += v
    for j in range(n):
        mean[j] /= c
    for i in range(c):
        for j in range(n):
            d = x[i, j0 + j] - mean[j]
            var[j] += d * d
    for j in range(n):
        var[j] = 1.0 / math.sqrt(var[j] / c + eps)
    for i in range(c):
        g = gamma[i]
        b = beta[i]
        for j in range(n):
            x[i, j0 + j] = (x[i, j0 + j] - mean[j]) * var[j] * g + b


class _Kernels:
    """The memory-bound steps of a layer: NumPy by default, Numba twins when enabled and loaded."""

    def __init__(self):
        self.name = "numpy"
        self.bias_gelu = _np_bias_gelu
        self.add_layernorm = _np_add_layernorm
        self.softmax = _np_softmax

    def use_numba(self) -> bool:
        """Switch to the Numba kernels; False (staying on NumPy) if Numba cannot compile them."""
        try:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import numba
        except Exception:  # noqa: BLE001
            return False
        for cache in (True, False):   # a stale or foreign on-disk cache must not break us: recompile
            try:
                fast = numba.njit(cache=cache, nogil=True, error_model="numpy", fastmath=True)
                exact = numba.njit(cache=cache, nogil=True, error_model="numpy")
                gelu, addln, softmax = fast(_nb_bias_gelu), exact(_nb_add_layernorm), fast(_nb_softmax)
                # compile (or load from the cache) now, for the argument types the forward pass uses
                x2, v1 = np.ones((2, 3), _F32), np.ones(2, _F32)
                gelu(x2, v1)
                addln(x2, np.ones((2, 3), _F32), v1, v1, v1, 1e-12, 0, 3)
                softmax(np.ones((1, 1, 2, 2), _F32), np.zeros((1, 2), _F32), True)
                break
            except Exception:  # noqa: BLE001
                continue
        else:
            return False

        def bias_gelu(x, bias):
            gelu(x, bias)
            return x

        def add_layernorm(x, residual, bias, gamma, beta, eps, j0=0, j1=None):
            if residual is None or bias is None:
                return _np_add_layernorm(x, residual, bias, gamma, beta, eps, j0, j1)
            addln(x, residual, bias, gamma, beta, eps, j0, x.shape[1] if j1 is None else j1)
            return x

        no_mask = np.zeros((1, 0), _F32)

        def softmax_(scores, mask_bias):
            softmax(scores, no_mask if mask_bias is None else mask_bias, mask_bias is not None)
            return scores

        self.bias_gelu, self.add_layernorm, self.softmax = bias_gelu, add_layernorm, softmax_
        self.name = "numba"
        return True


# =================================================================================================
# threads
# =================================================================================================

def set_blas_threads(n: int) -> bool:
    """Set the thread count of the OpenBLAS that NumPy uses (process-wide), if it can be found
    (Linux, NumPy's bundled OpenBLAS or a system one). True when done."""
    import ctypes
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:
        return False
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
             "openblas_set_num_threads")
    done = False
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = None
                fn(ctypes.c_int(int(n)))
                done = True
                break
    return done


_clock = __import__("time").perf_counter


class _Job:
    __slots__ = ("fn", "n", "next", "done", "lock", "finished", "error", "start")

    def __init__(self, fn, n):
        import itertools
        self.start = _clock()
        self.fn, self.n = fn, n
        self.next = itertools.count()
        self.done = 0
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.error = None

    def work(self):
        while True:
            i = next(self.next)          # atomic under the GIL
            if i >= self.n:
                return
            try:
                self.fn(i)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                self.error = e
            with self.lock:
                self.done += 1
                if self.done == self.n:
                    self.finished.set()


class _Pool:
    """Work sharing over `size` threads, the caller being one of them: a job's chunks are taken in
    turn by whichever thread is free, so a helper that the OS has not scheduled yet never holds the
    caller up (it only waits for chunks already running), and concurrent callers each finish their
    own job. The heavy parts (BLAS, NumPy ufuncs, nogil Numba kernels) run without the GIL. One
    pool per size is shared by all models (see _pool_of)."""

    def __init__(self, size: int):
        self.size = max(1, int(size))
        self._cv = threading.Condition()
        self._job = None
        self._generation = 0
        self._workers = []
        self.late = 0.0005
        self.work_scale = 1.0            # tests set 0 to split even tiny work

    def _loop(self):
        seen = 0
        while True:
            with self._cv:
                while self._generation == seen:
                    self._cv.wait()
                seen, job = self._generation, self._job
            # A helper that got a core late (the others are busy) leaves the job to the caller:
            # starting a chunk now would likely be preempted midway and make the caller wait.
            if _clock() - job.start < self.late:
                job.work()

    def map(self, fn, n: int) -> None:
        """fn(0) ... fn(n - 1), spread over the threads; returns when all are done."""
        if self.size == 1 or n <= 1:
            for i in range(n):
                fn(i)
            return
        if not self._workers:
            for _ in range(self.size - 1):
                t = threading.Thread(target=self._loop, daemon=True, name="minitinybert-runtime")
                t.start()
                self._workers.append(t)
        job = _Job(fn, n)
        with self._cv:
            self._job = job
            self._generation += 1
            self._cv.notify_all()
        job.work()
        job.finished.wait()
        if job.error is not None:
            raise job.error

    def chunks(self, total: int, work: float, min_work: float = 2e5, align: int = 1):
        """Split range(total) into pieces: several per thread when `work` is worth it, else one."""
        if self.size == 1 or work < min_work * self.work_scale or total < 2 * align:
            return [(0, total)]
        count = min(self.size * 2, total // align)
        step = -(-total // count)
        step = -(-step // align) * align
        return [(a, min(a + step, total)) for a in range(0, total, step)]


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _pool_of(size: int) -> "_Pool":
    with _POOLS_LOCK:
        if size not in _POOLS:
            _POOLS[size] = _Pool(size)
        return _POOLS[size]


class _Dense:
    """A linear layer on feature-major activations: W @ x (+ b), W (out, in) as stored: float32, or
    int8 with per-row scales."""
    __slots__ = ("weight", "bias", "scale", "owner")

    def __init__(self, weight, bias, scale, owner):
        self.weight, self.bias, self.scale, self.owner = weight, bias, scale, owner

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def matmul(self, x, pool=None, add_bias=False, rows=None):
        """W @ x for feature-major x (in, N): (out, N); the bias only if add_bias (else the caller
        fuses it with what follows); `rows` (r0, r1): only those output features. Output rows are
        split over the pool's threads."""
        weight, scale, bias = self.weight, self.scale, self.bias
        if rows is not None:
            r0, r1 = rows
            weight, bias = weight[r0:r1], bias[r0:r1]
            scale = None if scale is None else scale[r0:r1]
        out_f, in_f = weight.shape
        y = np.empty((out_f, x.shape[1]), _F32)
        w_all = None if scale is None else self.owner._scratch(weight.shape)

        def compute(a, b):
            w = weight[a:b]
            if scale is not None:                                   # dequantize: one pass, float32
                w = np.multiply(w, scale[a:b, None], out=w_all[a:b])
            np.matmul(w, x, out=y[a:b])
            if add_bias and bias is not None:
                y[a:b] += bias[a:b, None]

        parts = [(0, out_f)] if pool is None else pool.chunks(out_f, float(out_f) * in_f * x.shape[1], 1e6, 8)
        if len(parts) == 1:
            compute(0, out_f)
        else:
            pool.map(lambda i: compute(*parts[i]), len(parts))
        return y

    def __call__(self, x, pool=None):
        return self.matmul(x, pool, add_bias=True)


class _Embedding:
    __slots__ = ("table", "scale")

    def __init__(self, table, scale):
        self.table, self.scale = table, scale

    def rows(self, ids):
        """Float32 rows, a new writeable array."""
        out = self.table[ids]
        if out.dtype != _F32:
            out = out.astype(_F32)
        if self.scale is not None:
            out *= self.scale[ids][..., None]
        return out


class _Layer:
    __slots__ = ("qkv", "attn_out", "ln1", "inter", "out", "ln2")


class RuntimeModel:
    """A loaded model: predict(), embed(), tokenize(), forward(). See load()."""

    def __init__(self, path, metadata, tensors, mm, tokenizer_backend="auto", kernels="auto", threads=None):
        self.path = os.fspath(path)
        self._mm = mm
        self._lock = threading.RLock()
        self._scratch_buf = None
        self._parse_metadata(metadata)
        self.tokenizer = WordPieceTokenizer(self.vocab_tokens, self.do_lower_case, backend=tokenizer_backend)
        del self.vocab_tokens
        self._build(tensors)
        if kernels not in ("auto", "numpy", "numba"):
            raise ValueError(f"kernels must be 'auto', 'numpy' or 'numba', got {kernels!r}")
        self._kernel_choice = kernels
        self._kernels = None
        if threads is not None and (type(threads) is not int or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        # threads=N: the runtime runs its own N threads over single-threaded BLAS calls;
        # None: one thread here, BLAS threads as the environment sets them.
        self._pool = _pool_of(threads if threads and set_blas_threads(1) else 1)

    # --- metadata and tensors -------------------------------------------------------------------

    def _parse_metadata(self, meta):
        p = self.path
        if meta.get("format") != FORMAT:
            raise RuntimeModelError(f"{p}: not a minitinybert runtime model (metadata format "
                                    f"{meta.get('format')!r}, expected {FORMAT!r}); export one with "
                                    f"python -m minitinybert.export")
        for key in ("config", "labels", "vocab", "do_lower_case", "max_length"):
            if key not in meta:
                raise RuntimeModelError(f"{p}: metadata lacks {key!r}")
        try:
            cfg = json.loads(meta["config"])
            labels = json.loads(meta["labels"])
        except (ValueError, RecursionError) as e:
            raise RuntimeModelError(f"{p}: metadata config/labels are not valid JSON ({str(e)[:200]})") from None
        if not isinstance(cfg, dict):
            raise RuntimeModelError(f"{p}: metadata config is not a JSON object")
        limits = dict(vocab_size=10 ** 7, hidden_size=65536, num_hidden_layers=1024, num_attention_heads=4096,
                      intermediate_size=10 ** 6, max_position_embeddings=10 ** 6, type_vocab_size=10 ** 6)
        for key, limit in limits.items():
            value = cfg.get(key)
            if type(value) is not int or not 1 <= value <= limit:
                raise RuntimeModelError(f"{p}: config {key} must be an integer in [1, {limit}], got {value!r}")
        num_labels = cfg.get("num_labels", 0)
        if type(num_labels) is not int or not 0 <= num_labels <= 10 ** 6:
            raise RuntimeModelError(f"{p}: config num_labels must be an integer >= 0, got {num_labels!r}")
        eps = cfg.get("layer_norm_eps", 1e-12)
        if type(eps) not in (int, float) or not 0 < eps < 1:
            raise RuntimeModelError(f"{p}: config layer_norm_eps must be a small positive number, got {eps!r}")
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise RuntimeModelError(f"{p}: hidden_size {cfg['hidden_size']} is not divisible by "
                                    f"num_attention_heads {cfg['num_attention_heads']}")
        act = cfg.get("hidden_act", "gelu")
        if act not in ("gelu", "gelu_python"):
            raise RuntimeModelError(f"{p}: hidden_act {act!r} is not supported (exact erf GELU only)")
        problem = cfg.get("problem_type") or ("embedding" if num_labels == 0 else
                                              "regression" if num_labels == 1 else "single_label_classification")
        expected_problem = ("embedding" if num_labels == 0 else "regression" if num_labels == 1
                            else "single_label_classification")
        if problem != expected_problem:
            raise RuntimeModelError(f"{p}: problem_type {problem!r} does not fit num_labels {num_labels}")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise RuntimeModelError(f"{p}: metadata labels must be a JSON list of strings")
        if num_labels >= 2:
            if not labels:
                # default names only for a head the file can hold (a row takes >= 2 bytes): a
                # hostile header must not make us build a million strings before the tensor checks
                if 2 * num_labels > (len(self._mm) if self._mm is not None else 0):
                    raise RuntimeModelError(f"{p}: config num_labels {num_labels}: the file is too small "
                                            f"for a classifier of that many rows")
                labels = [f"LABEL_{i}" for i in range(num_labels)]
            if len(labels) != num_labels or len(set(labels)) != len(labels):
                raise RuntimeModelError(f"{p}: {len(labels)} distinct label names for {num_labels} classes")
        else:
            labels = []
        tokens = meta["vocab"].split("\n")
        if len(tokens) != cfg["vocab_size"]:
            raise RuntimeModelError(f"{p}: the vocabulary has {len(tokens)} tokens, config vocab_size is "
                                    f"{cfg['vocab_size']}")
        lower = meta["do_lower_case"].strip().lower()
        if lower not in ("true", "false"):
            raise RuntimeModelError(f"{p}: do_lower_case must be 'true' or 'false', got {meta['do_lower_case']!r}")
        try:
            max_length = int(meta["max_length"])
        except ValueError:
            max_length = -1
        if not 3 <= max_length <= cfg["max_position_embeddings"]:
            raise RuntimeModelError(f"{p}: max_length must be an integer in [3, {cfg['max_position_embeddings']}], "
                                    f"got {meta['max_length']!r}")
        self.config = dict(cfg, num_labels=num_labels, layer_norm_eps=float(eps), problem_type=problem)
        self.labels = labels
        self.num_labels = num_labels
        self.problem_type = problem
        self.vocab_tokens = tokens
        self.do_lower_case = lower == "true"
        self.max_length = max_length
        self.dtype = meta.get("dtype", "")

    def _build(self, tensors):
        cfg, p = self.config, self.path
        C, F, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
        used = set()

        def get(name, shape, allow_int8=False, keep_f16=False):
            """(float32 array, None) or, for int8, (int8 array, float32 per-row scales)."""
            if name not in tensors:
                raise RuntimeModelError(f"{p}: missing tensor {name!r}")
            used.add(name)
            dtype, arr, _ = tensors[name]
            if arr.shape != shape:
                raise RuntimeModelError(f"{p}: tensor {name!r} has shape {arr.shape}, the config says {shape}")
            if dtype == "I8":
                if not allow_int8:
                    raise RuntimeModelError(f"{p}: tensor {name!r} is int8, which only 2-D weights may be")
                return arr, get_scale(name + "_scale", shape[0])
            if keep_f16 and dtype == "F16" and arr.dtype.isnative:
                return arr, None
            return to_float(name, dtype, arr), None

        def get_float(name, shape):
            """A float32 array; 1-D ones (biases, norms: tiny) as writable copies, so that every kernel
            argument has one type whatever the file's dtype (Numba compiles per type)."""
            arr = get(name, shape)[0]
            return np.array(arr, dtype=_F32) if len(shape) == 1 else arr

        def get_scale(name, rows):
            scale = get_float(name, (rows,))
            if not np.all(np.isfinite(scale)):
                raise RuntimeModelError(f"{p}: tensor {name!r} holds NaN or infinite values")
            return scale

        def to_float(name, dtype, arr):
            if dtype == "F32":
                return arr if arr.dtype.isnative else arr.astype(_F32)
            if dtype in ("F16", "F64"):
                return arr.astype(_F32)
            if dtype == "BF16":
                return (arr.astype(np.uint32) << 16).view(_F32)
            raise RuntimeModelError(f"{p}: tensor {name!r} has dtype {dtype}, expected F32, F16 or I8")

        def fused(names, shape):
            """The tensors as one array viewed in place, when they lie back to back in the file."""
            parts = [tensors.get(n) for n in names]
            if any(x is None or x[2] is None for x in parts):
                return None, None
            dtype = parts[0][0]
            if dtype not in ("F32", "I8") or any(x[0] != dtype or x[1].shape != shape for x in parts):
                return None, None
            if not parts[0][1].dtype.isnative:
                return None, None
            nbytes = parts[0][1].nbytes
            if any(x[2] != parts[0][2] + i * nbytes for i, x in enumerate(parts)):
                return None, None
            view = np.frombuffer(self._mm, dtype=parts[0][1].dtype, count=len(parts) * parts[0][1].size,
                                 offset=parts[0][2]).reshape((len(parts) * shape[0],) + shape[1:])
            used.update(names)
            return view, dtype

        def dense(prefix, out_f, in_f, parts=None):
            if not parts:
                w, s = get(prefix + "weight", (out_f, in_f), allow_int8=True)
                return _Dense(w, get_float(prefix + "bias", (out_f,)), s, self)
            # query, key and value as one (3 out, in) product
            wnames = [f"{prefix}{x}.weight" for x in parts]
            bnames = [f"{prefix}{x}.bias" for x in parts]
            w, wdt = fused(wnames, (out_f, in_f))
            s = None
            if w is not None and wdt == "I8":       # scales: tiny, copied (and checked) like biases
                s = np.concatenate([get_scale(n + "_scale", out_f) for n in wnames])
            elif w is None:
                got = [get(n, (out_f, in_f), allow_int8=True) for n in wnames]
                if all(sc is not None for _, sc in got):
                    w, s = np.concatenate([a for a, _ in got]), np.concatenate([sc for _, sc in got])
                else:
                    w = np.concatenate([a if sc is None else a * sc[:, None] for a, sc in got])
            b = np.concatenate([get_float(n, (out_f,)) for n in bnames])
            return _Dense(w, b, s, self)

        # embedding tables stay as stored (float16 too): only the rows a batch uses are converted
        word, word_scale = get("embeddings.word_embeddings.weight", (cfg["vocab_size"], C), True, True)
        pos, pos_scale = get("embeddings.position_embeddings.weight", (cfg["max_position_embeddings"], C), True, True)
        typ, typ_scale = get("embeddings.token_type_embeddings.weight", (cfg["type_vocab_size"], C), True, True)
        self._word = _Embedding(word, word_scale)
        self._pos = _Embedding(pos, pos_scale)
        self._type = _Embedding(typ, typ_scale)
        self._emb_ln = (get_float("embeddings.LayerNorm.weight", (C,)), get_float("embeddings.LayerNorm.bias", (C,)))
        self._layers = []
        for i in range(L):
            pre = f"encoder.layer.{i}."
            layer = _Layer()
            layer.qkv = dense(pre + "attention.self.", C, C, parts=("query", "key", "value"))
            layer.attn_out = dense(pre + "attention.output.dense.", C, C)
            layer.ln1 = (get_float(pre + "attention.output.LayerNorm.weight", (C,)),
                         get_float(pre + "attention.output.LayerNorm.bias", (C,)))
            layer.inter = dense(pre + "intermediate.dense.", F, C)
            layer.out = dense(pre + "output.dense.", C, F)
            layer.ln2 = (get_float(pre + "output.LayerNorm.weight", (C,)),
                         get_float(pre + "output.LayerNorm.bias", (C,)))
            self._layers.append(layer)
        self._pooler = dense("pooler.dense.", C, C)
        self._classifier = dense("classifier.", self.num_labels, C) if self.num_labels else None
        self._scratch_size = max([0] + [d.weight.size for d in self._dense_layers() if d.scale is not None])

    def _dense_layers(self):
        for layer in self._layers:
            yield from (layer.qkv, layer.attn_out, layer.inter, layer.out)
        yield self._pooler
        if self._classifier is not None:
            yield self._classifier

    def _scratch(self, shape):
        n = shape[0] * shape[1]
        if self._scratch_buf is None or self._scratch_buf.size < n:
            self._scratch_buf = np.empty(max(n, self._scratch_size), _F32)
        return self._scratch_buf[:n].reshape(shape)

    def _get_kernels(self):
        if self._kernels is None:
            k = _Kernels()
            if self._kernel_choice == "numba" or (self._kernel_choice == "auto" and HAVE_NUMBA):
                if not k.use_numba() and self._kernel_choice == "numba":
                    raise RuntimeModelError("Numba kernels were asked for but Numba cannot be imported")
            self._kernels = k
        return self._kernels

    @property
    def kernels(self) -> str:
        """"numba" or "numpy" (settled at the first forward pass)."""
        return self._get_kernels().name

    # --- forward -------------------------------------------------------------------------------

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, hidden=True):
        """(B, T) ids -> dict(hidden (B, T, C), pooled (B, C), logits (B, K) or None), float32.

        hidden=False computes the last layer for the [CLS] positions only (all the pooler and the
        head read; about a fifth less work for a 4-layer model) and returns hidden None."""
        cfg = self.config
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise RuntimeModelError(f"input_ids must be a non-empty (batch, tokens) integer array, got "
                                    f"{ids.dtype} {ids.shape}")
        B, T = ids.shape
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if types.shape != ids.shape or mask.shape != ids.shape:
            raise RuntimeModelError(f"token_type_ids {types.shape} and attention_mask {mask.shape} must have "
                                    f"input_ids' shape {ids.shape}")
        if T > cfg["max_position_embeddings"]:
            raise RuntimeModelError(f"{T} tokens exceed max_position_embeddings {cfg['max_position_embeddings']}")
        if ids.min() < 0 or ids.max() >= cfg["vocab_size"]:
            raise RuntimeModelError(f"token ids must lie in [0, {cfg['vocab_size']})")
        if types.min() < 0 or types.max() >= cfg["type_vocab_size"]:
            raise RuntimeModelError(f"token type ids must lie in [0, {cfg['type_vocab_size']})")
        with self._lock:
            xt, cls = self._encode(ids.astype(np.intp, copy=False), types.astype(np.intp, copy=False), mask,
                                   all_positions=hidden)
            pooled_t = self._pooler(cls, self._pool)                   # from the [CLS] columns, (C, B)
            np.tanh(pooled_t, out=pooled_t)
            pooled = np.ascontiguousarray(pooled_t.T)
            logits = None
            if self._classifier is not None:
                logits = np.ascontiguousarray(self._classifier(pooled_t).T)
        return {"hidden": xt.T.reshape(B, T, -1) if hidden else None, "pooled": pooled, "logits": logits}

    def _encode(self, ids, types, mask, all_positions=True):
        """(last hidden states feature-major (C, B*T), column b*T + t, or None; [CLS] states (C, B)).
        all_positions=False runs the last layer for the [CLS] queries only."""
        cfg, K, pool = self.config, self._get_kernels(), self._pool
        B, T = ids.shape
        C, H, F = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
        D, N, eps = C // H, B * T, cfg["layer_norm_eps"]
        x = self._word.rows(ids)
        x += self._pos.rows(np.arange(T))
        x += self._type.rows(types)
        x = np.ascontiguousarray(x.reshape(N, C).T)                    # (C, N)
        _np_add_layernorm(x, None, None, self._emb_ln[0], self._emb_ln[1], eps)
        mask_bias = None
        if not np.all(mask != 0):
            mask_bias = ((mask == 0).astype(_F32) * _F32(MASK_VALUE))
        scale = _F32(1.0 / math.sqrt(D))
        for index, layer in enumerate(self._layers):
            if index == len(self._layers) - 1 and not all_positions:
                return None, self._cls_layer(layer, x, B, T, mask_bias, scale)
            x = self._layer(layer, x, B, T, mask_bias, scale)
        return x, np.ascontiguousarray(x[:, ::T])

    def _layer(self, layer, x, B, T, mask_bias, scale):
        """One encoder layer on feature-major x (C, N) -> (C, N)."""
        cfg, K, pool = self.config, self._kernels, self._pool
        C, H, F = cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]
        D, N, eps = C // H, B * T, cfg["layer_norm_eps"]
        qkv = layer.qkv(x, pool)                               # (3C, N): q, k, v features, with bias
        qkv[:C] *= scale
        heads = qkv.reshape(3, H, D, B, T)
        ctx = np.empty((C, N), _F32)
        ctx_heads = ctx.reshape(H, D, B, T).transpose(2, 0, 1, 3)       # (B, H, D, T) view
        head_parts = pool.chunks(H, float(B) * H * T * T * D, 5e5)

        def attention(i):
            h0, h1 = head_parts[i]
            qt, kt, vt = (heads[j, h0:h1].transpose(2, 0, 1, 3) for j in range(3))   # (B, h, D, T)
            scores = np.matmul(qt.swapaxes(-1, -2), kt)        # (B, h, T, T) = q k^T
            K.softmax(scores, mask_bias)
            # context^T = v^T P^T, written straight into place
            np.matmul(vt, scores.swapaxes(-1, -2), out=ctx_heads[:, h0:h1])

        pool.map(attention, len(head_parts))
        del qkv, heads, ctx_heads
        return self._feed_forward(layer, ctx, x, pool.chunks(N, float(C) * N, 1e5, 16))

    def _feed_forward(self, layer, ctx, x, col_parts):
        """Attention output + residual + norm, then the FFN + residual + norm, on (C, n) columns."""
        K, pool, eps = self._kernels, self._pool, self.config["layer_norm_eps"]
        n = ctx.shape[1]
        a = layer.attn_out.matmul(ctx, pool)
        pool.map(lambda i: K.add_layernorm(a, x, layer.attn_out.bias, layer.ln1[0], layer.ln1[1], eps,
                                           *col_parts[i]), len(col_parts))
        inter = layer.inter.matmul(a, pool)
        bias, F = layer.inter.bias, inter.shape[0]
        row_parts = pool.chunks(F, float(F) * n, 1e5, 8)
        pool.map(lambda i: K.bias_gelu(inter[row_parts[i][0]:row_parts[i][1]], bias[row_parts[i][0]:row_parts[i][1]]),
                 len(row_parts))
        y = layer.out.matmul(inter, pool)
        del inter
        pool.map(lambda i: K.add_layernorm(y, a, layer.out.bias, layer.ln2[0], layer.ln2[1], eps, *col_parts[i]),
                 len(col_parts))
        return y

    def _cls_layer(self, layer, x, B, T, mask_bias, scale):
        """The last layer for the [CLS] queries only: keys and values of every position, then
        attention, FFN and norms on B columns. Returns the [CLS] states (C, B)."""
        cfg, K, pool = self.config, self._kernels, self._pool
        C, H = cfg["hidden_size"], cfg["num_attention_heads"]
        D = C // H
        x_cls = np.ascontiguousarray(x[:, ::T])                          # (C, B)
        q = layer.qkv.matmul(x_cls, pool, add_bias=True, rows=(0, C))    # (C, B)
        q *= scale
        kv = layer.qkv.matmul(x, pool, add_bias=True, rows=(C, 3 * C))   # (2C, N)
        kv_heads = kv.reshape(2, H, D, B, T)
        kt = kv_heads[0].transpose(2, 0, 1, 3)                           # (B, H, D, T)
        vt = kv_heads[1].transpose(2, 0, 1, 3)
        qh = q.reshape(H, D, B).transpose(2, 0, 1)[:, :, None, :]       # (B, H, 1, D)
        scores = np.matmul(qh, kt)                                       # (B, H, 1, T)
        K.softmax(scores, mask_bias)
        ctx = np.empty((C, B), _F32)
        np.matmul(vt, scores.swapaxes(-1, -2), out=ctx.reshape(H, D, B).transpose(2, 0, 1)[..., None])
        return self._feed_forward(layer, ctx, x_cls, [(0, B)])

    # --- tokenization and batching ----------------------------------------------------------------

    def _check_max_length(self, max_length):
        if max_length is None:
            return self.max_length
        limit = self.config["max_position_embeddings"]
        if type(max_length) is not int or not 3 <= max_length <= limit:
            raise RuntimeModelError(f"max_length must be an integer in [3, {limit}], got {max_length!r}")
        return max_length

    def tokenize(self, inputs, max_length=None):
        """Model inputs for texts or (text, pair) tuples, padded to the longest:
        dict(input_ids, token_type_ids, attention_mask) of (B, T) int64 arrays, plus "truncated" (B,) bool."""
        encoded = self.tokenizer.encode(inputs, self._check_max_length(max_length))
        return self._pad(encoded)

    def _pad(self, encoded):
        T = max(len(ids) for ids, _, _ in encoded)
        B = len(encoded)
        ids = np.full((B, T), self.tokenizer.pad_id, np.int64)
        types = np.zeros((B, T), np.int64)
        mask = np.zeros((B, T), np.int64)
        for row, (i, t, _) in enumerate(encoded):
            ids[row, :len(i)] = i
            types[row, :len(t)] = t
            mask[row, :len(i)] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                "truncated": np.array([tr for _, _, tr in encoded], bool)}

    def _run(self, inputs, batch_size, max_length, want):
        """Outputs of `want` ("logits", "mean" or "pooled") per input, in input order: inputs are
        sorted by length into buckets of batch_size, each padded only to its own longest."""
        if type(batch_size) is not int or batch_size < 1:
            raise RuntimeModelError(f"batch_size must be a positive integer, got {batch_size!r}")
        encoded = self.tokenizer.encode(inputs, self._check_max_length(max_length))
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        results = [None] * len(encoded)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = self._pad([encoded[i] for i in chunk])
            out = self.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                               hidden=want == "mean")
            if want == "logits":
                values = out["logits"]
            elif want == "pooled":
                values = out["pooled"]
            else:
                m = batch["attention_mask"].astype(_F32)[:, :, None]
                values = (out["hidden"] * m).sum(axis=1) / m.sum(axis=1)
            for row, index in enumerate(chunk):
                results[index] = values[row]
        return np.stack(results).astype(_F32, copy=False), [e[2] for e in encoded]

    # --- public API -------------------------------------------------------------------------------

    def logits(self, inputs, batch_size=32, max_length=None) -> np.ndarray:
        """(N, num_labels) raw head outputs (for evaluation)."""
        if self._classifier is None:
            raise RuntimeModelError(f"{self.path} is an embedding model without a task head: use embed()")
        return self._run(inputs, batch_size, max_length, "logits")[0]

    def predict(self, inputs, batch_size=32, max_length=None, return_truncated=False):
        """Texts or (text, pair) tuples -> [{"label", "scores": {label: probability}}] for classifiers,
        [{"score"}] for regression models; in input order. A single text or pair may be given bare."""
        if self._classifier is None:
            raise RuntimeModelError(f"{self.path} is an embedding model without a task head: use embed()")
        logits, truncated = self._run(inputs, batch_size, max_length, "logits")
        out = []
        if self.num_labels == 1:
            out = [{"score": float(row[0])} for row in logits]
        else:
            z = logits.astype(np.float64)
            z = np.exp(z - z.max(axis=1, keepdims=True))
            z /= z.sum(axis=1, keepdims=True)
            for row in z:
                best = int(np.argmax(row))
                out.append({"label": self.labels[best],
                            "scores": {name: float(v) for name, v in zip(self.labels, row)}})
        return (out, truncated) if return_truncated else out

    def embed(self, inputs, pooling="mean", batch_size=32, max_length=None, normalize=True) -> np.ndarray:
        """(N, hidden) sentence embeddings, L2-normalised unless normalize=False. pooling: "mean"
        (mean of the last hidden states over real tokens) or "cls" (the pooler output, tanh(W h_CLS + b))."""
        if pooling not in ("mean", "cls", "pooler"):
            raise RuntimeModelError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        vectors = self._run(inputs, batch_size, max_length, "mean" if pooling == "mean" else "pooled")[0]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, _F32(1e-12))
        return vectors

    def __repr__(self):
        cfg = self.config
        return (f"RuntimeModel({self.path!r}, {self.problem_type}, layers={cfg['num_hidden_layers']}, "
                f"hidden={cfg['hidden_size']}, labels={self.labels}, dtype={self.dtype or '?'})")


def load(path, tokenizer="auto", kernels="auto", threads=None) -> RuntimeModel:
    """A runtime model from its file. `tokenizer`: "auto" | "python" | "tokenizers";
    `kernels`: "auto" (Numba when available) | "numpy" | "numba"; `threads`: None (BLAS threads as
    the environment sets them) or N: the runtime's own N threads, BLAS set to one thread per call
    (process-wide; degrades gracefully when other processes hold the cores)."""
    metadata, tensors, mm = read_safetensors(path)
    return RuntimeModel(path, metadata, tensors, mm, tokenizer_backend=tokenizer, kernels=kernels, threads=threads)


# =================================================================================================
# script mode
# =================================================================================================

def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="runtime.py", description="Run a minitinybert runtime model: one JSON "
                                     "line per input. Texts come from the arguments, else from stdin, one per "
                                     "line (a tab-separated line is a sentence pair; blank lines are skipped).")
    parser.add_argument("model", help="the runtime model file")
    parser.add_argument("texts", nargs="*", help="texts to classify (or embed)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--pooling", default="mean", choices=("mean", "cls"),
                        help="embedding models: how token states become one vector")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.texts:
            inputs = list(args.texts)
        else:
            try:
                lines = sys.stdin.buffer.read().decode("utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise RuntimeModelError(f"stdin is not UTF-8 text ({e.reason} at byte {e.start})") from None
            inputs = [tuple(line.split("\t", 1)) if "\t" in line else line for line in lines if line.strip()]
        if not inputs:
            raise RuntimeModelError("no input texts (give them as arguments or on stdin)")
        model = load(args.model, kernels="auto" if len(inputs) >= 64 else "numpy")
        if model.num_labels:
            results = model.predict(inputs, batch_size=args.batch_size, max_length=args.max_length)
        else:
            vectors = model.embed(inputs, pooling=args.pooling, batch_size=args.batch_size,
                                  max_length=args.max_length)
            results = [{"embedding": [round(float(v), 6) for v in row]} for row in vectors]
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
