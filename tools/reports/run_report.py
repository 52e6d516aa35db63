"""Where a run's time went and what each stage reached: one Markdown table from a run directory.

    python -m tools.reports.run_report runs/sst2 [--general DIR]
    python -m tools.reports.run_report runs/sst2 runs/cola runs/rte runs/stsb     # one row a run, with the paper's

For each stage of `distill all` (teacher fine-tuning, general distillation, augmentation, the
intermediate stage, the teacher-logits pass, the prediction stage): optimizer steps, wall minutes,
minutes in steps, the median seconds of a step, computed / real tokens over the first 10 steps and
over all steps (padding waste, from log.jsonl's "tokens" and "padded_tokens"), and the best dev
metric. Then the run's total, from the start recorded in run.lock to summary.json, and the
summary's figures.

Given several runs, one table with a row each: teacher and student dev metric, their ratio beside
TinyBERT4's ratio to BERT-base in the paper's GLUE test table, the general student's steps, and the
minutes in steps of the teacher, the general student and the two task stages.

Wall time comes from the files the stages leave: a stage ends when its last file is written, and
begins where the one before it ended (the first at the start recorded in run.lock while the run
holds it, else at the run's first step, from the "time" of log.jsonl's records). A stage whose
log was written before that (a general student made by another run, a teacher or cache copied in)
shows "reused" instead of minutes. Wall minutes of a run resumed across sessions include the time
between them; "minutes in steps", the sum of the logged step times, does not (it leaves out dev
evaluations and checkpoints), and is the figure to compare stages of such runs by.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(step records, evaluation records) of a stage's log.jsonl. Records of neither kind (a script
    of one's own may log more) are skipped."""
    steps, evals = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue                                  # blank, or a line cut by a kill (a resumed run rewrites it)
        if "eval" in record:
            evals.append(record)
        elif "step" in record and "seconds" in record:
            steps.append(record)
    return steps, evals


def padding(steps: list[dict]) -> float | None:
    real = sum(r.get("tokens", 0) for r in steps)
    return sum(r.get("padded_tokens", 0) for r in steps) / real if real else None


def stage_row(name: str, directory: Path, start: float | None) -> tuple[dict, float | None]:
    """A stage's figures, and the clock after it: when its log was last written, or `start` unchanged when
    the stage is absent or was made before `start` (reused: copied in, or made by another run)."""
    log = directory / "log.jsonl"
    if not log.exists():
        return {"stage": name, "missing": True}, start
    steps, evals = read_log(log)
    end = log.stat().st_mtime
    reused = start is not None and end < start
    best = max((e["eval"]["main"] for e in evals), default=None)
    row = {"stage": name, "steps": steps[-1]["step"] if steps else 0,
           "minutes": (end - start) / 60 if start is not None else None,
           "step_minutes": sum(r["seconds"] for r in steps) / 60 if steps else None,
           "step_seconds": statistics.median(r["seconds"] for r in steps) if steps else None,
           "padding_first10": padding(steps[:10]), "padding_all": padding(steps), "best_dev": best}
    if reused:
        row["minutes"], row["reused"] = None, True
        return row, start
    return row, end


def first_step_start(log: Path) -> float | None:
    """When a stage's first step began, from the wall-clock "time" its log records (newer logs)."""
    if not log.exists():
        return None
    steps, _ = read_log(log)
    return steps[0]["time"] - steps[0]["seconds"] if steps and "time" in steps[0] else None


def general_directory(run: Path, given: str | None) -> Path | None:
    if given:
        return Path(given)
    source = run / "task-intermediate" / "general-student.json"
    if source.exists():
        checkpoint = Path(json.loads(source.read_text()).get("path", ""))
        return checkpoint.parent if checkpoint.name == "final" else checkpoint
    return None


def newest(paths) -> float | None:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None


