"""The general-distillation corpus, streamed as batches of packed sequences that resume exactly.

A corpus is a directory (or one file) of documents in one of these formats:
  .txt             one sentence or paragraph a line, a blank line between documents (BERT's
                   pre-training format). Indexed at start: one pass records each document's byte
                   range (24 bytes a document, never the text), and the documents are shuffled
                   anew every epoch. With streaming=True (--corpus-streaming) read like the next two
                   instead: no start-up pass, for corpora of many gigabytes.
  .jsonl / .json   one document a record, its text in `column` (default "text"), lines split on "\\n";
  .parquet         the same, e.g. a Wikipedia dump. Both streamed through `datasets` (one file at a
                   time, never loaded whole): the files in a new order every epoch, the documents of a
                   file in order.
Sentences are packed within a document into sequences of up to seq_len tokens, as BERT's pre-training
data; a line longer than a sequence is cut into several. Every batch is padded to seq_len, as the
official code does: a row's shape does not depend on which rows share its batch. Two layouts:
  segments=2 (default)  BERT's sentence pairs, as the official TinyBERT general-distillation data:
                        `[CLS] A [SEP] B [SEP]`, token types 0 then 1. A chunk of consecutive sentences
                        of one document, as long as a sequence, is cut at a random sentence boundary
                        into A and B; half the time (always when the chunk is one sentence) B is
                        instead a run of sentences from another document and the sentences after A go
                        back to start the next chunk (create_instances_from_document). The other
                        document is the previous one this shard read (its first document: itself);
                        a pair too long loses tokens of its longer segment, at its outer end (the
                        start of A, the end of B), so the text around the middle [SEP] stays whole.
  segments=1            `[CLS] sentences [SEP]`, token type 0 throughout.
  segments=1, pack=False  `[CLS] line [SEP]`: every line its own row, cut at seq_len, never packed with
                        the next: the unit a sentence-embedding model embeds (distill embed's rows). An
                        indexed corpus then shuffles lines, not documents (a streamed one reads them in order).
There is no next-sentence loss in TinyBERT: the pairs are there so that the student learns the
teacher's second segment type, the [SEP] between segments and the attention across them.

Shards: a run's S shards (parallel.py: ranks x workers) each read their own documents, and shard s
fills rows shard_rows(B, S)[s] of every batch from its own stream, so each process reads only what it
needs and the batches do not depend on how the shards are spread over processes. Shard s takes
documents s, s + S, s + 2S, ... of the epoch's order (indexed .txt); of streamed files, the files at
those places of the epoch's file order when S divides the number of files, else every S-th document
of all of them (every shard then reads every file, and tokenizes only its own documents).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from .shards import Rows, Shards, rows_of, shard_rows
from .tasks import DataError
from .tokenizer import Batch, Tokenizer

FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def corpus_files(corpus: str | Path) -> tuple[list[Path], str]:
    """The corpus's files (sorted) and their format ("text", "json" or "parquet")."""
    corpus = Path(corpus)
    if corpus.is_file():
        files = [corpus]
    elif corpus.is_dir():
        files = sorted(p for p in corpus.iterdir() if p.suffix in FORMATS and p.is_file())
        if not files:
            raise DataError(f"corpus directory {corpus} holds no {', '.join(FORMATS)} files")
    else:
        raise DataError(f"corpus directory not found: {corpus}")
    kinds = {FORMATS.get(p.suffix) for p in files}
    if None in kinds:
        raise DataError(f"corpus file {corpus} is not one of {', '.join(FORMATS)}")
    if len(kinds) > 1:
        raise DataError(f"corpus {corpus} mixes formats ({', '.join(sorted(kinds))}): keep one format per corpus")
    return files, kinds.pop()


def _lines(text: bytes | str) -> list[str]:
    if isinstance(text, bytes):
        return [line.decode("utf-8", errors="replace") for line in text.split(b"\n")]
    return text.split("\n")


# --- where documents come from: each yields (position, lines) from a position, for one shard ---------

