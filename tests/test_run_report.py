"""tools/reports/run_report.py: stage minutes from the files a run leaves, padding and best dev from its
logs; tools/reports/compare_evals.py: several runs' evaluations side by side."""
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tools.reports import compare_evals, run_report

START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc).timestamp()


def write_log(directory: Path, steps: list[tuple[int, int]], evals: list[float], ended_minute: float) -> None:
    """log.jsonl of (tokens, padded tokens) steps and dev evaluations, last written at START + ended_minute."""
    directory.mkdir(parents=True, exist_ok=True)
    records = [{"step": i + 1, "tokens": real, "padded_tokens": padded, "seconds": 0.5 + i}
               for i, (real, padded) in enumerate(steps)]
    records += [{"step": 100 * (i + 1), "eval": {"main": value}} for i, value in enumerate(evals)]
    path = directory / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.utime(path, (START + 60 * ended_minute,) * 2)


def touch(path: Path, minute: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (START + 60 * minute,) * 2)


def make_run(tmp_path: Path, general_minute: float) -> Path:
    run, general = tmp_path / "runs" / "sst2", tmp_path / "runs" / "general" / "tinybert4-abc"
    run.mkdir(parents=True)
    (run / "run.lock").write_text(json.dumps({"started": datetime.fromtimestamp(START, timezone.utc).isoformat()}))
    write_log(run / "teacher", [(100, 300)] * 10 + [(100, 100)] * 10, [0.8, 0.9], ended_minute=10)
    write_log(general, [(4096, 4096)] * 3, [], ended_minute=general_minute)
    (general / "final").mkdir()
    touch(run / "augment-cache" / "sst2-aug.safetensors", 30)
    write_log(run / "task-intermediate", [(50, 55)] * 4, [], ended_minute=40)
    (run / "task-intermediate" / "general-student.json").write_text(json.dumps({"path": str(general / "final")}))
    touch(run / "augment-cache" / "teacher-logits-abc.safetensors", 43)
    write_log(run / "task-prediction", [(50, 50)] * 4, [0.81, 0.86, 0.84], ended_minute=50)
    summary = {"task": "sst2", "metric": "accuracy", "teacher": {"dev": {"main": 0.9}},
               "student": {"dev": {"main": 0.86}}, "ratio": 0.86 / 0.9}
    (run / "summary.json").write_text(json.dumps(summary))
    os.utime(run / "summary.json", (START + 60 * 51,) * 2)
    return run


def test_stage_minutes_padding_and_best_dev(tmp_path):
    rows, summary = run_report.report(make_run(tmp_path, general_minute=25))
    by_stage = {r["stage"].split(" ")[0] + ("-logits" if "logits" in r["stage"] else ""): r for r in rows}
    assert [round(by_stage[s]["minutes"], 3) for s in ("teacher", "general", "augmentation", "intermediate-layer",
                                                       "teacher-logits", "prediction-layer")] == [10, 15, 5, 10, 3, 7]
    assert round(by_stage["teacher"]["padding_first10"], 3) == 3.0          # 300 computed for 100 real
    assert round(by_stage["teacher"]["padding_all"], 3) == 2.0
    assert by_stage["teacher"]["best_dev"] == 0.9 and by_stage["prediction-layer"]["best_dev"] == 0.86
    assert by_stage["teacher"]["steps"] == 20 and by_stage["teacher"]["step_seconds"] == 10.0
    assert round(summary["total_minutes"], 3) == 51
    table = run_report.markdown(rows, summary)
    assert "| teacher fine-tuning | 20 | 10.0 |" in table and "95.6% of the teacher" in table


def test_a_general_student_made_before_the_run_is_reused_not_timed(tmp_path, capsys):
    run = make_run(tmp_path, general_minute=-30)
    rows, _ = run_report.report(run)
    general = next(r for r in rows if r["stage"].startswith("general"))
    assert general["reused"] and general["minutes"] is None
    assert run_report.main([str(run)]) == 0
    assert "| general distillation | 3 | reused |" in capsys.readouterr().out
    assert run_report.main([str(tmp_path / "nowhere")]) == 2


def first_step_began(log: Path, minute: float) -> None:
    """Record in a log's first step the wall clock newer logs carry: that step began at START + minute."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[0]["time"] = START + 60 * minute + records[0]["seconds"]
    ended = log.stat().st_mtime
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.utime(log, (ended, ended))


def test_an_ended_run_times_its_first_stage_from_the_logs_clock(tmp_path):
    """run.lock goes when the run ends: the first stage then starts where its log's first step did."""
    run = make_run(tmp_path, general_minute=25)
    (run / "run.lock").unlink()
    first_step_began(run / "teacher" / "log.jsonl", minute=2)
    rows, _ = run_report.report(run)
    assert round(rows[0]["minutes"], 3) == 8


