"""Fingerprint of a fixed-seed pipeline run on a tiny world: sha256 of every checkpoint file.

    python -m tools.reports.pipeline_fingerprint [--workers 1,2] > before.txt
    ... refactor ...
    python -m tools.reports.pipeline_fingerprint [--workers 1,2] > after.txt && diff before.txt after.txt

A refactor that claims "no change in results" must leave this output identical: the same
teacher fine-tuning, general and task distillation, byte for byte, with 1 and with 2 workers.
The world is the one tests/tiny_world.py builds: a 3-layer teacher, a 2-layer student, a
32-token vocabulary, 64 training sentences, a 12-document corpus. Takes about a minute.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from minitinybert.distill import main
from tests.tiny_world import build_world


def fingerprint(out: Path) -> list[str]:
    lines = []
    for path in sorted(out.rglob("*")):
        if path.suffix in (".safetensors", ".json") and path.name not in ("summary.json",):
            if path.name == "trainer_state.json":   # holds wall-clock times: compare its numbers only
                state = json.loads(path.read_text())
                state = {k: v for k, v in state.items() if "time" not in k and "second" not in k}
                digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
            elif path.name in ("general.json", "general-student.json"):   # records: without their paths
                record = {k: v for k, v in json.loads(path.read_text()).items()
                          if k not in ("teacher_dir", "corpus_dir", "student", "path")}
                digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest[:16]}  {path.relative_to(out)}")
    return lines


def main_(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_world(root)
        for workers in args.workers.split(","):
            out = root / f"run-w{workers}"
            with contextlib.redirect_stdout(sys.stderr):   # the pipeline's log is not the fingerprint
                rc = main(["all", "--data", str(root / "data"), "--teacher", str(root / "teacher"),
                           "--student", str(root / "student.json"), "--out", str(out), "--batch-size", "8",
                           "--general-seq-len", "16", "--augment-limit", "16", "--n-aug", "2", "--save-every", "3",
                           "--eval-every", "4", "--teacher-steps", "8", "--general-steps", "8",
                           "--intermediate-steps", "8", "--prediction-steps", "8", "--workers", workers,
                           "--seed", "3", "--general-dir", str(out / "general")])   # not shared between runs
            if rc != 0:
                print(f"pipeline failed with status {rc}", file=sys.stderr)
                return rc
            print(f"# workers {workers}")
            print("\n".join(fingerprint(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main_())
