"""BERT WordPiece tokenization on top of the `tokenizers` library.

The pipeline is BERT's: BertNormalizer (clean text, Chinese characters split, lowercase and accent
stripping for uncased vocabularies), BertPreTokenizer (whitespace and punctuation), WordPiece with
"[UNK]" and at most 100 characters per word, then "[CLS] A [SEP] (B [SEP])" with token type ids 0/1.
It is built from vocab.txt alone: a checkpoint's tokenizer.json may carry padding and truncation
settings (all-MiniLM-L6-v2's pads everything to 128) that must not leak into training. We truncate
to `max_length` ourselves and pad each batch to its longest sequence.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from ..engine.files import write_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TokenizerError(ValueError):
    """A vocabulary that cannot be used, or inputs that cannot be encoded."""


@dataclass
class Batch:
    input_ids: np.ndarray       # (B, T) int32
    token_type_ids: np.ndarray  # (B, T) int32
    attention_mask: np.ndarray  # (B, T) int32, 1 = real token

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def read_vocab(path: str | Path) -> dict[str, int]:
    """vocab.txt: one token per line, the line number is the id."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"vocabulary file not found: {path}")
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            token = line.rstrip("\r\n")
            if token in vocab:
                raise TokenizerError(f"{path}: line {index + 1}: token {token!r} already appears on line "
                                     f"{vocab[token] + 1}")
            vocab[token] = index
    if not vocab:
        raise TokenizerError(f"{path}: the vocabulary file is empty")
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"{path}: the vocabulary lacks the special token(s) {', '.join(missing)}")
    return vocab


