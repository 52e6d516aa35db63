"""TinyBERT's ablations on one task: every variant of the pipeline, one Markdown table.

    python -m tools.experiments.ablate --task sst2 [--out runs/ablate-sst2] [--variants full,no-general,...]
                                       [--loss-ablations-in both|task] [--seeds 0,1] [distill flags ...]

Any flag this tool does not know goes to every `python -m minitinybert.distill` stage it runs
(--teacher-steps, --general-steps, --intermediate-steps, --prediction-steps, --data, --workers, ...).
The fine-tuned teacher and the general student are trained once, in <out>/shared, and shared by the
variants that use them; the augmented set and the teacher's logits on it are cached once, in
<out>/shared/augment-cache.

Variants (what each changes against the full recipe):
  full                general distillation, then task distillation: intermediate layers, then
                      prediction layer, on the augmented training set
  no-general          no general distillation: task distillation starts from BERT's random init
  no-intermediate     no task-specific intermediate-layer distillation: prediction-layer
                      distillation starts from the general student
  no-augmentation     task distillation on the training set as it is
  prediction-only     standard knowledge distillation: the student from random init learns the
                      teacher's logits on the training set as it is; no other loss, no augmentation
  general-labels      no task distillation: the general student fine-tuned on the gold labels (what the
                      general stage alone gives; the pair tasks' stage-by-stage diagnosis)
  no-distillation     the student from random init fine-tuned on the gold labels (no teacher at all)
  no-embedding-loss   the embedding-layer loss off (weight 0), in general and task distillation (the
                      paper's ablation), or in task distillation only with --loss-ablations-in task
  no-prediction-loss  the prediction-layer loss off: after intermediate distillation the prediction
                      stage fits the gold labels (an augmented copy carries its original's label);
                      general distillation has no prediction loss, so it starts from the shared student
  no-attention-loss   the attention-score loss off, where no-embedding-loss turns its loss off
  no-hidden-loss      the hidden-state loss off, likewise
Seeds: --seeds 0,1 runs every variant once per seed (what a variant trains itself: its init from
scratch, augmentation, dropout, batch order, its own general stage); the teacher and the general
student stay shared, made with distill's --seed (default 0). That seed's runs are <out>/<variant>,
the others' <out>/<variant>-seed<S>, so a second seed added later reuses the first's results.
Resumable: each stage checkpoints as distill does, and a variant's result is kept once done; run
the same command again (after Ctrl-C, --stop-after, or a crash) to continue where it stopped.
The table (<out>/ablation-<task>.md) is rewritten after each variant: dev metric of the best
checkpoint (with several seeds: their mean, and each seed's), its ratio to the fine-tuned teacher's,
the mean and range of the last 5 dev evaluations of every seed (the noise to read differences
against), and minutes of training per seed (the sum of the stages' step times from their logs, the
shared general stage counted in every variant that starts from it; evaluation and augmentation not
included).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from minitinybert import distill
from minitinybert.data.tasks import get_task
from minitinybert.distill import STAGE_DIRS
from tools.reports.run_report import read_log


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    general: str                            # "shared", "scratch", or "own" (its own general stage)
    flags: tuple[str, ...] = ()             # task distillation flags
    loss_flags: tuple[str, ...] = ()        # loss weights: task distillation's, and its own general stage's


VARIANTS = (
    Variant("full", "TinyBERT: general, then task distillation (intermediate, prediction), augmented data",
            "shared"),
    Variant("no-general", "no general distillation (task distillation from random init)", "scratch"),
    Variant("no-intermediate", "no task-specific intermediate-layer distillation", "shared",
            ("--skip-intermediate",)),
    Variant("no-augmentation", "no data augmentation", "shared", ("--n-aug", "0")),
    Variant("prediction-only", "prediction-layer distillation only, from random init, no augmentation "
            "(standard KD)", "scratch", ("--skip-intermediate", "--n-aug", "0")),
    Variant("general-labels", "no task distillation: the general student fine-tuned on the labels", "shared",
            ("--skip-intermediate", "--n-aug", "0", "--w-prediction", "0", "--w-hard", "1")),
    Variant("no-distillation", "no distillation: the student from random init fine-tuned on the labels",
            "scratch", ("--skip-intermediate", "--n-aug", "0", "--w-prediction", "0", "--w-hard", "1")),
    Variant("no-embedding-loss", "without the embedding-layer loss", "own", loss_flags=("--w-embedding", "0")),
    Variant("no-prediction-loss", "without the prediction-layer loss: after intermediate distillation, the "
            "prediction stage fits the gold labels (copies carry their original's)", "shared",
            ("--w-prediction", "0", "--w-hard", "1")),
    Variant("no-attention-loss", "without the attention loss", "own", loss_flags=("--w-attention", "0")),
    Variant("no-hidden-loss", "without the hidden-state loss", "own", loss_flags=("--w-hidden", "0")),
)
BY_NAME = {v.name: v for v in VARIANTS}


class Paused(Exception):
    """A stage stopped before its end (Ctrl-C or --stop-after): the next run continues it."""


class StageFailed(Exception):
    """A distill command failed; it has reported why. `args[0]`: its exit status."""


def _stage(argv: list[str], stage_dir: Path, result: str) -> Path:
    """Runs one distill command; `stage_dir / result` once the stage in `stage_dir` has finished."""
    status = distill.main(argv)
    if status:
        raise StageFailed(status)
    if not _complete(stage_dir):
        raise Paused()
    return stage_dir / result


def _step_minutes(stage_dir: Path) -> float:
    """Minutes of training steps in a stage directory's log (resumed runs log each step once)."""
    log = stage_dir / "log.jsonl"
    if not log.exists():
        return 0.0
    steps, _ = read_log(log)
    return sum(r.get("seconds", 0.0) for r in steps) / 60


