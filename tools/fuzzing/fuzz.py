"""Coverage-guided fuzzing of the runtime's readers: the safetensors reader, the whole model loader
and the WordPiece tokenizer of minitinybert/runtime.py.

    python -m tools.fuzzing.fuzz reader    [--runs N] [--seconds S] [--corpus DIR]
    python -m tools.fuzzing.fuzz load      [--runs N] [--seconds S] [--corpus DIR]
    python -m tools.fuzzing.fuzz tokenizer [--runs N] [--seconds S] [--corpus DIR]
    python -m tools.fuzzing.fuzz nasty        (re)write the hand-made hostile files of tests/fuzz_corpus/reader/
    --engine hypothesis: Hypothesis instead of atheris (no coverage guidance, 20-50x slower here);
    atheris is used when installed: pip install atheris, or pip install -e .[fuzz]

Targets and what each input must satisfy (anything else is a failure):
  reader     bytes -> file -> read_safetensors(): tensors returned, or RuntimeModelError. Returned
             tensors tile the data section, have the shape and byte size the header gives and
             read-only views inside the file.
  load       bytes -> file -> runtime.load() (header, metadata: config JSON, labels, vocabulary;
             tensors against the config), then predict() / embed() on a short text when it loads:
             success or RuntimeModelError only; the `tokenizers` backend built from the file's
             vocabulary gives the pure-Python backend's ids.
  reader and load: no allocation beyond O(file size): tracemalloc's peak during the call (Python
             objects and NumPy buffers) must stay under ALLOC_PER_BYTE x the file size + ALLOC_SLACK,
             and the address space is capped (RLIMIT_AS) at the warmed-up process plus AS_MARGIN,
             so that an allocation tracemalloc cannot see is a MemoryError, which is a failure.
  tokenizer  bytes -> text (decoded as UTF-8 with replacement or surrogateescape, Latin-1, UTF-16
             with lone surrogates, or raw code points), optionally a pair and a max_length, for the
             BERT vocabulary (uncased and cased) and a tiny one: normalize() returns a string,
             token_ids() are in range, tokenize() names them, encode() gives [CLS] ... [SEP] within
             max_length with type ids 0/1, and the `tokenizers` backend gives the same ids as the
             pure-Python one. No exception at all.

Mutations: libFuzzer's (bit flips, byte edits, splices, a dictionary of header words, comparison
operands it traces in runtime.py); for reader and load, half of them are structural instead
(mutate_model_file: one value of the parsed header, or of the JSON in its metadata, changed to an
edge case or another type, keys dropped or renamed, vocabulary lines edited, the header re-padded
so that every tensor is misaligned), which keep a tenth of the inputs loadable.

Layout: this process writes the seeds (small runtime files from tiny configs, a few plain safetensors
files, the regression corpus tests/fuzz_corpus/) and runs the fuzzer in one child process (libFuzzer
under atheris), whose output it shows and summarises. A failing input does not stop the run: it is
saved under runs/fuzz/TARGET/failures/ (one file per distinct exception type and place) and
counted; copy the ones that found bugs into tests/fuzz_corpus/. Coverage ("cov", code edges of
runtime.py reached, "ft" features) is libFuzzer's; the corpus grows in --corpus (default
runs/fuzz/TARGET/corpus).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REGRESSION = REPO / "tests" / "fuzz_corpus"
TARGETS = ("reader", "load", "tokenizer")
ALLOC_PER_BYTE = 64          # a JSON header becomes Python objects: up to ~40 bytes per header byte
ALLOC_SLACK = 2 * 2 ** 20    # constant part of the bound (error messages, small arrays, caches)
AS_MARGIN = 512 * 2 ** 20    # address space beyond the warmed-up process (libFuzzer's own corpus too)
MAX_LEN = {"reader": 32768, "load": 32768, "tokenizer": 2048}
STATUS_EVERY = 20000
# the safetensors format's dtypes as NumPy reads them (BF16 as raw 16-bit words): the fuzzer's own
# table, so that the reader's arrays are checked against the format, not against the reader itself
SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                      "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}

READER_DICT = ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"F32"', '"F16"', '"F64"', '"BF16"',
               '"I8"', '"I16"', '"I32"', '"I64"', '"U8"', '"BOOL"', '"format"', '"minitinybert-runtime/1"',
               '"config"', '"labels"', '"vocab"', '"do_lower_case"', '"max_length"', '"true"', '"false"',
               '"num_labels"', '"hidden_size"', '"vocab_size"', '"problem_type"', '"layer_norm_eps"',
               '"hidden_act"', '"gelu"', '"regression"', '"embedding"', "_scale", "[UNK]", "[CLS]", "[SEP]",
               "\\u0000", "\\ud800", "1e999", "NaN", "-1", "4294967296", "18446744073709551615", "[[[[", "{{{{"]
TOKENIZER_DICT = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "##", "\u0301", "\u0308", "\u00e9", "\u00df",
                  "\u03a3", "\u0130", "\u4e00", "\u3000", "\u200b", "\ufeff", "\ufffd", "\u2028", "\U0001f600",
                  "\U00011938", "\u1c89", "\ud800", "\udc80", " ", "\t", "\x00", "\x7f"]


# =================================================================================================
# targets (run in the child)
# =================================================================================================

class Failure(Exception):
    """An input broke a property the target checks (not an exception of the code under test)."""


class Stats:
    def __init__(self):
        self.inputs = self.accepted = 0
        self.failures = {}            # signature -> (count, first message, saved file)
        self.worst_alloc = (0.0, 0, 0)   # (peak / bound, peak bytes, file size): the closest to the bound
        self.slowest = (0.0, 0)          # (seconds, input size)


def _alloc_bound(size: int) -> int:
    return ALLOC_PER_BYTE * size + ALLOC_SLACK


class ReaderTarget:
    """Bytes as a model file, through read_safetensors (or load, with `load=True`)."""

    def __init__(self, runtime, workdir: Path, load: bool):
        import numpy as np
        import tracemalloc
        self.np, self.tracemalloc, self.runtime, self.load = np, tracemalloc, runtime, load
        self.path = workdir / "input.safetensors"
        tracemalloc.start(1)              # once: each start/stop cycle leaks ~4 KB (CPython 3.11)

    def __call__(self, data: bytes, stats: Stats):
        self.path.write_bytes(data)
        tm = self.tracemalloc
        tm.reset_peak()
        before = tm.get_traced_memory()[0]
        try:
            ok = self.run_load() if self.load else self.run_reader(len(data))
        finally:
            peak = tm.get_traced_memory()[1] - before
        stats.accepted += ok
        share = peak / _alloc_bound(len(data))
        if share > stats.worst_alloc[0]:
            stats.worst_alloc = (share, peak, len(data))
            self.path.with_name("largest-allocation").write_bytes(data)
        if peak > _alloc_bound(len(data)):
            raise Failure(f"allocated {peak} bytes for a {len(data)}-byte file (bound {_alloc_bound(len(data))})")

    def run_reader(self, size: int) -> bool:
        runtime, np = self.runtime, self.np
        try:
            metadata, tensors, mm = runtime.read_safetensors(self.path)
        except runtime.RuntimeModelError:
            return False
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise Failure(f"metadata is not a dict of strings: {str(metadata)[:100]}")
        header_end = 8 + int.from_bytes(self.path.read_bytes()[:8], "little")
        spans = []
        for name, (dtype, arr, offset) in tensors.items():
            if arr.dtype != np.dtype(SAFETENSORS_DTYPES[dtype]) or arr.flags.writeable and offset is not None:
                raise Failure(f"tensor {name!r}: dtype {arr.dtype} for {dtype}, writeable {arr.flags.writeable}")
            if offset is not None:
                if not header_end <= offset <= offset + arr.nbytes <= size:
                    raise Failure(f"tensor {name!r} at [{offset}, {offset + arr.nbytes}) outside the data section")
                spans.append((offset, offset + arr.nbytes))
        spans.sort()
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise Failure(f"tensors overlap: {spans[:10]}")
        return True

    def run_load(self) -> bool:
        runtime = self.runtime
        try:
            model = runtime.load(self.path, tokenizer="python", kernels="numpy")
        except runtime.RuntimeModelError:
            return False
        try:
            if model.num_labels:
                out = model.predict(["hello world, a b", "[SEP] x"])
                if len(out) != 2:
                    raise Failure(f"predict gave {len(out)} results for 2 texts")
            else:
                vectors = model.embed(["hello world, a b"])
                if vectors.shape != (1, model.config["hidden_size"]):
                    raise Failure(f"embed gave shape {vectors.shape}")
        except runtime.RuntimeModelError:
            pass
        # the file's vocabulary through both tokenizer backends
        rust = runtime.WordPieceTokenizer(model.tokenizer.id_to_token, model.tokenizer.do_lower_case, "tokenizers")
        texts = ["hello world, a b", "[SEP] x\u00e9 \u4e00", "##a b##"]
        if rust.token_ids(texts) != model.tokenizer.token_ids(texts):
            raise Failure("the tokenizer backends disagree on the file's vocabulary")
        return True


def decode_text(mode: int, raw: bytes) -> str:
    """Bytes -> text in one of the ways text reaches the tokenizer."""
    if mode == 0:
        return raw.decode("utf-8", "replace")
    if mode == 1:
        return raw.decode("utf-8", "surrogateescape")         # undecodable bytes as lone surrogates
    if mode == 2:
        return raw.decode("latin-1")
    if mode == 3:
        return raw[:len(raw) // 2 * 2].decode("utf-16-le", "surrogatepass")
    if mode == 4:                                              # any code point, surrogates included
        return "".join(chr(int.from_bytes(raw[i:i + 3], "little") % 0x110000) for i in range(0, len(raw) - 2, 3))
    return raw.decode("utf-8", "ignore")


def tokenizer_case(data: bytes):
    """(text, pair or None, lower, small_vocab, max_length) from fuzzer bytes: byte 0 is the decoding
    (bits 0-2) and flags (bit 3 lower-case, 4 a pair, 5 the tiny vocabulary), byte 1 the max_length,
    byte 2 where the pair splits."""
    head, raw = data[:3].ljust(3, b"\0"), data[3:]
    mode, lower, pair, small = (head[0] & 7) % 6, bool(head[0] & 8), head[0] & 16, bool(head[0] & 32)
    max_length = 4 + head[1] % 60
    if pair:
        cut = len(raw) * head[2] // 256
        return decode_text(mode, raw[:cut]), decode_text(mode, raw[cut:]), lower, small, max_length
    return decode_text(mode, raw), None, lower, small, max_length


class TokenizerTarget:
    def __init__(self, runtime, vocab_file):
        self.runtime = runtime
        tiny = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghij.,!") + ["##" + c for c in "abcdefghij"] \
            + ["ab", "##ab", "\u00e9", "\u4e00", "hello", "world"]
        vocabs = {True: tiny}
        if vocab_file:
            with open(vocab_file, encoding="utf-8") as f:
                vocabs[False] = [line.rstrip("\r\n") for line in f]
        else:
            vocabs[False] = tiny
        self.pairs = {}
        for small, tokens in vocabs.items():
            for lower in (True, False):
                py = runtime.WordPieceTokenizer(tokens, lower, backend="python")
                rs = runtime.WordPieceTokenizer(tokens, lower, backend="tokenizers")
                rs.token_ids(["warm up"])         # builds the Rust tokenizer now, not in the first input
                self.pairs[small, lower] = (py, rs)

    def __call__(self, data: bytes, stats: Stats):
        text, pair, lower, small, max_length = tokenizer_case(data)
        check_tokenizer_case(self.runtime, *self.pairs[small, lower], text, pair, max_length)
        stats.accepted += 1


def check_tokenizer_case(runtime, py, rs, text, pair, max_length):
    """The tokenizer properties on one case; raises Failure (or the tokenizer's own exception)."""
    n = len(py.id_to_token)
    norm = py.normalize(text)
    if not isinstance(norm, str):
        raise Failure(f"normalize returned {type(norm).__name__}")
    ids = py.token_ids([text])[0]
    if not all(type(i) is int and 0 <= i < n for i in ids):
        raise Failure(f"ids out of range: {ids[:20]}")
    if py.tokenize(text) != [py.id_to_token[i] for i in ids]:
        raise Failure("tokenize() does not name token_ids()")
    rs_ids = rs.token_ids([text])[0]
    if rs.backend != "tokenizers":
        raise Failure("the tokenizers backend fell back to Python")
    if rs_ids != ids:
        raise Failure(f"backends disagree on {text!r:.200}: python {ids[:30]}, tokenizers {rs_ids[:30]}")
    inputs = [text] if pair is None else [(text, pair)]
    (enc_ids, types, truncated), = py.encode(inputs, max_length)
    if rs.encode(inputs, max_length) != [(enc_ids, types, truncated)]:
        raise Failure(f"backends disagree on encode({inputs!r:.200}, {max_length})")
    specials = 2 if pair is None else 3
    if (not specials <= len(enc_ids) <= max_length or len(types) != len(enc_ids) or enc_ids[0] != py.cls_id
            or enc_ids[-1] != py.sep_id or not set(types) <= {0, 1} or not all(0 <= i < n for i in enc_ids)):
        raise Failure(f"encode gave {enc_ids[:40]} / {types[:40]} for max_length {max_length}")
    if pair is None and (enc_ids[1:-1] != ids[:max_length - 2] or truncated != (len(ids) > max_length - 2)):
        raise Failure("encode() is not [CLS] + token_ids() truncated + [SEP]")


# =================================================================================================
# structure-aware mutations of model files
# =================================================================================================
# libFuzzer's byte mutations rarely keep a JSON header valid: half of the mutations instead parse
# the header (and the JSON inside its metadata strings: config, labels) and change one value to an
# edge case, a neighbour or another type, rename or drop a key, edit the vocabulary, or re-pad the
# header so that every tensor is misaligned.

EDGE_INTS = [0, 1, -1, 2, 3, 7, 8, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 48 + 1, 2 ** 53 + 1, 2 ** 63, 2 ** 64, 10 ** 6,
             10 ** 6 + 1, 10 ** 7 + 1, 65536, 65537]
EDGE_STRS = ["", "NaN", "F32", "F16", "BF16", "F64", "I8", "I32", "U8", "BOOL", "true", "false", "TRUE", " true ",
             "gelu", "relu", "regression", "embedding", "single_label_classification", "[]", "{}", "[UNK]", "[CLS]",
             "[SEP]", "##", "\ud800", "\u00e9", "1e999", "-1", "3", "1_0", "minitinybert-runtime/1"]


def _mutate_value(value, rng, depth=0):
    """value with one edit somewhere inside it."""
    roll = rng.random()
    if depth < 8 and isinstance(value, dict) and value and (roll < 0.8 or depth == 0):
        key = "__metadata__" if depth == 0 and "__metadata__" in value and rng.random() < 0.4 else rng.choice(list(value))
        out = dict(value)
        r = rng.random()
        if r < 0.1:
            del out[key]
        elif r < 0.2:
            out[rng.choice(EDGE_STRS) + rng.choice(["", key])] = out.pop(key)
        else:
            out[key] = _mutate_value(value[key], rng, depth + 1)
        return out
    if depth < 8 and isinstance(value, list) and value and roll < 0.8:
        out, i = list(value), rng.randrange(len(value))
        r = rng.random()
        if r < 0.15:
            del out[i]
        elif r < 0.3:
            out.insert(i, out[i])
        else:
            out[i] = _mutate_value(value[i], rng, depth + 1)
        return out
    if isinstance(value, str):
        try:
            inner = json.loads(value)                      # metadata config / labels: JSON in a string
        except (ValueError, RecursionError):
            inner = None
        if isinstance(inner, (dict, list)) and rng.random() < 0.8:
            return json.dumps(_mutate_value(inner, rng, depth + 1))
        if "\n" in value and rng.random() < 0.8:           # the vocabulary
            tokens = value.split("\n")
            i = rng.randrange(len(tokens))
            r = rng.random()
            if r < 0.5:
                tokens[i] = rng.choice(EDGE_STRS + tokens + [tokens[i] * 2, tokens[i][1:], "a b", "\u00e9\u0301"])
            elif r < 0.75:
                del tokens[i]
            else:
                tokens.insert(i, rng.choice(tokens))
            return "\n".join(tokens)
        return rng.choice([rng.choice(EDGE_STRS), value[:-1], value * 2, value + rng.choice(EDGE_STRS),
                           value.upper(), rng.choice(EDGE_STRS)])
    if type(value) is int:
        return rng.choice([rng.choice(EDGE_INTS), value + 1, value - 1, value * 2, -value, value + rng.choice(EDGE_INTS),
                           float(value)])
    if isinstance(value, float):
        return rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, 1e-12, 1.0, -1.0, int(value) if math.isfinite(value) else 0])
    return rng.choice([None, True, False, [], {}, "x", 0, 1.5, [0, 0], value])


