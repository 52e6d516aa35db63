"""What flushing a checkpoint to the disk costs: save_checkpoint of a resumable last/ checkpoint
(the model, its Adam moments, the state), with fsync as training does and with fsync switched off,
alternating in one process; prints the medians and their ratio.

    python -m tools.bench.checkpoint [--teacher DIR] [--out DIR] [--rounds 6]

The model is the default teacher (all-MiniLM-L6-v2, 22.7M parameters: 270 MB with the moments).
Write to the disk the runs go to (--out, default runs/): a tmpfs would measure nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minitinybert.engine.teacher import resolve_teacher
from minitinybert.engine.weights import load_model, save_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--out", default="runs")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    teacher = resolve_teacher(args.teacher)
    model = load_model(teacher, num_labels=2)
    moments = {"m": np.zeros(model.params.size, np.float32), "v": np.zeros(model.params.size, np.float32)}
    real_fsync, seconds = os.fsync, {"fsync": [], "no fsync": []}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for _ in range(args.rounds):
            for mode in seconds:
                os.fsync = real_fsync if mode == "fsync" else (lambda fd: None)
                t0 = time.perf_counter()
                save_checkpoint(model, Path(tmp) / "last", vocab_from=teacher,
                                extra_files={"trainer_state.json": "{}\n"},
                                extra_tensors={"optimizer.safetensors": moments})
                seconds[mode].append(time.perf_counter() - t0)
        os.fsync = real_fsync
        size = sum(p.stat().st_size for p in (Path(tmp) / "last").iterdir())
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    print(f"last/ checkpoint of {model.params.size / 1e6:.1f}M parameters, {size / 1e6:.0f} MB, "
          f"{args.rounds} saves each:")
    for mode, median in medians.items():
        print(f"  {mode:9s} median {median:.2f} s")
    print(f"  fsync costs {medians['fsync'] / medians['no fsync']:.2f}x the unflushed save")
    return 0


if __name__ == "__main__":
    sys.exit(main())