def report(run: Path, general: str | None = None) -> tuple[list[dict], dict]:
    lock = run / "run.lock"
    started = datetime.fromisoformat(json.loads(lock.read_text())["started"]).timestamp() if lock.exists() else None
    if started is None:          # the run has ended (its lock is gone): its first stage's first step, from the
        # logs (a `task` run given a fine-tuned teacher has no teacher stage: its intermediate stage is first)
        starts = (first_step_start(run / stage / "log.jsonl")
                  for stage in ("teacher", "task-intermediate", "task-prediction"))
        started = min((t for t in starts if t is not None), default=None)
    rows, clock = [], started
    row, clock = stage_row("teacher fine-tuning", run / "teacher", clock)
    rows.append(row)
    general_dir = general_directory(run, general)
    if general_dir is not None:
        row, clock = stage_row("general distillation", general_dir, clock)
        rows.append(row)
    cache = run / "augment-cache"
    augmented = newest(p for p in cache.glob("*") if "logits" not in p.name) if cache.is_dir() else None
    if augmented is not None and clock is not None and augmented > clock:
        rows.append({"stage": "augmentation (and the task stage's start-up)", "minutes": (augmented - clock) / 60})
        clock = augmented
    row, clock = stage_row("intermediate-layer distillation", run / "task-intermediate", clock)
    rows.append(row)
    logits = newest(cache.glob("*logits*")) if cache.is_dir() else None
    if logits is not None and clock is not None and logits > clock:
        rows.append({"stage": "teacher logits (one pass over the examples the stage draws)", "minutes": (logits - clock) / 60})
        clock = logits
    row, clock = stage_row("prediction-layer distillation", run / "task-prediction", clock)
    rows.append(row)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary and started is not None:
        summary["total_minutes"] = (summary_path.stat().st_mtime - started) / 60
    return rows, summary


# The paper's GLUE test table (TINYBERT-NOTES.md): (TinyBERT4, BERT-base), each task's main metric.
PAPER = {"mnli": (82.5, 83.9), "qqp": (71.3, 71.1), "qnli": (87.7, 90.9), "sst2": (92.6, 93.4),
         "cola": (44.1, 52.8), "stsb": (80.4, 85.2), "mrpc": (86.4, 87.5), "rte": (66.6, 67.0)}


def runs_table(runs: list[Path]) -> str:
    """One row per finished run (its summary.json): the distillation results side by side."""
    lines = ["| run | task (dev metric) | teacher | student | student / teacher | paper: TinyBERT4 / BERT-base "
             "(test) | general student steps | minutes in steps: teacher, general, intermediate + prediction |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rows, summary = report(run)
        if not summary:
            lines.append(f"| {run.name} | no summary.json yet | | | | | | |")
            continue
        minutes = {r["stage"]: r.get("step_minutes") or 0.0 for r in rows}
        task_minutes = sum(minutes.get(f"{stage}-layer distillation", 0) for stage in ("intermediate", "prediction"))
        paper = PAPER.get(summary["task"])
        general = summary.get("general_student") or {}
        lines.append(
            f"| {run.name} | {summary['task']} ({summary['metric']}) | {summary['teacher']['dev']['main']:.4f} | "
            f"{summary['student']['dev']['main']:.4f} | **{summary['ratio']:.1%}** | "
            f"{f'{paper[0] / paper[1]:.1%} ({paper[0]} / {paper[1]})' if paper else '–'} | "
            f"{general.get('steps', '–')} | {minutes.get('teacher fine-tuning', 0):.1f}, "
            f"{minutes.get('general distillation', 0):.1f}, {task_minutes:.1f} |")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["| stage | steps | minutes | minutes in steps | s/step (median) | computed / real tokens, first 10 steps "
             "| all steps | best dev |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("missing"):
            lines.append(f"| {r['stage']} | not run | | | | | | |")
            continue
        minutes = "reused" if r.get("reused") else _fmt(r.get("minutes"), ".1f")
        lines.append(f"| {r['stage']} | {r.get('steps', '')} | {minutes} | {_fmt(r.get('step_minutes'), '.1f')} | "
                     f"{_fmt(r.get('step_seconds'), '.3f')} | "
                     f"{_fmt(r.get('padding_first10'), '.3f')} | {_fmt(r.get('padding_all'), '.3f')} | "
                     f"{_fmt(r.get('best_dev'), '.4f')} |")
    if summary:
        t, s = summary["teacher"]["dev"]["main"], summary["student"]["dev"]["main"]
        lines.append("")
        lines.append(f"{summary['task']} dev {summary['metric']}: teacher {t:.4f}, student {s:.4f} "
                     f"({summary['ratio']:.1%} of the teacher); {_fmt(summary.get('total_minutes'), '.1f')} "
                     f"minutes from the run's start to its summary")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="+", help="the run directory (--out of distill all), e.g. runs/sst2; "
                                               "several: one row each")
    parser.add_argument("--general", default=None, help="the general stage's directory (default: the one the task "
                                                        "stage recorded in task-intermediate/general-student.json)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON instead of Markdown")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.run]
    for run in runs:
        if not run.is_dir():
            print(f"error: no run directory {run}", file=sys.stderr)
            return 2
    if len(runs) > 1:
        if args.general or args.json:
            print("error: --general and --json are for one run's stages; give one run", file=sys.stderr)
            return 2
        print(runs_table(runs))
        return 0
    rows, summary = report(runs[0], args.general)
    print(json.dumps({"stages": rows, "summary": summary}, indent=1) if args.json else markdown(rows, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