class IndexedText:
    """.txt files indexed by document byte ranges; every epoch a new order of all documents, from
    (seed, epoch). A position is {"epoch", "doc"}: the doc-th document of the shard's share of that order.
    by_line: every non-blank line is a document of its own (one-line rows: sentences shuffled one by one,
    not a review's 30 lines in 30 consecutive rows)."""

    def __init__(self, files: list[Path], seed: int, by_line: bool = False):
        self.files, self.seed, self.by_line = files, seed, by_line
        self.docs = self._index()   # (n, 3) int64: file index, start byte, end byte
        if len(self.docs) == 0:
            raise DataError(f"corpus {files[0].parent} holds no text (only blank lines)")
        self._handles: dict[int, object] = {}

    def _index(self) -> np.ndarray:
        docs = []
        for file_index, path in enumerate(self.files):
            start, offset = None, 0
            with open(path, "rb") as f:
                for line in f:
                    blank = not line.strip()
                    if self.by_line and not blank:
                        docs.append((file_index, offset, offset + len(line)))
                    elif blank and start is not None:
                        docs.append((file_index, start, offset))
                        start = None
                    elif not blank and start is None:
                        start = offset
                    offset += len(line)
            if start is not None and not self.by_line:
                docs.append((file_index, start, offset))
        return np.array(docs, dtype=np.int64).reshape(-1, 3)

    def documents(self, shard: int, shards: int, start: dict | None) -> Iterator[tuple[dict, list[str]]]:
        epoch, first = (0, 0) if start is None else (int(start["epoch"]), int(start["doc"]))
        while True:
            mine = np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))[shard::shards]
            if len(mine) == 0:
                raise DataError(f"the corpus has {len(self.docs)} documents, fewer than the {shards} shards "
                                f"(ranks x workers) that each need their own")
            for k in range(first, len(mine)):
                file_index, begin, end = (int(v) for v in self.docs[mine[k]])
                handle = self._handle(file_index)
                handle.seek(begin)
                yield {"epoch": epoch, "doc": k}, _lines(handle.read(end - begin))
            epoch, first = epoch + 1, 0

    def _handle(self, file_index: int):
        if file_index not in self._handles:
            self._handles[file_index] = open(self.files[file_index], "rb")
        return self._handles[file_index]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


class StreamedFiles:
    """Text, JSON lines or Parquet files read through `datasets`' streaming loader, one file at a time;
    every epoch a new file order from (seed, epoch). A position is {"epoch", "file", "record", "count"}:
    the record-th record of the file-th file of the shard's list, `count` records of the epoch before it."""

    def __init__(self, files: list[Path], kind: str, seed: int, column: str = "text"):
        self.files, self.kind, self.seed, self.column = files, kind, seed, column

    def plan(self, shard: int, shards: int, epoch: int) -> tuple[list[Path], bool]:
        """(the files shard reads in this epoch, whether it keeps only every shards-th of their documents)."""
        order = [self.files[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.files))]
        if len(order) % shards == 0:
            return order[shard::shards], False
        return order, True

    def _records(self, path: Path, skip: int):
        import datasets
        # its readers log a failure before raising it; the DataError below reports it, once
        logging.getLogger("datasets").setLevel(logging.CRITICAL)
        options = {"sample_by": "paragraph"} if self.kind == "text" else {}
        try:
            stream = datasets.load_dataset(self.kind, data_files=str(path), split="train", streaming=True, **options)
        except Exception as e:    # noqa: BLE001  (datasets raises many types for an unreadable file)
            raise DataError(f"cannot read corpus file {path}: {type(e).__name__}: {e}") from None
        return iter(stream.skip(skip) if skip else stream)

    def documents(self, shard: int, shards: int, start: dict | None) -> Iterator[tuple[dict, list[str]]]:
        epoch, file_pos, record, count = (0, 0, 0, 0) if start is None else (
            int(start["epoch"]), int(start["file"]), int(start["record"]), int(start["count"]))
        while True:
            files, by_document = self.plan(shard, shards, epoch)
            kept = False
            for f in range(file_pos, len(files)):
                records = self._records(files[f], record)
                while True:
                    try:
                        row = next(records)
                    except StopIteration:
                        break
                    except Exception as e:    # noqa: BLE001  (a malformed line or row group)
                        raise DataError(f"cannot read corpus file {files[f]} past record {record}: "
                                        f"{type(e).__name__}: {e}") from None
                    position = {"epoch": epoch, "file": f, "record": record, "count": count}
                    record, count = record + 1, count + 1
                    if by_document and position["count"] % shards != shard:
                        continue
                    text = row.get(self.column)
                    if not isinstance(text, str):
                        raise DataError(f"corpus file {files[f]}, record {position['record']}: no text field "
                                        f"{self.column!r} (fields: {', '.join(row)})")
                    kept = True
                    yield position, _lines(text)
                record = 0
            if not kept and start is None:
                raise DataError(f"shard {shard} of {shards} found no document in a whole pass over the corpus "
                                f"({len(self.files)} files): use fewer shards (ranks x workers) or more documents")
            epoch, file_pos, record, count, start = epoch + 1, 0, 0, 0, None

    def close(self) -> None:
        pass


