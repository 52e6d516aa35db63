"""The loss-curve plot of a stage's log.jsonl (loss.png), drawn when matplotlib is installed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..engine.files import atomic_path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_log(log_path: Path, png_path: Path) -> Path | None:
    """Loss curves (one line per loss term, log scale) and the dev metric, if matplotlib is installed."""
    try:   # an optional dependency (pip install minitinybert[plot])
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    try:
        records = read_log(log_path)
    except (OSError, ValueError):
        return None
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    if not steps:
        return None
    terms = [k for k in steps[0] if k == "loss" or k.startswith("loss_")]
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    ax = axes[0][0]
    for term in terms:
        xs = [r["step"] for r in steps if term in r]
        ys = [r[term] for r in steps if term in r]
        window = max(1, len(ys) // 50)
        smooth = np.convolve(ys, np.ones(window) / window, mode="valid") if len(ys) > window else ys
        ax.plot(xs[len(xs) - len(smooth):], smooth, label=term)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"{steps[0]['stage']}: loss terms (moving average)")
    ax.legend(fontsize=8)
    if evals:
        ax2 = axes[0][1]
        ax2.plot([r["step"] for r in evals], [r["eval"]["main"] for r in evals], marker="o")
        ax2.set_xlabel("step")
        ax2.set_title("dev metric")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return png_path
