"""runtime.py on ARM, kept proven: Debian bookworm's own python3 and python3-numpy (1.24, reference
BLAS) for arm64 and armhf, and python3-numba (0.56) for arm64, run under qemu-user-static, give
the labels, scores, token ids and embeddings that x86-64 gives, on the NumPy path and on arm64
also on the Numba kernels' path (kernels="numba", threads=2: the fast path, with the block kernel in
bands on Numba's threads where its threading layer allows, proven on the boards it is for),
for a float32 file, an int8 file, an int8 file with a pruned vocabulary (export --vocab) and the
same with its word-embedding table at 4 bits (export --embedding-bits 4: float16 scales per 16
values) (tinybert4 shape, real vocabulary). armhf has no Numba path: see NUMBA_ARCHES.

    apt-get update && apt-get install -y mmdebstrap qemu-user-static     # once; needs root
    python -m tools.edge.check_arm [--arch arm64,armhf] [--kernels numpy,numba] [--blas openblas]

The reference is x86-64's NumPy path; x86-64's Numba path, where Numba is installed, is checked
against it too. Each root is built once and kept (under ~/.cache/minitinybert/edge unless --roots
says otherwise; built again when its package list changes) with `mmdebstrap --variant=extract`
(packages unpacked, no maintainer script run: the libblas.so.3 / liblapack.so.3 alternative links
are made here by hand) from the main archive, ~30 s each; the root's python3 runs through
qemu-aarch64-static / qemu-arm-static with QEMU_LD_PREFIX set to the root, so no binfmt
registration is needed. Numba's compiled kernels are cached beside the roots: only a first run
compiles them under emulation. A few minutes in all. --blas openblas adds libopenblas0-pthread and
links the alternatives to it (a Raspberry Pi's setup). Exit status 0 when every check passes. No
speed figures: emulation says nothing about a board's.
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
KERNELS = ("numpy", "numba")
# Debian bookworm's python3-numba JITs nothing on armhf: its first njit call aborts the process (LLVM ERROR:
# Symbol not found: __sync_fetch_and_add_4), so armhf roots get NumPy alone and run its path alone
NUMBA_ARCHES = ("arm64",)
PACKAGES_MARK = ".minitinybert-packages"      # in a root: the package list it was built with
TOLERANCE = 1e-4
TEXTS = [
    "A gripping, beautifully acted film.", "dull and lifeless", "Un café très crème, s'il vous plaît !",
    "Die Straße ist nass; Grüße aus München.", "Καλημέρα κόσμε", "Привет, мир! Это тест.", "我喜欢这部电影。",
    "日本語のテキストです", "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 😀 and ™ symbols…", "tab\there\u200b zero-width",
    "[CLS] written [SEP] specials [MASK]", "supercalifragilisticexpialidocious" * 4, "ÀÉÎÕÜ ñ ç ø æ œ ł",
    "",
]


def default_roots() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minitinybert" / "edge"


def build_root(arch: str, root: Path, mirror: str, suite: str, blas: str) -> None:
    """python3 + python3-numpy (+ python3-numba where it works, + OpenBLAS) for `arch`, unpacked, the
    BLAS/LAPACK alternatives linked. A root built with another package list (an older check's,
    without Numba) is built again."""
    triplet = ARCHES[arch][1]
    include = ",".join(["python3-numpy"] + ["python3-numba"] * (arch in NUMBA_ARCHES)
                       + ["libopenblas0-pthread"] * (blas == "openblas"))
    mark = root / PACKAGES_MARK
    current = (root / "usr" / "bin" / "python3").exists() and mark.is_file() and mark.read_text() == include
    if not current:
        print(f"[{arch}] building {root} (mmdebstrap --variant=extract, {suite}, {include}, {blas} BLAS)",
              flush=True)
        if root.exists():
            shutil.rmtree(root)
        subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", f"--architectures={arch}",
                        f"--include={include}", suite, str(root), mirror], check=True, stdout=subprocess.DEVNULL)
        mark.write_text(include)
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
    head sharpened and centred on TEXTS so that the labels vary and the scores differ clearly; and
    the int8 file with only the word pieces of the other TEXTS than the accented letters' line (a
    renumbered vocabulary: that line loses its pieces, so its words run re-split or as [UNK]), also with
    that table at 4 bits (the nibbles unpacked by the board's NumPy)."""
    from minitinybert import runtime
    from minitinybert.engine.config import preset
    from minitinybert.export import export_model, kept_piece_ids, piece_counts
    from minitinybert.engine.model import Bert
    from minitinybert.engine.teacher import resolve_teacher

    vocab = resolve_teacher(None, log=lambda *a: None) / "vocab.txt"
    tokens = [line.rstrip("\r\n") for line in open(vocab, encoding="utf-8")]
    model = Bert(preset("tinybert4", num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}), seed=7)
    model.params["classifier.weight"][...] *= 30.0
    first = runtime.load(export_model(model, directory / "first.safetensors", tokens, True, "float32")).logits(TEXTS)
    model.params["classifier.bias"][...] -= first.mean(axis=0)
    models = {dtype: export_model(model, directory / f"{dtype}.safetensors", tokens, True, dtype,
                                  quantize_embeddings=dtype == "int8", max_length=64)
              for dtype in ("float32", "int8")}
    keep = kept_piece_ids(tokens, piece_counts(tokens, True, TEXTS[:-2]))
    models["int8-vocab"] = export_model(model, directory / "int8-vocab.safetensors", tokens, True, "int8",
                                        quantize_embeddings=True, max_length=64, keep_ids=keep)
    models["int8-vocab-4bit"] = export_model(model, directory / "int8-vocab-4bit.safetensors", tokens, True, "int8",
                                             quantize_embeddings=True, max_length=64, keep_ids=keep, embedding_bits=4)
    return models


