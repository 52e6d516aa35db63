"""One run per directory: a live holder is named and refused, a dead one's lock is taken over,
and file systems without locks fall back on the holder's pid."""
import errno
import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from minitinybert.training import runlock
from minitinybert.training.runlock import RunLock, RunLockError

ROOT = Path(__file__).resolve().parent.parent
HOLD = "import sys, time; from minitinybert.training.runlock import RunLock; RunLock(sys.argv[1]).__enter__(); " \
       "print('held', flush=True); time.sleep(120)"


def holder_process(directory):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_is_named_and_refused(tmp_path):
    proc = holder_process(tmp_path)
    try:
        with pytest.raises(RunLockError) as info:
            with RunLock(tmp_path):
                pass
        message = str(info.value)
        assert f"pid {proc.pid} on {socket.gethostname()}, started 20" in message
        assert f"-c '{HOLD[:20]}" in message                      # its command line
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_runs_lock_is_taken_over_and_released_at_the_end(tmp_path):
    proc = holder_process(tmp_path)
    proc.kill()                                                   # SIGKILL: no chance to clean up
    proc.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == proc.pid
    heard = []
    with RunLock(tmp_path, log=heard.append):
        mine = json.loads((tmp_path / "run.lock").read_text())
        assert mine["pid"] == os.getpid()
        with pytest.raises(RunLockError, match=f"pid {os.getpid()} "):   # a second holder, even in this process
            with RunLock(tmp_path):
                pass
    assert len(heard) == 1 and f"pid {proc.pid}" in heard[0] and "taking it over" in heard[0]
    assert not (tmp_path / "run.lock").exists()
    # a directory the lock made, and nothing was written in: not left behind
    with RunLock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()


@pytest.fixture
def no_flock(monkeypatch):
    def unsupported(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(runlock.fcntl, "flock", unsupported)


def _record(directory, **fields):
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": "python -m minitinybert.distill all",
              "started": "2024-01-01T00:00:00+00:00", "process_start": runlock.process_start_time(os.getpid())}
    (directory / "run.lock").write_text(json.dumps({**holder, **fields}))


def test_without_file_locks_the_pid_decides(tmp_path, no_flock):
    _record(tmp_path)                                             # this process: alive
    with pytest.raises(RunLockError, match=f"pid {os.getpid()} .*remove .*run.lock if it is over"):
        with RunLock(tmp_path):
            pass
    _record(tmp_path, host="elsewhere")                           # cannot be checked: trusted
    with pytest.raises(RunLockError, match="on elsewhere"):
        with RunLock(tmp_path):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for stale in ({"pid": int(dead.stdout)}, {"process_start": "1"}):   # gone, or its pid reused since
        _record(tmp_path, **stale)
        heard = []
        with RunLock(tmp_path, log=heard.append):
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        assert "taking it over" in heard[0]


def test_other_lock_errors_are_not_taken_for_a_missing_lock(tmp_path, monkeypatch):
    def broken(fd, operation):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output"):
        with RunLock(tmp_path):
            pass


def test_only_the_writing_rank_takes_the_lock(tmp_path, monkeypatch):
    """Ranks of one MPI job share rank 0's run: the others must not be refused by its lock."""
    with runlock.writer_lock(tmp_path):                          # rank 0 (or no launcher) holds it
        monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
        with runlock.writer_lock(tmp_path):
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
        with pytest.raises(RunLockError):
            with runlock.writer_lock(tmp_path):
                pass