def mutate_model_file(data: bytes, rng) -> bytes | None:
    """A structural edit of a safetensors file, or None when its header is not a JSON object."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            return None
    except (ValueError, RecursionError):
        return None
    body = data[8 + n:]
    r = rng.random()
    if r < 0.1:                                            # re-pad: every tensor misaligned
        raw = json.dumps(header).encode()
        raw += b" " * rng.randrange(0, 8)
        return len(raw).to_bytes(8, "little") + raw + body
    if r < 0.15:
        cut = rng.choice([1, 2, 4, 8, 16])
        body = body[:-cut] if rng.random() < 0.5 else body + bytes(cut)
    else:
        for _ in range(1 + (rng.random() < 0.3)):
            header = _mutate_value(header, rng)
    raw = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body


# =================================================================================================
# child: the fuzzing process
# =================================================================================================

def dict_entry(word: str) -> str:
    """A libFuzzer dictionary entry: printable ASCII as is, other bytes (UTF-8) as \\xHH."""
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}"
                   for b in word.encode("utf-8", "surrogatepass"))


def signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "runtime.py" in f.filename] or frames
    place = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    if isinstance(exc, Failure):
        return f"Failure {str(exc).split(':')[0][:60]} @{place}"
    return f"{type(exc).__name__} @{place}"


def child_main(args):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"      # one process, one thread: no Rust pool
    os.environ["MINITINYBERT_NUMBA"] = "0"
    outdir = Path(args.outdir)
    faildir = outdir / "failures"
    faildir.mkdir(parents=True, exist_ok=True)
    if args.engine == "atheris":
        import atheris
        with atheris.instrument_imports(include=["minitinybert"]):
            from minitinybert import runtime
    else:
        from minitinybert import runtime
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    if args.target == "tokenizer":
        target = TokenizerTarget(runtime, args.vocab)
    else:
        target = ReaderTarget(runtime, workdir, load=args.target == "load")
    stats = Stats()
    seeds = [p for d in args.seed_dirs for p in sorted(Path(d).glob("*")) if p.is_file()]
    for p in seeds:                       # warm up (lazy imports, compiled patterns) before the cap
        try:
            target(p.read_bytes()[:MAX_LEN[args.target]], Stats())
        except Exception:  # noqa: BLE001 - the fuzzer will meet it again and record it
            pass
    if args.target != "tokenizer":
        with open("/proc/self/status") as f:
            vm = int(re.search(r"VmSize:\s+(\d+) kB", f.read()).group(1)) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + AS_MARGIN, vm + AS_MARGIN))
        print(f"[fuzz] address space capped at {(vm + AS_MARGIN) >> 20} MB (warmed-up process {vm >> 20} MB "
              f"+ {AS_MARGIN >> 20} MB)", file=sys.stderr, flush=True)
    start = time.perf_counter()

    def finish():
        elapsed = time.perf_counter() - start
        result = {"target": args.target, "engine": args.engine, "inputs": stats.inputs, "seconds": round(elapsed, 1),
                  "exec_per_s": round(stats.inputs / max(elapsed, 1e-9), 1), "accepted": stats.accepted,
                  "failures": {k: list(v) for k, v in stats.failures.items()},
                  "worst_alloc": {"share": round(stats.worst_alloc[0], 4), "peak": stats.worst_alloc[1],
                                  "size": stats.worst_alloc[2]},
                  "slowest": {"seconds": round(stats.slowest[0], 4), "size": stats.slowest[1]}}
        if (workdir / "largest-allocation").exists():
            shutil.copy(workdir / "largest-allocation", outdir / "largest-allocation-input")
        shutil.rmtree(workdir, ignore_errors=True)
        print("FUZZ-RESULT " + json.dumps(result), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)

    def one_input(data: bytes):
        t0 = time.perf_counter()
        try:
            target(data, stats)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - what we look for (a Rust panic is a BaseException)
            sig = signature(e)
            count, message, saved = stats.failures.get(sig, (0, f"{type(e).__name__}: {str(e)[:300]}", ""))
            if not saved:
                saved = str(faildir / f"{args.target}-{hashlib.sha1(data).hexdigest()[:16]}")
                Path(saved).write_bytes(data)
                tb = "".join(traceback.format_exception(e)[-4:])
                print(f"[fuzz] NEW FAILURE #{len(stats.failures) + 1} {sig}\n{tb}[fuzz] input saved to {saved}",
                      file=sys.stderr, flush=True)
            stats.failures[sig] = (count + 1, message, saved)
        dt = time.perf_counter() - t0
        if dt > stats.slowest[0]:
            stats.slowest = (dt, len(data))
            if stats.inputs > 1000:            # past the start-up: kept to look at
                (outdir / "slowest-input").write_bytes(data)
        stats.inputs += 1
        if stats.inputs % STATUS_EVERY == 0:
            elapsed = time.perf_counter() - start
            print(f"[fuzz] {stats.inputs} inputs, {stats.inputs / elapsed:.0f}/s, {elapsed:.0f} s, accepted "
                  f"{stats.accepted}, failures {sum(c for c, _, _ in stats.failures.values())} "
                  f"({len(stats.failures)} distinct)" + (f", largest allocation {100 * stats.worst_alloc[0]:.1f}% of the "
                                                        f"bound" if args.target != "tokenizer" else ""), file=sys.stderr,
                  flush=True)
        if stats.inputs >= args.runs or (args.seconds and time.perf_counter() - start >= args.seconds):
            finish()

    if args.engine == "atheris":
        dict_file = outdir / "fuzz.dict"
        words = TOKENIZER_DICT if args.target == "tokenizer" else READER_DICT
        dict_file.write_text("".join(f'"{dict_entry(w)}"\n' for w in words))
        libfuzzer_args = [sys.argv[0], str(args.corpus), *args.seed_dirs, f"-max_len={MAX_LEN[args.target]}",
                          f"-runs={args.runs + len(seeds) + 10}", "-timeout=20", "-rss_limit_mb=4096",
                          f"-dict={dict_file}", f"-artifact_prefix={outdir}/", "-print_final_stats=1"]
        if args.seconds:
            libfuzzer_args.append(f"-max_total_time={int(args.seconds) + 60}")
        import random
        custom = {}
        if args.target != "tokenizer":
            def mutator(data, max_size, seed):
                rng = random.Random(seed)
                if rng.random() < 0.5:
                    try:
                        out = mutate_model_file(data, rng)
                    except RecursionError:          # a header nested about as deep as json allows
                        out = None
                    if out is not None and len(out) <= max_size:
                        return out
                return atheris.Mutate(data, max_size)
            custom["custom_mutator"] = mutator
        atheris.Setup(libfuzzer_args, one_input, **custom)
        atheris.Fuzz()
    else:
        run_hypothesis(args, seeds, one_input)
    finish()


def run_hypothesis(args, seeds, one_input):
    """No coverage guidance: random bytes, seeds with random byte edits, insertions and cuts, and
    (model files) seeds with a structural edit."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    seed_bytes = [p.read_bytes()[:MAX_LEN[args.target]] for p in seeds] or [b""]

    def mutate(seed, edits):
        data = bytearray(seed)
        for kind, where, value in edits:
            pos = int(where * len(data)) if data else 0
            if kind == 0 and data:
                data[min(pos, len(data) - 1)] = value
            elif kind == 1:
                data[pos:pos] = bytes([value]) * (1 + value % 8)
            else:
                del data[pos:pos + 1 + value]
        return bytes(data)

    edits = st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                     max_size=8)
    inputs = st.one_of(st.binary(max_size=1024),
                       st.builds(mutate, st.sampled_from(seed_bytes), edits))
    if args.target != "tokenizer":
        inputs = inputs | st.builds(lambda seed, rng: mutate_model_file(seed, rng) or seed,
                                    st.sampled_from(seed_bytes), st.randoms(use_true_random=True))

    @settings(max_examples=args.runs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def run(data):
        one_input(data)

    for data in seed_bytes:
        one_input(data)
    run()


# =================================================================================================
# parent: seeds, the child, the summary
# =================================================================================================

def make_seeds(target: str, seed_dir: Path):
    """A few valid small runtime files (tiny configs, every dtype, every head) and plain safetensors
    files; for the tokenizer, a few texts."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    if any(seed_dir.iterdir()):
        return
    if target == "tokenizer":
        texts = [b"\x00Hello, World! unaffable [SEP] caf\xc3\xa9", b"\x18\x20\x80Na\xc3\xafve r\xc3\xa9sum\xc3\xa9\xe4\xb8\x80",
                 b"\x11\x10\x40ab\xffcd\xfe\xed\xa0\x80 [MASK]x", b"\x04\x08\x00" + bytes(range(0, 240, 3)),
                 b"\x0b\x30\x60" + "ΣΑΣ σας ǅ İstanbul ﬁ\u200b\ufeff".encode("utf-16-le")]
        for i, t in enumerate(texts):
            (seed_dir / f"text{i}").write_bytes(t)
        return
    import numpy as np
    from minitinybert.engine.config import BertConfig
    from minitinybert.export import export_model
    from minitinybert.engine.model import Bert
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefgh") + ["##" + c for c in "abcd"] + ["hello"]
    for i, (labels, dtype, quant, lower) in enumerate([(2, "float32", False, True), (3, "float16", False, False),
                                                       (1, "int8", True, True), (0, "float32", False, True),
                                                       (2, "int8", False, True)]):
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=6, max_position_embeddings=8, num_labels=labels,
                         **({"id2label": {j: f"c{j}" for j in range(labels)}} if labels >= 2 else {}))
        export_model(Bert(cfg, seed=i), seed_dir / f"model{i}-{dtype}", vocab, lower, dtype,
                     quantize_embeddings=quant, max_length=8)
    from safetensors.numpy import save
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((1, 2), np.float16),
              "c": np.array(3, np.int64), "d": np.zeros((0, 4), np.int8), "e": np.array([True, False]),
              "f": np.arange(3, dtype=np.float64), "g": np.arange(4, dtype=np.uint8).reshape(2, 2, 1)}
    (seed_dir / "plain-all-dtypes").write_bytes(save(arrays, metadata={"k": "v"}))
    (seed_dir / "plain-empty").write_bytes(save({}))


def _split(data: bytes):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _file(header, body: bytes = b"", claimed=None) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode("utf-8", "surrogatepass") \
        if not isinstance(header, bytes) else header
    raw += b" " * (-len(raw) % 8)
    return (len(raw) if claimed is None else claimed).to_bytes(8, "little") + raw + body


def nasty_files(seed_dir: Path) -> dict:
    """Hand-made hostile files: {name: bytes}. Each must be refused with RuntimeModelError, using
    little memory (tests/test_fuzz_corpus.py), or load."""
    header, body = _split((seed_dir / "model0-float32").read_bytes())
    q_header, q_body = _split((seed_dir / "model2-int8").read_bytes())
    meta, cfg = header["__metadata__"], json.loads(header["__metadata__"]["config"])
    weight = "encoder.layer.0.intermediate.dense.weight"
    names = sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])

    def entry(**changes):
        h = json.loads(json.dumps(header))
        h[weight].update(changes)
        return _file(h, body)

    def with_meta(**changes):
        h = json.loads(json.dumps(header))
        h["__metadata__"].update(changes)
        return _file(h, body)

    def with_cfg(**changes):
        return with_meta(config=json.dumps(dict(cfg, **changes)))

    one = {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    same = json.loads(json.dumps(header))
    same[names[1]] = dict(same[names[0]])                 # two tensors on the same bytes
    scale = json.loads(json.dumps(q_header))
    begin = scale[weight + "_scale"]["data_offsets"][0]
    nan_body = q_body[:begin] + b"\x00\x00\xc0\x7f" + q_body[begin + 4:]
    text = json.dumps(header)
    files = {
        "empty": b"", "seven-bytes": b"\x01" * 7, "header-len-zero": _file(b"", claimed=0),
        "header-len-2p60": _file(one, b"\0" * 4, claimed=2 ** 60),
        "header-len-2p64-1": _file(one, b"\0" * 4, claimed=2 ** 64 - 1),
        "header-len-past-end": _file(header, body, claimed=len(json.dumps(header)) + len(body) + 9),
        "shape-2p40-squared": entry(shape=[2 ** 40, 2 ** 40]),
        "shape-2p31-cubed": entry(shape=[2 ** 31 - 1] * 3),
        "shape-zero-times-huge": _file({"t": {"dtype": "F32", "shape": [0] + [2 ** 31 - 1] * 7,
                                              "data_offsets": [0, 0]}}),
        "shape-nine-dims": _file({"t": {"dtype": "U8", "shape": [1] * 9, "data_offsets": [0, 1]}}, b"\0"),
        "shape-negative": entry(shape=[-12, -8]), "shape-bool": entry(shape=[True, 96]),
        "shape-nan": _file('{"t": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', b"\0" * 4),
        "offsets-overlap": _file(same, body),
        "offsets-negative": entry(data_offsets=[-4, 380]),
        "offsets-2p64": entry(data_offsets=[2 ** 64, 2 ** 64 + 384]),
        "offsets-2p63": entry(data_offsets=[0, 2 ** 63]),
        "offsets-infinity": _file('{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, Infinity]}}', b"\0" * 4),
        "offsets-5000-digits": _file('{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, %s]}}' % ("9" * 5000)),
        "offsets-reversed": entry(data_offsets=[384, 0]),
        "trailing-bytes": _file(header, body + b"\0" * 8),
        "dtype-nan-string": entry(dtype="NaN"), "dtype-bare-nan": _file('{"t": {"dtype": NaN, "shape": [1], '
                                                                        '"data_offsets": [0, 4]}}', b"\0" * 4),
        "dtype-nested-990": _file('{"t": {"dtype": %s, "shape": [1], "data_offsets": [0, 4]}}'
                                  % ("[" * 990 + "]" * 990), b"\0" * 4),
        "not-utf8": _file(b'{"t\xff\xfe": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
        "utf8-overlong": _file(b'{"\xc0\xaf": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
        "utf8-encoded-surrogate": _file(b'{"\xed\xa0\x80": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                        b"\0" * 4),
        "escaped-lone-surrogate-name": _file('{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                              b"\0" * 4),
        "nested-10000": _file("[" * 10000 + "]" * 10000),
        "nested-objects-5000": _file('{"a":' * 5000 + "1" + "}" * 5000),
        "duplicate-tensor": _file(text[:-1] + ', "%s": %s}' % (weight, json.dumps(header[weight])), body),
        "duplicate-metadata-key": _file(text.replace('"__metadata__": {', '"__metadata__": {"format": "x", ', 1), body),
        "duplicate-entry-field": _file('{"t": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}}',
                                       b"\0" * 4),
        "metadata-not-strings": _file(dict(header, __metadata__={"format": 1}), body),
        "metadata-list": _file(dict(header, __metadata__=["format"]), body),
        "config-nested-900": with_meta(config="[" * 900 + "]" * 900),
        "config-nested-10000": with_meta(config="[" * 10000),
        "config-not-object": with_meta(config='"config"'),
        "config-huge-layers": with_cfg(num_hidden_layers=1024, hidden_size=65536, num_attention_heads=4096),
        "config-eps-nan": with_meta(config=meta["config"].replace('"layer_norm_eps": 1e-12', '"layer_norm_eps": NaN')),
        "config-duplicate-key": with_meta(config=meta["config"][:-1] + ', "num_labels": 3}'),
        "labels-default-million": with_meta(config=json.dumps(dict(cfg, num_labels=10 ** 6)), labels="[]"),
        "labels-nested": with_meta(labels="[" * 5000),
        "vocab-lone-surrogate": with_meta(vocab=meta["vocab"].replace("hello", "\udc80hello")),
        "vocab-duplicate": with_meta(vocab=meta["vocab"].replace("hello", "a")),
        "max-length-5000-digits": with_meta(max_length="9" * 5000),
        "int8-nan-scale": _file(q_header, nan_body),
        "int8-bias": _file(q_header.__class__({k: (dict(v, dtype="I8", data_offsets=v["data_offsets"])
                                                    if k == "pooler.dense.bias" else v) for k, v in q_header.items()}),
                           q_body),
    }
    return files


def default_vocab():
    path = REPO / "weights" / "all-MiniLM-L6-v2" / "vocab.txt"
    if path.exists():
        return str(path)
    try:
        from minitinybert.engine.teacher import resolve_teacher
        return str(resolve_teacher(None) / "vocab.txt")
    except Exception as e:  # noqa: BLE001
        print(f"[fuzz] no BERT vocabulary ({e}): fuzzing the tokenizer with the tiny one only", flush=True)
        return ""


def parent_main(args):
    outdir = REPO / "runs" / "fuzz" / args.target
    outdir.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus or outdir / "corpus")
    corpus.mkdir(parents=True, exist_ok=True)
    seed_dir = outdir / "seeds"
    make_seeds(args.target, seed_dir)
    seed_dirs = [str(seed_dir)]
    regression = REGRESSION / ("tokenizer" if args.target == "tokenizer" else "reader")
    if regression.is_dir():
        seed_dirs.append(str(regression))
    engine = args.engine
    if engine == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("[fuzz] atheris is not installed (pip install atheris): using Hypothesis", flush=True)
            engine = "hypothesis"
    # a module run from the checkout's root (cwd below), as this process runs: the child imports its package
    cmd = [sys.executable, "-m", "tools.fuzzing.fuzz", args.target, "--child", "--engine", engine, "--runs", str(args.runs),
           "--seconds", str(args.seconds or 0), "--corpus", str(corpus), "--outdir", str(outdir),
           "--vocab", default_vocab() if args.target == "tokenizer" else ""] + \
        [x for d in seed_dirs for x in ("--seed-dir", d)]
    print(f"[fuzz] {args.target}: engine {engine}, up to {args.runs} inputs"
          f"{f' or {args.seconds} s' if args.seconds else ''}, corpus {corpus}, seeds {', '.join(seed_dirs)}", flush=True)
    wall = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            cwd=REPO)
    result, cov, last = None, {}, []
    for line in proc.stdout:
        if line.startswith("FUZZ-RESULT "):
            result = json.loads(line[len("FUZZ-RESULT "):])
            continue
        print(line, end="", flush=True)
        last = (last + [line])[-30:]
        m = re.search(r"cov: (\d+) ft: (\d+) corp: (\d+)", line)
        if m:
            cov = {"cov": int(m.group(1)), "ft": int(m.group(2)), "corp": int(m.group(3))}
    code = proc.wait()
    wall = time.perf_counter() - wall
    if result is None:
        print(f"[fuzz] the fuzzing process died (exit {code}) without a result; a crash, timeout or "
              f"out-of-memory input is saved under {outdir}/ (crash-*, timeout-*, oom-*)", flush=True)
        return 1
    failures = result["failures"]
    print("[fuzz] failures by kind:" if failures else "[fuzz] no failures", flush=True)
    for sig, (count, message, saved) in failures.items():
        print(f"  {count:8d} x {sig}: {message[:200]}\n           first input: {saved}", flush=True)
    coverage = (f"cov {cov['cov']} edges, ft {cov['ft']}, corpus {cov['corp']}" if cov else "no coverage (Hypothesis)")
    alloc = result["worst_alloc"]
    alloc_text = (f", largest allocation against the bound: {alloc['peak']} B for a {alloc['size']} B file "
                  f"({100 * alloc['share']:.1f}% of {ALLOC_PER_BYTE} x size + {ALLOC_SLACK >> 20} MiB)"
                  if args.target != "tokenizer" else "")
    print(f"fuzz {args.target}: {result['inputs']} inputs in {result['seconds']} s ({result['exec_per_s']:.0f} exec/s, "
          f"wall {wall:.0f} s with start-up), engine {engine}, {coverage}, accepted {result['accepted']}, "
          f"failures {sum(v[0] for v in failures.values())} ({len(failures)} distinct){alloc_text}, slowest input "
          f"{result['slowest']['seconds'] * 1000:.1f} ms", flush=True)
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=TARGETS + ("nasty",), help="what to fuzz; 'nasty' (re)writes the "
                        "hand-made hostile files into tests/fuzz_corpus/reader/")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs to run (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0: no limit)")
    parser.add_argument("--corpus", default=None, help="corpus directory (default runs/fuzz/TARGET/corpus)")
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), default="atheris")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seed-dir", dest="seed_dirs", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args) or 0
    if args.target == "nasty":
        seed_dir = REPO / "runs" / "fuzz" / "load" / "seeds"
        make_seeds("load", seed_dir)
        out = REGRESSION / "reader"
        out.mkdir(parents=True, exist_ok=True)
        for name, data in nasty_files(seed_dir).items():
            (out / f"nasty-{name}.safetensors").write_bytes(data)
        print(f"wrote {len(list(out.glob('nasty-*')))} files to {out}")
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
