"""The general-distillation corpus, streamed as batches of packed sequences that resume exactly."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tasks import DataError
from .tokenizer import Batch, Tokenizer


class CorpusBatcher:
    """Streams the general corpus (directory of .txt files: one sentence/paragraph per line, blank line
    between documents) into sequences of up to seq_len tokens ([CLS] ... [SEP], sentences packed within a
    document, as BERT pre-training data), batched. Never loads the whole corpus as token ids: it keeps
    only each document's byte range and reads lines as it goes.

    The order of documents (across all files) is reshuffled every epoch from (seed, epoch); a line longer
    than a sequence is cut into several. `state_dict()` taken between batches records the position
    (epoch, document, byte offset) and the partly filled sequences, so that a resumed batcher yields
    exactly the batches an uninterrupted one would have."""

    def __init__(self, corpus_dir: str | Path, tokenizer: Tokenizer, seq_len: int = 128, batch_size: int = 32,
                 seed: int = 0):
        if seq_len < 3:
            raise DataError(f"seq_len must be >= 3 ([CLS], one token, [SEP]), got {seq_len}")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        corpus = Path(corpus_dir)
        if corpus.is_file():
            files = [corpus]
        elif corpus.is_dir():
            files = sorted(p for p in corpus.iterdir() if p.suffix == ".txt" and p.is_file())
            if not files:
                raise DataError(f"corpus directory {corpus} holds no .txt files")
        else:
            raise DataError(f"corpus directory not found: {corpus}")
        self.corpus_dir = corpus
        self.files = files
        self.tokenizer = tokenizer
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._docs = self._index_documents()   # (n, 3) int64: file index, start byte, end byte
        self._total_bytes = sum(p.stat().st_size for p in files)
        if len(self._docs) == 0:
            raise DataError(f"corpus {corpus} holds no text (only blank lines)")
        self._handles: dict[int, object] = {}
        self._reset_position(epoch=0)
        self._served = 0    # batches so far: not needed to resume, recorded so that a checkpoint says it

    # --- indexing and position ------------------------------------------------------------

    def _index_documents(self) -> np.ndarray:
        docs = []
        for file_index, path in enumerate(self.files):
            start = None
            offset = 0
            with open(path, "rb") as f:
                for line in f:
                    blank = not line.strip()
                    if blank and start is not None:
                        docs.append((file_index, start, offset))
                        start = None
                    elif not blank and start is None:
                        start = offset
                    offset += len(line)
            if start is not None:
                docs.append((file_index, start, offset))
        return np.array(docs, dtype=np.int64).reshape(-1, 3)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self._docs))

    def _reset_position(self, epoch: int) -> None:
        self.epoch = epoch
        self._order_cache = self._order(epoch)
        self._doc_pos = 0                        # index into this epoch's document order
        self._offset = int(self._docs[self._order_cache[0], 1])
        self._buffer: list[int] = []             # tokens of the sequence being filled
        self._pending: list[list[int]] = []      # finished sequences not yet batched

    @property
    def num_documents(self) -> int:
        return len(self._docs)

    def _handle(self, file_index: int):
        if file_index not in self._handles:
            self._handles[file_index] = open(self.files[file_index], "rb")
        return self._handles[file_index]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # --- packing --------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._buffer:
            self._pending.append(self._buffer)
            self._buffer = []

    def _add_line(self, ids: list[int]) -> None:
        room = self.seq_len - 2
        if len(self._buffer) + len(ids) <= room:
            self._buffer.extend(ids)
            return
        self._flush()
        while len(ids) > room:                   # a line longer than a sequence: cut it
            self._pending.append(ids[:room])
            ids = ids[room:]
        self._buffer = list(ids)

    def _step(self) -> None:
        """Read one line of the current document, or close the document and move to the next."""
        file_index, _, end = (int(v) for v in self._docs[self._order_cache[self._doc_pos]])
        if self._offset < end:
            handle = self._handle(file_index)
            handle.seek(self._offset)
            line = handle.readline()
            self._offset += len(line)
            text = line.decode("utf-8", errors="replace").strip()
            if text:
                ids = self.tokenizer.token_ids(text)
                if ids:
                    self._add_line(ids)
            return
        self._flush()                            # sentences are packed within a document only
        self._doc_pos += 1
        if self._doc_pos == len(self._docs):     # next epoch, in a new document order
            self.epoch += 1
            self._order_cache = self._order(self.epoch)
            self._doc_pos = 0
        self._offset = int(self._docs[self._order_cache[self._doc_pos], 1])

    def __iter__(self) -> "CorpusBatcher":
        return self

    def __next__(self) -> Batch:
        # Each step consumes a line or closes a document: more idle steps than that is a whole epoch
        # without a single token (text that normalises to nothing), which would otherwise loop forever.
        idle_limit = self._total_bytes + 2 * len(self._docs)
        idle = 0
        while len(self._pending) < self.batch_size:
            before = (len(self._pending), len(self._buffer))
            self._step()
            idle = idle + 1 if (len(self._pending), len(self._buffer)) == before else 0
            if idle > idle_limit:
                raise DataError(f"corpus {self.corpus_dir} yields no tokens")
        sequences, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
        self._served += 1
        tok = self.tokenizer
        return tok.batch_from_ids([[tok.cls_id] + s + [tok.sep_id] for s in sequences])

    # --- resume ---------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"files": [p.name for p in self.files], "sizes": [p.stat().st_size for p in self.files],
                "seq_len": self.seq_len, "batch_size": self.batch_size, "seed": self.seed,
                "vocab": self.tokenizer.fingerprint()[:16]}

    def state_dict(self) -> dict:
        return {"version": 1, **self._identity(), "epoch": self.epoch, "doc_pos": self._doc_pos,
                "offset": self._offset, "buffer": list(self._buffer),
                "pending": [list(s) for s in self._pending], "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != 1:
            raise DataError("not a CorpusBatcher state (missing or unknown version)")
        identity = self._identity()
        for key, value in identity.items():
            if state.get(key) != value:
                raise DataError(f"corpus state does not match this batcher: {key} is {state.get(key)!r} in the "
                                f"state, {value!r} here (the corpus, tokenizer or batch settings changed)")
        if not 0 <= state["doc_pos"] < len(self._docs):
            raise DataError(f"corpus state: document position {state['doc_pos']} out of range")
        self._reset_position(int(state["epoch"]))
        self._doc_pos = int(state["doc_pos"])
        self._offset = int(state["offset"])
        self._buffer = [int(t) for t in state["buffer"]]
        self._pending = [[int(t) for t in s] for s in state["pending"]]
        self._served = int(state["batches"])
