"""One run per output directory: `<out>/run.lock`, held by the process that writes the run.

The lock is an flock(2) on that file, which the kernel drops when its holder ends, however it ends
(SIGKILL included): a run killed mid-way leaves a lock nobody holds, and the next run takes it over
without anyone cleaning up. The file's contents say who holds it (pid, host, command line, start
time), so a second run on the same directory is refused with a message naming the first.

Where a file system offers no locks (flock fails with ENOLCK or EOPNOTSUPP, as some NFS mounts
do), the contents decide alone: a holder on this host is alive if its pid runs and started when
the file says; one on another host cannot be checked and is trusted until run.lock is removed.

Only the writer takes the lock: with several processes on one run (MPI ranks), the one that writes
checkpoints (rank 0) holds it and the others leave it alone (`writer_lock`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

LOCK_NAME = "run.lock"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
# set by MPI launchers (Open MPI, MPICH/Intel MPI, PMIx, MVAPICH) in each process they start
RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


class RunLockError(RuntimeError):
    """Another live run holds the directory."""


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot: it tells a pid reused from the one
    that wrote a lock), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]      # field 22; the command name may hold spaces


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": process_start_time(os.getpid())}


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


def _alive(holder: dict) -> bool:
    """For file systems without locks: is the process that wrote `holder` still running?"""
    if holder.get("host") != socket.gethostname():
        return True                                       # cannot be checked from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                              # alive, someone else's
    recorded = holder.get("process_start")
    return recorded is None or process_start_time(pid) in (None, recorded)


class RunLock:
    """`with RunLock(out, log):` holds `out/run.lock` for the block (creating `out` if needed);
    raises RunLockError when a live run holds it."""

    def __init__(self, directory: str | Path, log=print):
        self.directory, self.log = Path(directory), log
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None
        self._made_directory = False

    def __enter__(self) -> "RunLock":
        self._made_directory = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._acquire()
        except BaseException:
            self._remove_if_made()
            raise
        return self

    def _acquire(self) -> None:
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = self._try_lock(fd)
                # a holder that ended between our open and our lock removed the file: lock the new one
                if locked and not self._same_file(fd):
                    locked = None
            except BaseException:
                os.close(fd)
                raise
            if locked is None:
                os.close(fd)
                continue
            previous = _read(fd)
            if previous:
                self.log(f"[lock] {self.directory} was held by a run that is gone ({describe(previous)}); "
                         f"taking it over")
            try:
                _write(fd, _me())
            except OSError as e:                          # a full disk: say where
                os.close(fd)
                raise OSError(e.errno, e.strerror, str(self.path)) from None
            self._fd = fd

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            holder = _read(fd, wait=True)
            raise RunLockError(f"{self.directory} is in use by another run ({describe(holder)}); wait for it to "
                               f"end or stop it, or choose another --out") from None
        except OSError as e:
            if e.errno not in NO_LOCKS:
                raise
        holder = _read(fd)                                 # no locks here: the file's word decides
        if holder and _alive(holder):
            raise RunLockError(f"{self.directory} is in use by another run ({describe(holder)}); wait for it to "
                               f"end or stop it, or remove {self.path} if it is over")
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> bool:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)         # while still held: the next run finds no stale file
            except OSError:
                pass                                      # a read-only place: the flock still ends below
            os.close(self._fd)
            self._fd = None
        self._remove_if_made()
        return False

    def _remove_if_made(self) -> None:
        if self._made_directory:
            try:
                self.directory.rmdir()                    # nothing was written: leave no empty run behind
            except OSError:
                pass


def _read(fd: int, wait: bool = False) -> dict:
    """The holder recorded in the lock file ({} if none). `wait`: a run that has just taken the lock
    writes its details a moment later."""
    deadline = time.monotonic() + (2.0 if wait else 0.0)
    while True:
        try:
            raw = os.pread(fd, 1 << 16, 0)
            holder = json.loads(raw) if raw.strip() else {}
        except (OSError, ValueError):
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        if holder or time.monotonic() >= deadline:
            return holder
        time.sleep(0.05)


def _write(fd: int, holder: dict) -> None:
    data = (json.dumps(holder, indent=1) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def launched_rank() -> int:
    """This process's rank when an MPI launcher started it, else 0."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def writer_lock(directory: str | Path, log=print):
    """The run's lock for the process that writes it (rank 0, or the only process); a no-op for
    the other ranks of an MPI job, which share rank 0's run and must not be refused by its lock."""
    return RunLock(directory, log) if launched_rank() == 0 else nullcontext()
