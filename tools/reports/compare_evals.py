"""Dev evaluations of several runs of one stage side by side: the README's recipe comparisons.

    python -m tools.reports.compare_evals runs/q/seed0/teacher runs/q/seed1/teacher ...   [--last 5]

For each stage directory (one holding log.jsonl): the best dev metric and the step it came at, the
mean and the spread of the last N evaluations (one evaluation's figure moves by about a point on
SST-2's 872 dev sentences, so the best alone says little), and the minutes spent in steps. Then the
mean of each column over the runs given.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tools.reports.run_report import read_log


def summarise(directory: Path, last: int) -> dict:
    log = directory / "log.jsonl"
    if not log.exists():
        raise SystemExit(f"{directory}: no log.jsonl (give a stage directory, e.g. runs/sst2/teacher)")
    steps, evals = read_log(log)
    if not evals:
        raise SystemExit(f"{log}: no evaluations yet")
    best = max(evals, key=lambda e: e["eval"]["main"])
    tail = [e["eval"]["main"] for e in evals[-last:]]
    return {"run": str(directory), "steps": steps[-1]["step"] if steps else 0, "best": best["eval"]["main"],
            "best_step": best["step"], "last_mean": statistics.fmean(tail), "last_min": min(tail),
            "last_max": max(tail), "minutes": sum(r["seconds"] for r in steps) / 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stages", nargs="+", type=Path, help="stage directories (each holding log.jsonl)")
    parser.add_argument("--last", type=int, default=5, help="how many final evaluations to average (default 5)")
    args = parser.parse_args(argv)
    rows = [summarise(d, args.last) for d in args.stages]
    pct = lambda x: f"{100 * x:.2f}"  # noqa: E731
    print(f"| run | steps | best dev | at step | mean of the last {args.last} | their range | minutes in steps |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['steps']} | {pct(r['best'])} | {r['best_step']} | {pct(r['last_mean'])} | "
              f"{pct(r['last_min'])}–{pct(r['last_max'])} | {r['minutes']:.1f} |")
    if len(rows) > 1:
        mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
        print(f"| mean of {len(rows)} | | {pct(mean('best'))} | | {pct(mean('last_mean'))} | | {mean('minutes'):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
