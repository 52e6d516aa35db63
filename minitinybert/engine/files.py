"""Writing files so that a kill or a failed write at any moment leaves the old file or the new one,
never a part of one; and hashing them.

Every file the package writes goes through `write_atomic` (bytes in hand) or `atomic_path` (a
writer that wants a path: matplotlib, a stream of pieces): the data goes to a temporary file beside
the target, is flushed to the disk, and is renamed over the target. Checkpoint directories swap
whole (weights.save_checkpoint) from files written by `write_file`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def write_file(path: str | Path, data) -> None:
    """`data` (bytes, or a list of bytes-like pieces written one after the other) into a new file at
    `path`, flushed to the disk before returning: every file of a checkpoint goes through here. An
    OSError (a full disk, a read-only place) names `path`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for piece in [data] if isinstance(data, (bytes, bytearray)) else data:
                _write_all(fd, piece)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(directory: Path) -> None:
    """Makes the names in `directory` (new files, a rename) durable; some file systems cannot."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path beside `path` to write; on leaving without an error it is flushed and
    renamed to `path`, on an error (or Ctrl-C) removed. The parent directory is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:          # the writer may not have flushed to the disk
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data) -> None:
    """`data` (bytes, str as UTF-8, or a list of bytes-like pieces) as the file at `path`, atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        write_file(tmp, data)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
