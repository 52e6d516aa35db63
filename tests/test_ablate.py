"""tools/experiments/ablate.py on a tiny world: every variant in the table, resumable across sittings."""
import json
from pathlib import Path

import numpy as np
import pytest

from minitinybert import distill
from tests.tiny_world import build_world
from tools.experiments import ablate


@pytest.fixture(autouse=True)
def no_loss_plots(monkeypatch):
    """Each stage's loss.png takes matplotlib seconds; these tests look at tables and checkpoints."""
    monkeypatch.setattr("minitinybert.training.loop.plot_log", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("ablate-world"), train=32, dev=16, documents=6)


def flags(world, steps=2):
    return ["--data", str(world / "data"), "--teacher", str(world / "teacher"), "--student",
            str(world / "student.json"), "--batch-size", "8", "--general-seq-len", "16", "--n-aug", "2",
            "--workers", "1", "--eval-every", "0", "--save-every", "1", "--teacher-steps", str(steps),
            "--general-steps", str(steps), "--intermediate-steps", str(steps), "--prediction-steps", str(steps)]


def rows(table: str) -> dict[str, list[str]]:
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ablate.BY_NAME:
            out[cells[0]] = cells
    return out


def test_every_variant_in_the_table_and_a_second_run_reuses_them(world, tmp_path, capsys):
    out = tmp_path / "ablate"
    assert ablate.main(["--task", "sst2", "--out", str(out), *flags(world)]) == 0
    table = (out / "ablation-sst2.md").read_text()
    found = rows(table)
    assert list(found) == list(ablate.BY_NAME)                       # every variant, in order
    teacher = json.loads((out / "shared" / "teacher" / "best" / "metrics.json").read_text())["main"]
    assert f"{teacher:.4f}" in table
    for name, (_, what, dev, ratio, last, minutes) in found.items():
        result = json.loads((out / name / "result.json").read_text())
        best = json.loads((out / name / "task-prediction" / "best" / "metrics.json").read_text())["main"]
        assert dev == f"{best:.4f}" == f"{result['dev']:.4f}", name
        assert ratio == f"{best / teacher:.1%}" and float(minutes) >= 0 and what
        assert last == ablate.last_evaluations(out / name / "task-prediction"), name
    # what each variant ran: the stages it has, and the general student it started from
    assert not (out / "no-intermediate" / "task-intermediate").exists()
    assert (out / "full" / "task-intermediate" / "final").exists()
    for name in ("no-embedding-loss", "no-attention-loss", "no-hidden-loss"):
        assert (out / name / "general" / "final").exists()           # its own general stage, loss off
        log = [json.loads(line) for line in (out / name / "general" / "log.jsonl").read_text().splitlines()]
        term = {"no-embedding-loss": "loss_embedding", "no-attention-loss": "loss_attention",
                "no-hidden-loss": "loss_hidden"}[name]
        assert term not in log[0] and "loss" in log[0]
    assert not (out / "full" / "general").exists() and (out / "shared" / "general" / "final").exists()
    for name in ("no-distillation", "general-labels", "no-prediction-loss"):   # the gold labels alone
        first = json.loads((out / name / "task-prediction" / "log.jsonl").read_text().splitlines()[0])
        assert first["loss_prediction"] == 0 and first["loss_hard"] > 0, name
    assert not (out / "general-labels" / "task-intermediate").exists()
    assert (out / "no-prediction-loss" / "task-intermediate" / "final").exists()
    assert not (out / "no-prediction-loss" / "general").exists()   # no prediction loss in general distillation
    # a second run trains nothing: every result is kept
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    capsys.readouterr()
    assert ablate.main(["--task", "sst2", "--out", str(out), *flags(world)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps
    assert rows((out / "ablation-sst2.md").read_text()) == found
    # other settings in the same directory are refused
    with pytest.raises(SystemExit, match="other settings"):
        ablate.main(["--task", "sst2", "--out", str(out), *flags(world, steps=3)])


def test_a_table_spans_sittings(world, tmp_path):
    """--stop-after splits every stage; each run continues where the last stopped, and the result is
    the uninterrupted run's."""
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    chosen = ["--variants", "no-general,no-intermediate"]
    assert ablate.main(["--task", "sst2", "--out", str(straight), *chosen, *flags(world, steps=3)]) == 0
    sittings = 0
    while not (paused / "no-intermediate" / "result.json").exists():
        assert ablate.main(["--task", "sst2", "--out", str(paused), *chosen, *flags(world, steps=3),
                            "--stop-after", "2"]) == 0
        sittings += 1
        assert sittings < 12
        if sittings == 1:
            assert "(not run yet)" in (paused / "ablation-sst2.md").read_text()
    assert sittings >= 3
    for name in ("no-general", "no-intermediate"):
        a = json.loads((straight / name / "result.json").read_text())
        b = json.loads((paused / name / "result.json").read_text())
        assert a["dev"] == b["dev"], name
        np.testing.assert_array_equal(
            _params(straight / name), _params(paused / name), err_msg=name)


def test_seeds_add_runs_beside_the_first_and_the_table_shows_their_mean(world, tmp_path, capsys):
    out, chosen = tmp_path / "ablate", ["--variants", "no-general"]
    one = [*flags(world), "--eval-every", "1"]
    assert ablate.main(["--task", "sst2", "--out", str(out), *chosen, *one]) == 0
    first = out / "no-general"
    stamps = {p: p.stat().st_mtime_ns for p in first.rglob("*.safetensors")}
    assert ablate.main(["--task", "sst2", "--out", str(out), *chosen, *one, "--seeds", "0,3"]) == 0
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*.safetensors")} == stamps   # seed 0 reused
    second = out / "no-general-seed3"
    results = [json.loads((d / "result.json").read_text()) for d in (first, second)]
    assert [r["seed"] for r in results] == [0, 3]
    assert not np.array_equal(_params(first), _params(second))          # another init, order, dropout
    _, _, dev, ratio, last, minutes = rows((out / "ablation-sst2.md").read_text())["no-general"]
    mean = (results[0]["dev"] + results[1]["dev"]) / 2
    assert dev == f"{mean:.4f} ({results[0]['dev']:.4f} / {results[1]['dev']:.4f})"
    teacher = json.loads((out / "shared" / "teacher" / "best" / "metrics.json").read_text())["main"]
    assert ratio == f"{mean / teacher:.1%}"
    assert last.endswith(", 4)")                                          # 2 evaluations of each seed
    assert float(minutes) == pytest.approx((results[0]["minutes"] + results[1]["minutes"]) / 2, abs=0.06)
    assert "seeds 0, 3" in (out / "ablation-sst2.md").read_text()
    # the teacher and general student stay shared: no seed-3 copy of them
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["no-general", "no-general-seed3", "shared"]
    with pytest.raises(SystemExit, match="different seeds"):
        ablate.main(["--task", "sst2", "--out", str(out), *chosen, *one, "--seeds", "0,0"])
    with pytest.raises(SystemExit, match="whole numbers"):
        ablate.main(["--task", "sst2", "--out", str(out), *chosen, *one, "--seeds", "0,x"])


def _params(run: Path) -> np.ndarray:
    from minitinybert.engine.weights import load_model
    return load_model(run / "task-prediction" / "last").params.data


def test_last_evaluations_are_the_mean_and_range_of_the_last_five(tmp_path):
    lines = []
    for step, score in enumerate([0.2, 0.9, 0.5, 0.6, 0.7, 0.8, 0.4], start=1):
        lines += [json.dumps({"stage": "prediction", "step": step * 10, "loss": 1.0}),
                  json.dumps({"stage": "prediction", "step": step * 10, "eval": {"main": score}})]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + '\n{"stage": "predic')    # a line cut by a kill
    assert ablate.last_evaluations(tmp_path) == "0.6000 (0.4000–0.8000, 5)"
    assert ablate.last_evaluations(tmp_path, n=2) == "0.6000 (0.4000–0.8000, 2)"
    assert ablate.last_evaluations(tmp_path / "absent") == "–"
    assert ablate.last_evaluations(tmp_path, tmp_path / "absent", tmp_path, n=1) == "0.4000 (0.4000–0.4000, 2)"


def test_the_recipe_augments_whatever_distills_default_makes_of_the_budget(tmp_path):
    forced = ablate.Ablation("sst2", tmp_path, ["--intermediate-steps", "10"], "task").common
    assert forced[forced.index("--n-aug") + 1] == str(distill.AUGMENT_COPIES)
    given = ablate.Ablation("sst2", tmp_path, ["--n-aug", "2"], "task").common
    assert given.count("--n-aug") == 1 and given[given.index("--n-aug") + 1] == "2"
    # a variant's own --n-aug 0 comes after the common flags, so it wins
    args = distill.build_parser().parse_args(["task", *forced, "--n-aug", "0"])
    assert args.n_aug == 0


def test_unknown_variant_and_flags_owned_by_the_tool(tmp_path):
    with pytest.raises(SystemExit, match="unknown variant"):
        ablate.main(["--task", "sst2", "--out", str(tmp_path), "--variants", "full,nonsense"])
    with pytest.raises(SystemExit, match="set by the tool"):
        ablate.main(["--task", "sst2", "--out", str(tmp_path), "--general-student", "x"])