# --- one shard's documents packed into sequences ---------------------------------------------------

class ShardStream:
    """Sequences of token ids ([CLS] and [SEP] not included) from one shard's documents."""

    specials = 2    # [CLS] ... [SEP]

    def __init__(self, source, shard: int, shards: int, tokenizer: Tokenizer, seq_len: int):
        self.source, self.shard, self.shards = source, shard, shards
        self.tokenizer, self.room = tokenizer, seq_len - self.specials
        self._restart(None, 0, [], [])

    def _restart(self, at: dict | None, line: int, buffer: list[int], pending: list) -> None:
        self._docs = self.source.documents(self.shard, self.shards, at)
        self._at, self._doc, self._line = None, [], 0
        if at is not None:
            self._at, self._doc = next(self._docs)
            self._line = line
        self._buffer, self._pending = buffer, pending

    def take(self, n: int) -> list:
        """The next n sequences."""
        idle_epochs, epoch = 0, None
        while len(self._pending) < n:
            if self._line < len(self._doc):
                text = self._doc[self._line].strip()
                self._line += 1
                ids = self.tokenizer.token_ids(text) if text else []
                if ids:
                    self._add_line(ids)
                    idle_epochs = 0
                continue
            self._end_document()                   # sentences are packed within a document only
            self._at, self._doc = next(self._docs)
            self._line = 0
            if self._at["epoch"] != epoch:         # a whole pass without a token would loop forever
                idle_epochs, epoch = idle_epochs + 1, self._at["epoch"]
                if idle_epochs > 2:
                    raise DataError(f"corpus shard {self.shard} of {self.shards} yields no tokens")
        taken, self._pending = self._pending[:n], self._pending[n:]
        return taken

    def _end_document(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._pending.append(self._buffer)
            self._buffer = []

    def _add_line(self, ids: list[int]) -> None:
        if len(self._buffer) + len(ids) <= self.room:
            self._buffer.extend(ids)
            return
        self._flush()
        while len(ids) > self.room:                # a line longer than a sequence: cut it
            self._pending.append(ids[:self.room])
            ids = ids[self.room:]
        self._buffer = list(ids)

    @property
    def epoch(self) -> int:
        return 0 if self._at is None else int(self._at["epoch"])

    def state_dict(self) -> dict:
        return {"at": self._at, "line": self._line, "buffer": list(self._buffer),
                "pending": [list(s) for s in self._pending]}

    def load_state_dict(self, state: dict) -> None:
        self._restart(state["at"], int(state["line"]), [int(t) for t in state["buffer"]],
                      [[int(t) for t in s] for s in state["pending"]])


class LineStream(ShardStream):
    """One line a sequence, cut at the sequence's room (its tail dropped, as an embedding model cuts its input)."""

    def _add_line(self, ids: list[int]) -> None:
        self._pending.append(ids[:self.room])


class PairStream(ShardStream):
    """Sentence pairs (A, B) of token ids ([CLS] and the [SEP]s not included) from one shard's documents,
    BERT's way (see the module's docstring). Its random draws come from a generator whose state is part
    of the stream's, so a resumed stream draws what the uninterrupted one would have."""

    specials = 3        # [CLS] A [SEP] B [SEP]
    other_budget = 8    # sequences' worth of a document kept as "another document": bounds the state

    def __init__(self, source, shard: int, shards: int, tokenizer: Tokenizer, seq_len: int, seed: int):
        self.rng = np.random.default_rng([seed, shard, 2])
        self._chunk: list[list[int]] = []       # consecutive sentences of this document, not yet paired
        self._other: list[list[int]] = []       # sentences of the previous document
        self._sentences: list[list[int]] = []   # this document's sentences so far: the next `other`
        super().__init__(source, shard, shards, tokenizer, seq_len)

    def _pieces(self, ids: list[int]) -> list[list[int]]:
        return [ids[k:k + self.room] for k in range(0, len(ids), self.room)]   # a line longer than a sequence: cut

    def _add_line(self, ids: list[int]) -> None:
        for piece in self._pieces(ids):
            self._sentences.append(piece)
            self._chunk.append(piece)
            while sum(map(len, self._chunk)) >= self.room:
                self._pair_from_chunk()

    def _end_document(self) -> None:
        while self._chunk:                     # the document's last, shorter chunk
            self._pair_from_chunk()
        if self._sentences:
            self._other = self._window(self._sentences)
        self._sentences = []

    def _pair_from_chunk(self) -> None:
        """One pair from the chunk (create_instances_from_document): A its first sentences up to a random
        boundary, B the rest of it, or, half the time, sentences of another document (the rest then
        goes back to start the next chunk)."""
        chunk, rng = self._chunk, self.rng
        a_end = int(rng.integers(1, len(chunk))) if len(chunk) > 1 else 1
        a = [t for s in chunk[:a_end] for t in s]
        if len(chunk) == 1 or rng.random() < 0.5:
            other = self._other or self._sentences      # a shard's first document has no other yet
            b = []
            for sentence in other[int(rng.integers(len(other))):]:
                b += sentence
                if len(a) + len(b) >= self.room:
                    break
            self._chunk = chunk[a_end:]
        else:
            b = [t for s in chunk[a_end:] for t in s]
            self._chunk = []
        cut_a = cut_b = 0
        while len(a) - cut_a + len(b) - cut_b > self.room:     # the longer loses a token, at its outer end:
            if len(a) - cut_a > len(b) - cut_b:                # the text around the middle [SEP] stays whole
                cut_a += 1
            else:
                cut_b += 1
        a, b = a[cut_a:], b[:len(b) - cut_b]
        self._pending.append((a, b))

    def _window(self, sentences: list[list[int]]) -> list[list[int]]:
        """A random run of sentences holding other_budget sequences' worth of tokens (all, if fewer)."""
        budget = self.other_budget * self.room
        tokens_from = np.cumsum([len(s) for s in sentences][::-1])[::-1]   # tokens from sentence i on
        starts = np.flatnonzero(tokens_from >= budget)
        kept, total = [], 0
        start = int(starts[self.rng.integers(len(starts))]) if len(starts) else 0
        for sentence in sentences[start:]:
            if total >= budget:
                break
            kept.append(sentence)
            total += len(sentence)
        return kept

    def state_dict(self) -> dict:
        return {"at": self._at, "line": self._line, "pending": [[list(a), list(b)] for a, b in self._pending],
                "chunk": [list(s) for s in self._chunk], "other": [list(s) for s in self._other],
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        ids = lambda seqs: [[int(t) for t in s] for s in seqs]   # noqa: E731
        self._restart(state["at"], int(state["line"]), [], [(a, b) for a, b in
                                                            (ids(pair) for pair in state["pending"])])
        self._chunk, self._other = ids(state["chunk"]), ids(state["other"])
        self.rng.bit_generator.state = state["rng"]
        # this document's sentences before the saved line are read again, not saved
        self._sentences = [piece for line in self._doc[:self._line] if line.strip()
                           for piece in self._pieces(self.tokenizer.token_ids(line.strip()))]


# --- the batches ---------------------------------------------------------------------------------------

class CorpusBatcher:
    """Endless batches of packed sequences from the corpus (see the module's docstring): sentence pairs
    (segments=2) or single segments (segments=1). Resumable: `state_dict()` taken between batches records
    each shard's position (document, line), its partly filled sequences and its random generator, and a
    batcher given it yields exactly the batches an uninterrupted one would have.

    `shards`: the run's shards this process computes (default: one process, one shard). A process that
    holds every row gets a Batch; one that holds some gets parallel.Rows (its rows of the global batch)."""

    def __init__(self, corpus: str | Path, tokenizer: Tokenizer, seq_len: int = 128, batch_size: int = 32,
                 seed: int = 0, shards: Shards | None = None, streaming: bool = False, column: str = "text",
                 segments: int = 2, pack: bool = True):
        if segments not in (1, 2):
            raise DataError(f"segments must be 1 ([CLS] text [SEP]) or 2 ([CLS] A [SEP] B [SEP]), got {segments!r}")
        if not pack and segments != 1:
            raise DataError("unpacked rows (one line a row) take segments=1")
        least = {1: (3, "[CLS], one token, [SEP]"), 2: (5, "[CLS], a token, [SEP], a token, [SEP]")}[segments]
        if seq_len < least[0]:
            raise DataError(f"seq_len must be >= {least[0]} ({least[1]}), got {seq_len}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.shards = shards or Shards(0, 1, 1)
        if batch_size < self.shards.total:
            raise DataError(f"batch size {batch_size} is smaller than the {self.shards.total} shards (ranks x "
                            f"workers) that each take rows of every batch")
        self.corpus_dir = Path(corpus)
        self.files, kind = corpus_files(corpus)
        self.tokenizer, self.seq_len, self.batch_size, self.seed = tokenizer, int(seq_len), int(batch_size), int(seed)
        self.segments, self.pack = segments, bool(pack)
        self.streaming = streaming or kind != "text"
        self.kind, self.column = kind, column
        self.source = StreamedFiles(self.files, kind, self.seed, column) if self.streaming else \
            IndexedText(self.files, self.seed, by_line=not self.pack)
        single = ShardStream if self.pack else LineStream
        self._streams = [single(self.source, s, self.shards.total, tokenizer, self.seq_len) if segments == 1
                         else PairStream(self.source, s, self.shards.total, tokenizer, self.seq_len, self.seed)
                         for s in self.shards.indices]
        self._rows = [shard_rows(self.batch_size, self.shards.total)[s] for s in self.shards.indices]
        self._served = 0    # batches so far: not needed to resume, recorded so that a checkpoint says it

    @property
    def num_documents(self) -> int:
        """Documents of an indexed corpus (a streamed one is never counted)."""
        if self.streaming:
            raise AttributeError("a streamed corpus does not count its documents")
        return len(self.source.docs)

    @property
    def epoch(self) -> int:
        """The epoch of this process's first shard (each shard passes over its documents at its own pace)."""
        return self._streams[0].epoch

    def __iter__(self) -> "CorpusBatcher":
        return self

    def __next__(self) -> Batch | Rows:
        sequences = []
        for stream, (lo, hi) in zip(self._streams, self._rows):
            sequences += stream.take(hi - lo)
        self._served += 1
        tok, cls, sep = self.tokenizer, [self.tokenizer.cls_id], [self.tokenizer.sep_id]
        if self.segments == 1:
            batch = tok.batch_from_ids([cls + s + sep for s in sequences], width=self.seq_len)
        else:
            batch = tok.batch_from_ids([cls + a + sep + b + sep for a, b in sequences], width=self.seq_len,
                                       type_ids=[[0] * (len(a) + 2) + [1] * (len(b) + 1) for a, b in sequences])
        lo, hi = rows_of(self.shards, self.batch_size)
        return batch if (lo, hi) == (0, self.batch_size) else Rows(batch, lo, hi, self.batch_size)

    def close(self) -> None:
        self.source.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- resume ---------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"files": [p.name for p in self.files], "sizes": [p.stat().st_size for p in self.files],
                "streaming": self.streaming, "column": self.column if self.streaming else None,
                "seq_len": self.seq_len, "segments": self.segments, "batch_size": self.batch_size, "seed": self.seed,
                "vocab": self.tokenizer.fingerprint()[:16], "shards": self.shards.total,
                **({} if self.pack else {"pack": False})}   # packed states are as before unpacked rows existed

    def state_dict(self) -> dict:
        return {"version": 2, **self._identity(), "batches": self._served,
                "streams": {str(s): stream.state_dict() for s, stream in zip(self.shards.indices, self._streams)}}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != 2:
            raise DataError("not a CorpusBatcher state (missing or unknown version)")
        state = {"segments": 1, **state}    # written before pairs existed
        if state.get("pack", True) != self.pack:
            kinds = {True: "packed", False: "one-line"}
            raise DataError(f"corpus state has {kinds[state.get('pack', True)]} rows, this batcher "
                            f"{kinds[self.pack]} rows")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise DataError(f"corpus state does not match this batcher: {key} is {state.get(key)!r} in the "
                                f"state, {value!r} here (the corpus, tokenizer, batch settings or the number of "
                                f"ranks x workers changed)")
        missing = [s for s in self.shards.indices if str(s) not in state["streams"]]
        if missing:
            raise DataError(f"corpus state holds shards {sorted(state['streams'], key=int)}, this process reads "
                            f"{list(self.shards.indices)}")
        try:
            for s, stream in zip(self.shards.indices, self._streams):
                stream.load_state_dict(state["streams"][str(s)])
        except (KeyError, TypeError, ValueError, StopIteration, AttributeError) as e:
            raise DataError(f"corpus state is corrupt ({type(e).__name__}: {e})") from None
        self._served = int(state["batches"])