def probe(command: list, env: dict, model: Path, texts: Path, kernels: str) -> dict:
    proc = subprocess.run(command + [str(HERE / "probe.py"), str(RUNTIME_PY), str(model), str(texts), kernels],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"probe failed ({' '.join(command)}, kernels={kernels}):\n{proc.stderr}")
    got = json.loads(proc.stdout.splitlines()[-1])
    if got["kernels"] != kernels:          # a silent fallback would prove nothing about the asked-for path
        raise SystemExit(f"probe ran the {got['kernels']} kernels, {kernels} were asked for ({' '.join(command)})")
    return got


def compare(ref: dict, got: dict) -> tuple[list, float]:
    """(problems, max |difference| over scores and embeddings)."""
    problems, worst = [], 0.0
    if got["ids"] != ref["ids"]:
        problems.append("token ids differ")
    for key in ("predictions", "single", "pairs"):
        for i, (a, b) in enumerate(zip(ref[key], got[key])):
            if a["label"] != b["label"]:
                problems.append(f"{key}[{i}]: label {b['label']} instead of {a['label']}")
            worst = max([worst] + [abs(a["scores"][k] - b["scores"][k]) for k in a["scores"]])
    for key in ("embed_mean", "embed_cls"):
        worst = max([worst] + [abs(x - y) for ra, rb in zip(ref[key], got[key]) for x, y in zip(ra, rb)])
    if worst > TOLERANCE:
        problems.append(f"max |difference| {worst:.2e} > {TOLERANCE}")
    return problems, worst


def host_has_numba() -> bool:
    from importlib.util import find_spec
    return find_spec("numba") is not None


def report(where: str, dtype: str, kernels: str, got: dict, problems: list, worst: float) -> None:
    numba = f" {got['numba']} ({got.get('numba_threads') or 'no'} threads)" if got.get("numba") else ""
    print(f"{where:<7} {dtype:<11} {got['machine']:<8} NumPy {got['numpy']:<7} kernels {kernels}{numba:<20} "
          f"BLAS {','.join('/'.join(b.split('/')[-2:]) for b in got['blas']) or '?'}; "
          f"labels, ids: {'same' if not problems else 'DIFFERENT'}; "
          f"max |score / embedding difference| {worst:.1e}: {'pass' if not problems else 'FAIL'}", flush=True)
    for problem in problems:
        print(f"    {problem}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roots", default=str(default_roots()), help="where the Debian roots are kept")
    parser.add_argument("--arch", default="arm64,armhf")
    parser.add_argument("--kernels", default="numpy,numba", help="the runtime's paths to run on ARM: numpy,numba")
    parser.add_argument("--suite", default="bookworm")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--blas", default="reference", choices=("reference", "openblas"),
                        help="python3-numpy's default reference BLAS, or libopenblas0-pthread (a Raspberry Pi's setup)")
    parser.add_argument("--rebuild", action="store_true", help="build the roots again")
    args = parser.parse_args(argv)
    arches = [a.strip() for a in args.arch.split(",") if a.strip()]
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    if not arches or any(a not in ARCHES for a in arches) or not kernels or any(k not in KERNELS for k in kernels):
        print(f"--arch takes some of {', '.join(ARCHES)}, --kernels some of {', '.join(KERNELS)}", file=sys.stderr)
        return 2
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
    # the caller's interpreter, runtime and Numba settings are not the root's
    clean_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("PYTHON", "MINITINYBERT_", "QEMU_", "NUMBA_"))}
    host_env = dict(clean_env, NUMBA_CACHE_DIR=str(roots / "numba-cache" / "x86-64"))
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = tmp / "texts.json"
        texts.write_text(json.dumps(TEXTS, ensure_ascii=False), encoding="utf-8")
        models = make_models(tmp)
        for dtype, model in models.items():
            ref = probe([sys.executable], host_env, model, texts, "numpy")
            print(f"x86-64 reference, {dtype}: NumPy {ref['numpy']}, kernels numpy, "
                  f"labels {' '.join(p['label'] for p in ref['predictions'])}", flush=True)
            runs = [("x86-64", [sys.executable], host_env, "numba")] if "numba" in kernels and host_has_numba() else []
            for arch in arches:
                root = root_of[arch]
                env = dict(clean_env, QEMU_LD_PREFIX=str(root), PYTHONNOUSERSITE="1", OPENBLAS_NUM_THREADS="1",
                           NUMBA_CACHE_DIR=str(roots / "numba-cache" / root.name))
                runs += [(arch, [ARCHES[arch][0], str(root / "usr" / "bin" / "python3")], env, k) for k in kernels
                         if k == "numpy" or arch in NUMBA_ARCHES]
            for where, command, env, k in runs:
                got = probe(command, env, model, texts, k)
                problems, worst = compare(ref, got)
                failures += bool(problems)
                report(where, dtype, k, got, problems, worst)
    if "numba" in kernels and any(a not in NUMBA_ARCHES for a in arches):
        print(f"not run: Numba on {', '.join(a for a in arches if a not in NUMBA_ARCHES)} (Debian's python3-numba "
              f"aborts there at its first compilation: see NUMBA_ARCHES)")
    print("all checks passed" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