class Tokenizer:
    def __init__(self, vocab: dict[str, int], lowercase: bool = True):
        self.vocab = dict(vocab)
        self.id_to_token = [""] * len(self.vocab)
        for token, index in self.vocab.items():
            if not 0 <= index < len(self.vocab) or self.id_to_token[index]:
                raise TokenizerError(f"vocabulary ids must be 0..{len(self.vocab) - 1} without gaps; "
                                     f"token {token!r} has id {index}")
            self.id_to_token[index] = token
        missing = [t for t in SPECIAL_TOKENS if t not in self.vocab]
        if missing:
            raise TokenizerError(f"the vocabulary lacks the special token(s) {', '.join(missing)}")
        self.lowercase = bool(lowercase)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self.vocab[t] for t in SPECIAL_TOKENS)

        tk = HFTokenizer(WordPiece(vocab=self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                   strip_accents=self.lowercase, lowercase=self.lowercase)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        # Special tokens written in the text stay whole, as Hugging Face's BERT tokenizers and
        # runtime.py's own tokenizer keep them: the student sees at training what it sees on the board.
        tk.add_special_tokens(list(SPECIAL_TOKENS))
        self._tk = tk  # no truncation, no padding: for single texts and words
        # A twin for batches: it pads to the batch's longest and truncates to the last max_length set.
        self._batch_tk = HFTokenizer.from_str(tk.to_str())
        self._batch_tk.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", pad_type_id=0)
        self._max_length: int | None = None
        # A twin for whole datasets (token caches): the same truncation, no padding.
        self._rows_tk = HFTokenizer.from_str(tk.to_str())
        self._rows_max_length: int | None = None

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_vocab(cls, vocab_path: str | Path, lowercase: bool = True) -> "Tokenizer":
        return cls(read_vocab(vocab_path), lowercase=lowercase)

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        """A checkpoint directory: vocab.txt, and do_lower_case from tokenizer_config.json or config.json."""
        path = Path(path)
        if not path.is_dir():
            raise TokenizerError(f"checkpoint directory not found: {path}")
        lowercase = True
        for name in ("tokenizer_config.json", "config.json"):
            file = path / name
            if not file.exists():
                continue
            try:
                raw = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{file} is not valid JSON: {e}") from None
            if isinstance(raw, dict) and "do_lower_case" in raw:
                if not isinstance(raw["do_lower_case"], bool):
                    raise TokenizerError(f"{file}: do_lower_case must be true or false, got "
                                         f"{raw['do_lower_case']!r}")
                lowercase = raw["do_lower_case"]
                break
        return cls.from_vocab(path / "vocab.txt", lowercase=lowercase)

    def save_vocab(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "vocab.txt"
        write_atomic(path, "".join(t + "\n" for t in self.id_to_token))
        return path

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # --- encoding -------------------------------------------------------------------------

    def encode(self, texts: list[str], pairs: list[str] | None = None, max_length: int = 128) -> Batch:
        """Token ids of a batch, truncated to max_length (pairs: longest first) and padded to its longest."""
        if isinstance(texts, str):
            raise TokenizerError("encode takes a list of texts, got a single string")
        texts, pairs = _checked_inputs(texts, pairs, "encode")
        if not texts:
            raise TokenizerError("encode got an empty list of texts")
        minimum = 3 if pairs is None else 4  # room for the special tokens and one token per text
        if not isinstance(max_length, (int, np.integer)) or max_length < minimum:
            raise TokenizerError(f"max_length must be an integer >= {minimum} "
                                 f"({'pairs' if pairs is not None else 'single texts'}), got {max_length!r}")
        if self._max_length != max_length:
            self._batch_tk.enable_truncation(int(max_length), strategy="longest_first")
            self._max_length = int(max_length)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = self._batch_tk.encode_batch(inputs, add_special_tokens=True)
        return Batch(np.array([e.ids for e in encodings], dtype=np.int32),
                     np.array([e.type_ids for e in encodings], dtype=np.int32),
                     np.array([e.attention_mask for e in encodings], dtype=np.int32))

    def lengths(self, texts: list[str], pairs: list[str] | None = None, max_length: int = 128) -> np.ndarray:
        """Tokens each text (or pair) takes in a batch, special tokens included: its row's length
        before padding, as `encode` would truncate it to max_length."""
        texts, pairs = _checked_inputs(texts, pairs, "lengths")
        inputs = texts if pairs is None else list(zip(texts, pairs))
        # Truncation (longest first for pairs) only ever cuts a row down to max_length exactly
        encode = getattr(self._tk, "encode_batch_fast", self._tk.encode_batch)    # no offsets: 1.7x faster
        counts = [len(e.ids) for e in encode(inputs, add_special_tokens=True)]
        return np.minimum(np.array(counts, dtype=np.int64), int(max_length))

    def batch_from_ids(self, sequences: list[list[int]], width: int | None = None,
                       type_ids: list[list[int]] | None = None) -> Batch:
        """A padded batch from id lists that already hold their special tokens, padded to the longest,
        or to `width`; token types from `type_ids` (one list a sequence, as long), else all 0."""
        if not sequences:
            raise TokenizerError("batch_from_ids got no sequences")
        longest = max(len(s) for s in sequences)
        if width is not None and width < longest:
            raise TokenizerError(f"batch_from_ids: a sequence of {longest} ids does not fit in width {width}")
        width = width or longest
        ids = np.full((len(sequences), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(sequences), width), dtype=np.int32)
        types = np.zeros((len(sequences), width), dtype=np.int32)
        if type_ids is not None and [len(t) for t in type_ids] != [len(s) for s in sequences]:
            raise TokenizerError("batch_from_ids: type_ids must hold one type per id of each sequence")
        for row, seq in enumerate(sequences):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
            if type_ids is not None:
                types[row, :len(seq)] = type_ids[row]
        return Batch(ids, types, mask)

    def encode_rows(self, texts: list[str], pairs: list[str] | None = None,
                    max_length: int = 128) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, type ids) of each text (or pair), unpadded: the rows of `encode`'s batch without
        their padding, truncated alike. For caches that keep every example's tokens."""
        texts, pairs = _checked_inputs(texts, pairs, "encode_rows")
        minimum = 3 if pairs is None else 4
        if not isinstance(max_length, (int, np.integer)) or max_length < minimum:
            raise TokenizerError(f"max_length must be an integer >= {minimum}, got {max_length!r}")
        if self._rows_max_length != max_length:
            self._rows_tk.enable_truncation(int(max_length), strategy="longest_first")
            self._rows_max_length = int(max_length)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encode = getattr(self._rows_tk, "encode_batch_fast", self._rows_tk.encode_batch)   # no offsets: faster
        encodings = encode(inputs, add_special_tokens=True)
        return [e.ids for e in encodings], [e.type_ids for e in encodings]

    def tokenize(self, text: str) -> list[str]:
        """WordPieces of one text, without [CLS]/[SEP] and without truncation."""
        return self._tk.encode(_check_string(text), add_special_tokens=False).tokens

    def token_ids(self, text: str) -> list[int]:
        """WordPiece ids of one text, without [CLS]/[SEP] and without truncation."""
        return self._tk.encode(_check_string(text), add_special_tokens=False).ids

    def word_pieces(self, words: list[str]) -> list[list[str]]:
        """WordPieces of each already pre-tokenized word (as `pre_tokenize` returns them)."""
        if not words:
            return []
        enc = self._tk.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        pieces: list[list[str]] = [[] for _ in words]
        for token, word in zip(enc.tokens, enc.word_ids):
            pieces[word].append(token)
        return pieces

    def pre_tokenize(self, text: str) -> list[str]:
        """Words after BERT's basic tokenization (normalisation, whitespace and punctuation splits)."""
        normalized = self._tk.normalizer.normalize_str(_check_string(text))
        return [word for word, _ in self._tk.pre_tokenizer.pre_tokenize_str(normalized)]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.id_to_token[int(i)] for i in ids]

    def decode(self, ids, skip_special: bool = True) -> str:
        """Readable text from ids (WordPieces joined; for debugging and examples)."""
        tokens = [t for t in self.convert_ids_to_tokens(ids)
                  if not (skip_special and t in SPECIAL_TOKENS)]
        return " ".join(tokens).replace(" ##", "")

    def fingerprint(self) -> str:
        """sha256 of the vocabulary and the case setting: identifies what the ids mean."""
        h = hashlib.sha256("\n".join(self.id_to_token).encode("utf-8"))
        h.update(b"lower" if self.lowercase else b"cased")
        return h.hexdigest()


def _check_string(text) -> str:
    if not isinstance(text, str):
        raise TokenizerError(f"expected a string, got {type(text).__name__}: {text!r:.80}")
    return text


def _checked_inputs(texts, pairs, who: str) -> tuple[list[str], list[str] | None]:
    """texts (and pairs) as lists of strings of equal length, or a TokenizerError naming `who`."""
    texts = list(texts)
    _check_strings(texts, "texts")
    if pairs is not None:
        pairs = list(pairs)
        if len(pairs) != len(texts):
            raise TokenizerError(f"{who} got {len(texts)} texts but {len(pairs)} pairs")
        _check_strings(pairs, "pairs")
    return texts, pairs


def _check_strings(items: list, name: str) -> None:
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TokenizerError(f"{name}[{index}] is {type(item).__name__}, not a string: {item!r:.80}")
