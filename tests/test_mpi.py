"""Data parallelism over processes (world.py) under `mpiexec -n 2`, on the tiny world of test_distill:
two processes of one thread compute exactly what one process of two workers does; a rank that raises
or is killed ends the whole job at once, and --resume then finishes exactly as an uninterrupted run.
Few and tiny on purpose: every mpiexec run pays the start-up of two Python processes."""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minitinybert.data.corpus import StreamedFiles
from minitinybert.distill import main
from tests.tiny_world import build_world, sentences

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="needs mpi4py and mpiexec (pip install -e '.[mpi]' brings both)")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("mpi-world"), train=48, dev=16)


def args(world, out, *extra):
    return ["--data", str(world / "data"), "--teacher", str(world / "teacher"), "--student",
            str(world / "student.json"), "--out", str(out), "--batch-size", "6", "--general-seq-len", "16",
            "--augment-limit", "12", "--n-aug", "1", "--save-every", "3", "--eval-every", "3", "--seed", "5",
            "--general-dir", str(Path(out) / "general"), *extra]     # each run's general stage in its own --out


def mpiexec(argv, out_file: Path, **popen):
    """`mpiexec -n 2 python -m minitinybert.distill argv`, one thread per rank, output into out_file."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "minitinybert.distill", *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(out_file, "w"), stderr=subprocess.STDOUT,
                            text=True, **popen)


def weights(path: Path) -> bytes:
    return (path / "model.safetensors").read_bytes()


def logged_losses(path: Path) -> list[dict]:
    timing = ("seconds", "seq_per_s", "tokens_per_s", "time")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in path.read_text().splitlines()]


STEPS = ["--teacher-steps", "5", "--general-steps", "6", "--intermediate-steps", "4", "--prediction-steps", "5"]


def test_two_processes_are_one_process_of_two_workers(world, tmp_path):
    """Same seed, same global batch: 2 ranks x 1 thread and 1 process x 2 workers give bit-identical
    losses, weights and optimizer moments in every stage (with two shards the Allreduce adds the
    same two buffers that one process adds: the same sum)."""
    proc = mpiexec(["all", *args(world, tmp_path / "mpi", *STEPS, "--workers", "1")], tmp_path / "mpi.txt")
    assert proc.wait(timeout=600) == 0, (tmp_path / "mpi.txt").read_text()[-3000:]
    assert main(["all", *args(world, tmp_path / "one", *STEPS, "--workers", "2")]) == 0
    for stage, final in (("teacher", "best"), ("general", "final"), ("task-intermediate", "final"),
                         ("task-prediction", "best")):
        one, mpi = tmp_path / "one" / stage, tmp_path / "mpi" / stage
        assert weights(mpi / final) == weights(one / final), stage
        assert (mpi / "last" / "optimizer.safetensors").read_bytes() == \
            (one / "last" / "optimizer.safetensors").read_bytes(), stage
        assert logged_losses(mpi / "log.jsonl") == logged_losses(one / "log.jsonl"), stage
    output = (tmp_path / "mpi.txt").read_text()
    assert output.count("[mpi] 2 processes") == 1 and output.count("[general] mapping") == 1   # rank 1 is silent
    state = json.loads((tmp_path / "mpi" / "general" / "last" / "trainer_state.json").read_text())
    assert [sorted(part["streams"]) for part in state["data"]["ranks"]] == [["0"], ["1"]]   # each rank's corpus


def test_a_killed_rank_ends_the_job_and_resume_finishes_exactly(world, tmp_path, capsys):
    steps = ["--general-steps", "40", "--save-every", "4", "--workers", "1"]
    out = tmp_path / "killed"
    proc = mpiexec(["general", *args(world, out, *steps)], tmp_path / "killed.txt")
    log = out / "general" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 5):
        time.sleep(0.05)
    pids = _pids(tmp_path / "killed.txt")
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.time()
    status = proc.wait(timeout=60)
    assert time.time() - killed_at < 10 and status != 0
    stopped = json.loads((out / "general" / "last" / "trainer_state.json").read_text())
    assert 4 <= stopped["step"] < 40, "the run should have been killed midway"
    # a checkpoint of two processes resumes only with two
    assert main(["general", *args(world, out, *steps, "--resume")]) == 2
    assert "resume with the same number of processes (mpiexec -n 2)" in capsys.readouterr().err
    proc = mpiexec(["general", *args(world, out, *steps, "--resume")], tmp_path / "resumed.txt")
    assert proc.wait(timeout=600) == 0, (tmp_path / "resumed.txt").read_text()[-3000:]
    assert f"resuming at step {stopped['step']}/40" in (tmp_path / "resumed.txt").read_text()
    # the same run uninterrupted (one process of two workers: the same run, as the test above shows)
    assert main(["general", *args(world, tmp_path / "straight", "--general-steps", "40", "--save-every", "4",
                                  "--workers", "2")]) == 0
    assert weights(out / "general" / "final") == weights(tmp_path / "straight" / "general" / "final")
    assert logged_losses(log) == logged_losses(tmp_path / "straight" / "general" / "log.jsonl")


def _pids(output: Path) -> dict[int, int]:
    """{rank: pid} from rank 0's first line: "[mpi] 2 processes, data-parallel: rank 0 pid 11 on host, ..."."""
    deadline = time.time() + 60
    while time.time() < deadline and "[mpi]" not in output.read_text():
        time.sleep(0.05)
    line = next(line for line in output.read_text().splitlines() if line.startswith("[mpi]"))
    ranks = [part.split() for part in line.split(": ", 1)[1].split(", ")]
    return {int(words[1]): int(words[3]) for words in ranks}


def test_a_rank_that_raises_ends_the_job_with_one_message_naming_it(world, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = "".join(json.dumps({"text": text}) + "\n" for text, _ in sentences(np.random.default_rng(1), 30))
    (corpus / "a.jsonl").write_text(good)
    (corpus / "b.jsonl").write_text(good[:200] + '{"text": "cut short\n' + good[200:])
    # with two shards and two files each rank reads one file: which one is the seed's choice
    source = StreamedFiles(sorted(corpus.iterdir()), "json", seed=5)
    culprit = next(s for s in (0, 1) if source.plan(s, 2, 0)[0][0].name == "b.jsonl")
    started = time.time()
    proc = mpiexec(["general", *args(world, tmp_path / "out", "--corpus", str(corpus), "--workers", "1")],
                   tmp_path / "out.txt")
    status = proc.wait(timeout=300)
    output = (tmp_path / "out.txt").read_text()
    assert status != 0 and time.time() - started < 120
    assert output.count("error on rank") == 1, output
    assert f"error on rank {culprit} of 2" in output and "b.jsonl" in output, output