def _complete(stage_dir: Path) -> bool:
    state = stage_dir / "last" / "trainer_state.json"
    return state.exists() and bool(json.loads(state.read_text()).get("done"))


def _metric(stage_dir: Path) -> float:
    return float(json.loads((stage_dir / "best" / "metrics.json").read_text())["main"])


def last_evaluations(*stage_dirs: Path, n: int = 5) -> str:
    """Mean (min–max) of the last n dev evaluations of each stage given (one per seed), pooled: the best
    one is picked on the dev set it is scored on, so it leans optimistic by about this spread; with one
    seed, the only noise to read differences against."""
    scores = []
    for stage_dir in stage_dirs:
        log = stage_dir / "log.jsonl"
        scores += [r["eval"]["main"] for r in read_log(log)[1]][-n:] if log.exists() else []
    if not scores:
        return "–"
    return f"{sum(scores) / len(scores):.4f} ({min(scores):.4f}–{max(scores):.4f}, {len(scores)})"


def _without_stop_after(flags: list[str]) -> list[str]:
    """The flags that shape the results: --stop-after only splits a run into sittings."""
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag == "--stop-after":
            skip = True
        elif not flag.startswith("--stop-after="):
            out.append(flag)
    return out


class Ablation:
    def __init__(self, task: str, out: Path, passthrough: list[str], loss_stages: str,
                 seeds: list[int] | None = None):
        self.task, self.out, self.passthrough, self.loss_stages = task, out, passthrough, loss_stages
        self.shared = out / "shared"
        self.base_seed = distill.build_parser().parse_args(["task", *passthrough]).seed   # the shared stages'
        self.seeds = seeds or [self.base_seed]
        # the recipe augments, whatever distill's default makes of this budget (--n-aug given: as given)
        copies = [] if any(f == "--n-aug" or f.startswith("--n-aug=") for f in passthrough) else \
            ["--n-aug", str(distill.AUGMENT_COPIES)]
        self.common = ["--task", task, *copies, *passthrough, "--resume"]

    def _check_settings(self) -> None:
        """A resumed table must be made with the settings it was started with."""
        path = self.out / "ablate-settings.json"
        settings = {"task": self.task, "distill_flags": _without_stop_after(self.passthrough),
                    "loss_ablations_in": self.loss_stages}
        if path.exists():
            before = json.loads(path.read_text())
            if before != settings:
                raise SystemExit(f"{self.out} holds an ablation made with other settings:\n  {before}\nnow:\n  "
                                 f"{settings}\nuse the same flags to resume it, or another --out")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings, indent=1) + "\n")

    def teacher(self) -> Path:
        stage = self.shared / STAGE_DIRS["teacher"]
        if _complete(stage):
            return stage / "best"
        return _stage(["finetune-teacher", "--out", str(self.shared), *self.common], stage, "best")

    def shared_general(self) -> Path:
        stage = self.shared / STAGE_DIRS["general"]
        if _complete(stage):
            return stage / "final"
        return _stage(["general", "--out", str(self.shared), "--general-dir", str(stage), *self.common], stage,
                      "final")

    def variant_dir(self, v: Variant, seed: int) -> Path:
        return self.out / (v.name if seed == self.base_seed else f"{v.name}-seed{seed}")

    def run_variant(self, v: Variant, teacher: Path, seed: int) -> dict:
        out = self.variant_dir(v, seed)
        done = out / "result.json"
        if done.exists():
            return json.loads(done.read_text())
        general, minutes = "scratch", 0.0
        own_general = v.general == "own" and self.loss_stages == "both"
        if own_general:
            stage = out / STAGE_DIRS["general"]
            general = str(_stage(["general", "--out", str(out), "--general-dir", str(stage), *self.common,
                                  "--seed", str(seed), *v.loss_flags], stage, "final"))
            minutes += _step_minutes(stage)
        elif v.general in ("shared", "own"):
            general = str(self.shared_general())
            minutes += _step_minutes(self.shared / STAGE_DIRS["general"])
        _stage(["task", "--out", str(out), *self.common, "--seed", str(seed), "--finetuned-teacher", str(teacher),
                "--general-student", general, "--augment-cache", str(self.shared / "augment-cache"), *v.flags,
                *v.loss_flags], out / STAGE_DIRS["prediction"], "best")
        for stage in ("intermediate", "prediction"):
            minutes += _step_minutes(out / STAGE_DIRS[stage])
        result = {"variant": v.name, "seed": seed, "dev": _metric(out / STAGE_DIRS["prediction"]),
                  "minutes": minutes, "general": "own" if own_general else v.general,
                  "flags": [*v.flags, *v.loss_flags]}
        done.write_text(json.dumps(result, indent=1) + "\n")
        return result

    def table(self, variants: list[Variant], results: dict, teacher_metric: float | None) -> str:
        task = get_task(self.task)
        lines = [f"## Ablations on {task.display_name or task.name} (dev {task.main_metric})", ""]
        if teacher_metric is not None:
            teacher_minutes = _step_minutes(self.shared / STAGE_DIRS["teacher"])
            lines.append(f"Fine-tuned teacher: dev {task.main_metric} {teacher_metric:.4f} "
                         f"({teacher_minutes:.1f} min of training, shared by every variant, not counted below).")
        flags = " ".join(_without_stop_after(self.passthrough)) or "(distill defaults)"
        several = len(self.seeds) > 1
        seeds = f"; seeds {', '.join(map(str, self.seeds))}" if several else ""
        best = f"dev {task.main_metric} (best{': mean of seeds (each seed)' if several else ''})"
        lines += [f"Settings: `{flags}`; loss ablations in "
                  f"{'general and task' if self.loss_stages == 'both' else 'task'} distillation{seeds}.", "",
                  f"| variant | what differs | {best} | ratio to teacher | last evaluations: "
                  f"mean (min–max, how many) | minutes |",
                  "|---|---|---|---|---|---|"]
        for v in variants:
            done = results.get(v.name, [])
            if not done:
                lines.append(f"| {v.name} | {v.what} | (not run yet) | | | |")
                continue
            dev = sum(r["dev"] for r in done) / len(done)
            cell = f"{dev:.4f}"
            if several:
                each = " / ".join(f"{r['dev']:.4f}" for r in done)
                missing = f"; {len(done)} of {len(self.seeds)} seeds" if len(done) < len(self.seeds) else ""
                cell += f" ({each}{missing})"
            ratio = f"{dev / teacher_metric:.1%}" if teacher_metric else "n/a"
            last = last_evaluations(*(self.variant_dir(v, r["seed"]) / STAGE_DIRS["prediction"]
                                       for r in done))
            minutes = sum(r["minutes"] for r in done) / len(done)
            lines.append(f"| {v.name} | {v.what} | {cell} | {ratio} | {last} | {minutes:.1f} |")
        lines += ["", "Minutes: training steps only (sum of the stages' step times"
                  f"{', per seed' if several else ''}), the shared general stage counted in each variant that "
                  "starts from it."]
        return "\n".join(lines) + "\n"

    def _done(self, v: Variant) -> list[dict]:
        """The variant's finished results, one per seed, in --seeds order."""
        paths = (self.variant_dir(v, seed) / "result.json" for seed in self.seeds)
        return [{"seed": seed, **json.loads(p.read_text())} for seed, p in zip(self.seeds, paths) if p.exists()]

    def run(self, variants: list[Variant]) -> int:
        self._check_settings()
        results, teacher_metric = {}, None
        table_path = self.out / f"ablation-{self.task}.md"
        try:
            teacher = self.teacher()
            teacher_metric = _metric(self.shared / STAGE_DIRS["teacher"])
            for seed in self.seeds:          # every variant with the first seed before any with the second
                for v in variants:
                    t0 = time.perf_counter()
                    result = self.run_variant(v, teacher, seed)
                    print(f"[ablate] {v.name}, seed {seed}: dev {result['dev']:.4f} "
                          f"({time.perf_counter() - t0:.0f} s this sitting)")
                    results = {w.name: self._done(w) for w in variants}
                    table_path.write_text(self.table(variants, results, teacher_metric))
        except StageFailed as e:
            return e.args[0]
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Paused:
            results = {v.name: self._done(v) for v in variants}      # what is already done still shows
            table_path.write_text(self.table(variants, results, teacher_metric))
            print(f"[ablate] paused; run the same command again to continue. Table so far: {table_path}")
            return 0
        text = self.table(variants, results, teacher_metric)
        table_path.write_text(text)
        print(text)
        print(f"[ablate] written: {table_path}")
        return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="sst2, cola, rte or stsb")
    parser.add_argument("--out", default=None, help="output directory (default runs/ablate-<task>)")
    parser.add_argument("--variants", default="all",
                        help=f"comma-separated subset of: {', '.join(BY_NAME)} (default all)")
    parser.add_argument("--loss-ablations-in", choices=("both", "task"), default="both",
                        help="where the loss ablations switch their loss off: general and task distillation "
                             "(each runs its own general stage; the paper's ablation) or task only (they "
                             "share the full recipe's general student)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds, each variant run once per seed (default: distill's --seed, "
                             "one run); the shared teacher and general student are made with distill's --seed")
    args, passthrough = parser.parse_known_args(argv)
    for flag in ("--out", "--task", "--resume", "--general-student", "--general-dir", "--finetuned-teacher",
                 "--augment-cache"):
        if flag in passthrough:
            raise SystemExit(f"{flag} is set by the tool for each stage; leave it out")
    names = list(BY_NAME) if args.variants == "all" else [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    distill.build_parser().parse_args(["task", *passthrough])   # bad distill flags fail here, before any work
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            raise SystemExit(f"--seeds takes whole numbers separated by commas, not {args.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise SystemExit(f"--seeds needs one or more different seeds, not {args.seeds!r}")
    out = Path(args.out or f"runs/ablate-{get_task(args.task).name}")
    return Ablation(get_task(args.task).name, out, passthrough, args.loss_ablations_in, seeds).run(
        [BY_NAME[n] for n in names])


if __name__ == "__main__":
    sys.exit(main())
