"""runtime.py on ARM, kept proven: Debian bookworm's own python3 and python3-numpy (1.24, reference
BLAS) for arm64 and armhf, run under qemu-user-static, give the labels, scores, token ids and
embeddings that x86-64 gives, for a float32 and an int8 file (tinybert4 shape, real vocabulary).

    apt-get update && apt-get install -y mmdebstrap qemu-user-static     # once; needs root
    python3 -m tools.edge.check_arm [--roots /var/tmp/minitinybert-edge] [--arch arm64,armhf] [--blas openblas]

Each root is built once with `mmdebstrap --variant=extract` (packages unpacked, no maintainer
script run: the libblas.so.3 / liblapack.so.3 alternative links are made here by hand) from the
main archive, ~30 s each; the root's python3 runs through qemu-aarch64-static / qemu-arm-static
with QEMU_LD_PREFIX set to the root, so no binfmt registration is needed. A few minutes in all.
--blas openblas adds libopenblas0-pthread and links the alternatives to it (a Raspberry Pi's setup).
Exit status 0 when every check passes. No speed figures: emulation says nothing about a board's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RUNTIME_PY = REPO / "minitinybert" / "runtime.py"
ARCHES = {"arm64": ("qemu-aarch64-static", "aarch64-linux-gnu"), "armhf": ("qemu-arm-static", "arm-linux-gnueabihf")}
TOLERANCE = 1e-4
TEXTS = [
    "A gripping, beautifully acted film.", "dull and lifeless", "Un café très crème, s'il vous plaît !",
    "Die Straße ist nass; Grüße aus München.", "Καλημέρα κόσμε", "Привет, мир! Это тест.", "我喜欢这部电影。",
    "日本語のテキストです", "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 😀 and ™ symbols…", "tab\there\u200b zero-width",
    "[CLS] written [SEP] specials [MASK]", "supercalifragilisticexpialidocious" * 4, "ÀÉÎÕÜ ñ ç ø æ œ ł",
    "",
]


def build_root(arch: str, root: Path, mirror: str, suite: str, blas: str) -> None:
    """python3 + python3-numpy (+ OpenBLAS) for `arch`, unpacked, the BLAS/LAPACK alternatives linked."""
    triplet = ARCHES[arch][1]
    if not (root / "usr" / "bin" / "python3").exists():
        print(f"[{arch}] building {root} (mmdebstrap --variant=extract, {suite}, {blas} BLAS)", flush=True)
        if root.exists():
            shutil.rmtree(root)
        include = "python3-numpy" + (",libopenblas0-pthread" if blas == "openblas" else "")
        subprocess.run(["mmdebstrap", "--variant=extract", f"--architectures={arch}", f"--include={include}",
                        suite, str(root), mirror], check=True, stdout=subprocess.DEVNULL)
    libdir = root / "usr" / "lib" / triplet
    folders = ("blas", "lapack") if blas == "reference" else ("openblas-pthread", "openblas-pthread")
    for name, folder in zip(("libblas.so.3", "liblapack.so.3"), folders):
        if not (libdir / folder / name).exists():
            raise SystemExit(f"[{arch}] {libdir / folder / name} missing: the root is incomplete (use --rebuild)")
        link = libdir / name
        if not link.exists():
            link.symlink_to(f"{folder}/{name}")        # what update-alternatives would have made


def make_models(directory: Path) -> dict:
    """float32 and int8 (quantized embeddings too) files of a random tinybert4 with 3 labels, its
    head sharpened and centred on TEXTS so that the labels vary and the scores differ clearly."""
    from minitinybert import runtime
    from minitinybert.engine.config import preset
    from minitinybert.export import export_model
    from minitinybert.engine.model import Bert
    from minitinybert.engine.teacher import resolve_teacher

    vocab = resolve_teacher(None, log=lambda *a: None) / "vocab.txt"
    tokens = [line.rstrip("\r\n") for line in open(vocab, encoding="utf-8")]
    model = Bert(preset("tinybert4", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}), seed=7)
    model.params["classifier.weight"][...] *= 30.0
    first = runtime.load(export_model(model, directory / "first.safetensors", tokens, True, "float32")).logits(TEXTS)
    model.params["classifier.bias"][...] -= first.mean(axis=0)
    return {dtype: export_model(model, directory / f"{dtype}.safetensors", tokens, True, dtype,
                                quantize_embeddings=dtype == "int8", max_length=64)
            for dtype in ("float32", "int8")}


def probe(command: list, env: dict, model: Path, texts: Path) -> dict:
    proc = subprocess.run(command + [str(HERE / "probe.py"), str(RUNTIME_PY), str(model), str(texts)],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed ({' '.join(command)}):\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def compare(ref: dict, got: dict) -> tuple[list, float]:
    """(problems, max |difference| over scores and embeddings)."""
    problems, worst = [], 0.0
    if got["ids"] != ref["ids"]:
        problems.append("token ids differ")
    for key in ("predictions", "pairs"):
        for i, (a, b) in enumerate(zip(ref[key], got[key])):
            if a["label"] != b["label"]:
                problems.append(f"{key}[{i}]: label {b['label']} instead of {a['label']}")
            worst = max([worst] + [abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]])
    for key in ("embed_mean", "embed_cls"):
        worst = max([worst] + [abs(x - y) for ra, rb in zip(ref[key], got[key]) for x, y in zip(ra, rb)])
    if worst > TOLERANCE:
        problems.append(f"max |difference| {worst:.2e} > {TOLERANCE}")
    return problems, worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roots", default="/var/tmp/minitinybert-edge", help="where the Debian roots are kept")
    parser.add_argument("--arch", default="arm64,armhf")
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--blas", default="reference", choices=("reference", "openblas"),
                        help="python3-numpy's default reference BLAS, or libopenblas0-pthread (a Raspberry Pi's setup)")
    parser.add_argument("--rebuild", action="store_true", help="build the roots again")
    args = parser.parse_args(argv)
    arches = [a.strip() for a in args.arch.split(",") if a.strip()]
    missing = [tool for tool in ["mmdebstrap"] + [ARCHES[a][0] for a in arches] if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        print(f"needs root and {', '.join(missing) or 'nothing else'}: apt-get update && apt-get install -y "
              f"mmdebstrap qemu-user-static", file=sys.stderr)
        return 2
    roots = Path(args.roots)
    roots.mkdir(parents=True, exist_ok=True)
    root_of = {arch: roots / (arch if args.blas == "reference" else f"{arch}-{args.blas}") for arch in arches}
    for arch, root in root_of.items():
        if args.rebuild and root.exists():
            shutil.rmtree(root)
        build_root(arch, root, args.mirror, args.suite, args.blas)
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MINITINYBERT_", "QEMU_"))}
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = tmp / "texts.json"
        texts.write_text(json.dumps(TEXTS, ensure_ascii=False), encoding="utf-8")
        models = make_models(tmp)
        for dtype, model in models.items():
            ref = probe([sys.executable], clean_env, model, texts)
            print(f"x86-64 reference, {dtype}: NumPy {ref['numpy']}, kernels {ref['kernels']}, "
                  f"labels {' '.join(p['label'] for p in ref['predictions'])}", flush=True)
            for arch in arches:
                root = root_of[arch]
                env = dict(clean_env, QEMU_LD_PREFIX=str(root), PYTHONNOUSERSITE="1", OPENBLAS_NUM_THREADS="1")
                got = probe([ARCHES[arch][0], str(root / "usr" / "bin" / "python3")], env, model, texts)
                problems, worst = compare(ref, got)
                failures += bool(problems)
                print(f"{arch:<6} {dtype:<8} {got['machine']:<8} NumPy {got['numpy']:<8} kernels {got['kernels']:<6} "
                      f"BLAS {','.join('/'.join(b.split('/')[-2:]) for b in got['blas']) or '?'}; "
                      f"labels, ids: {'same' if not problems else 'DIFFERENT'}; "
                      f"max |score / embedding difference| {worst:.1e}: {'pass' if not problems else 'FAIL'}",
                      flush=True)
                for problem in problems:
                    print(f"    {problem}")
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