def test_an_ended_task_run_without_a_teacher_stage_starts_at_its_intermediate_stage(tmp_path):
    """`distill task --finetuned-teacher ...`: no teacher log; the general student was made the day before."""
    run = make_run(tmp_path, general_minute=-1440)
    (run / "run.lock").unlink()
    for path in (run / "teacher").iterdir():
        path.unlink()
    (run / "teacher").rmdir()
    first_step_began(run / "task-intermediate" / "log.jsonl", minute=31)
    rows, _ = run_report.report(run)
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["teacher fine-tuning"].get("missing") and by_stage["general distillation"]["reused"]
    assert round(by_stage["intermediate-layer distillation"]["minutes"], 3) == 9   # minute 31 to 40, not a day


def test_minutes_in_steps_and_a_teacher_copied_in_from_another_run(tmp_path):
    run = make_run(tmp_path, general_minute=25)
    os.utime(run / "teacher" / "log.jsonl", (START - 600,) * 2)       # copied with its times, before the start
    rows, _ = run_report.report(run)
    teacher, general = rows[0], rows[1]
    assert teacher["reused"] and teacher["minutes"] is None
    assert round(general["minutes"], 3) == 25                          # the clock did not move past the start
    assert round(teacher["step_minutes"] * 60, 3) == sum(0.5 + i for i in range(20))
    assert "| teacher fine-tuning | 20 | reused | 3.3 |" in run_report.markdown(rows, {})


def test_several_runs_make_one_table_with_the_papers_ratio(tmp_path, capsys):
    run = make_run(tmp_path, general_minute=25)
    unfinished = tmp_path / "runs" / "cola"
    unfinished.mkdir()
    assert run_report.main([str(run), str(unfinished)]) == 0
    table = capsys.readouterr().out
    # teacher 20 steps of 0.5 + i s = 3.3 min; general 4.5 s; intermediate and prediction 8 s each
    assert ("| sst2 | sst2 (accuracy) | 0.9000 | 0.8600 | **95.6%** | 99.1% (92.6 / 93.4) | – | 3.3, 0.1, 0.3 |"
            in table)
    assert "| cola | no summary.json yet |" in table
    assert run_report.main([str(run), str(unfinished), "--json"]) == 2


def test_compare_evals_gives_best_last_mean_and_their_mean(tmp_path, capsys):
    write_log(tmp_path / "a", [(10, 10)] * 4, [0.80, 0.90, 0.85, 0.86], ended_minute=1)
    write_log(tmp_path / "b", [(10, 10)] * 2, [0.70, 0.88], ended_minute=1)
    a = compare_evals.summarise(tmp_path / "a", last=3)
    assert (a["best"], a["best_step"], a["steps"]) == (0.90, 200, 4)
    assert abs(a["last_mean"] - (0.90 + 0.85 + 0.86) / 3) < 1e-12 and (a["last_min"], a["last_max"]) == (0.85, 0.90)
    assert compare_evals.main([str(tmp_path / "a"), str(tmp_path / "b"), "--last", "3"]) == 0
    table = capsys.readouterr().out
    assert f"| {tmp_path / 'a'} | 4 | 90.00 | 200 | 87.00 | 85.00–90.00 |" in table
    assert "| mean of 2 | | 89.00 | | 83.00 |" in table                  # (90 + 88) / 2, (87 + 79) / 2
    with pytest.raises(SystemExit, match="no log.jsonl"):
        compare_evals.summarise(tmp_path / "missing", last=5)


def test_records_of_another_kind_are_neither_steps_nor_evaluations(tmp_path):
    write_log(tmp_path / "a", [(10, 12)] * 3, [0.80, 0.90], ended_minute=1)
    with open(tmp_path / "a" / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 200, "ema_accuracy": 0.91}) + "\n")
    steps, evals = run_report.read_log(tmp_path / "a" / "log.jsonl")
    assert [r["step"] for r in steps] == [1, 2, 3] and [r["step"] for r in evals] == [100, 200]
    summary = compare_evals.summarise(tmp_path / "a", last=2)
    assert summary["steps"] == 3 and summary["minutes"] == (0.5 + 1.5 + 2.5) / 60
