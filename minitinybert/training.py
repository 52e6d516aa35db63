"""The training loop every stage shares: schedule, clipping, AdamW, a progress bar, a JSONL log,
atomic checkpoints that resume exactly, Ctrl-C that saves, evaluation that keeps the best model,
and a loss-curve plot at the end.

A stage directory holds:
    last/        the resumable state: checkpoint (HF naming) + optimizer.safetensors + trainer_state.json
    best/        the best checkpoint by the dev metric (task stages), or final/ (general distillation)
    log.jsonl    one JSON object per step (every loss term, lr, grad norm, throughput) and per evaluation
    loss.png     the loss curves
Every checkpoint is built beside its target and renamed into place, so an interruption at any
moment leaves the previous good one intact.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .optim import AdamW, clip_grad_norm, linear_schedule
from .weights import WeightsError, read_safetensors, save_checkpoint


class TrainingError(RuntimeError):
    """A run that cannot start or continue: the message says why and what to do."""


@dataclass
class LoopConfig:
    total_steps: int
    lr: float
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    save_every: int = 200
    eval_every: int = 0              # 0: evaluate only at the end (when an evaluator is given)
    log_every: int = 1
    stop_after: int | None = None    # stop (with a checkpoint) after this many steps in this run
    seed: int = 0


@dataclass
class StepResult:
    losses: dict[str, float]         # every term, and "loss" (the weighted total)
    sequences: int
    tokens: int


@dataclass
class LoopState:
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    done: bool = False
    data: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)


def _save_state(model, optimizer: AdamW, state: LoopState, directory: Path, vocab_from, name: str):
    tensors = {"m": optimizer.m, "v": optimizer.v}
    extra = {"trainer_state.json": json.dumps({**state.__dict__, "optimizer_step": optimizer.step_count},
                                              indent=1) + "\n"}
    save_checkpoint(model, directory / name, vocab_from=vocab_from, extra_files=extra,
                    extra_tensors={"optimizer.safetensors": tensors})


def load_state(directory: Path, model, optimizer: AdamW) -> LoopState:
    """Restores parameters, optimizer moments and loop state from a stage's last/ checkpoint."""
    from .weights import load_model
    last = directory / "last"
    try:
        saved = load_model(last)
        raw = json.loads((last / "trainer_state.json").read_text())
        moments = read_safetensors(last / "optimizer.safetensors")
    except (OSError, ValueError, KeyError) as e:
        raise TrainingError(f"cannot resume from {last}: {e}") from None
    if saved.params.shapes() != model.params.shapes():
        raise TrainingError(f"cannot resume from {last}: its parameters do not match this run's model "
                            f"(different student, head or projections)")
    model.params.data[...] = saved.params.data
    optimizer.load_state_dict({"m": moments["m"], "v": moments["v"], "step": raw.pop("optimizer_step")})
    return LoopState(**raw)


class Stopper:
    """Turns the first Ctrl-C into a request to stop after the current step (and save);
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\ninterrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
                  flush=True)
        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:               # not the main thread: no handler, Ctrl-C behaves as usual
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _progress(total: int, initial: int, desc: str):
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)
    except ImportError:
        return None


def train(stage: str, model, directory: Path, cfg: LoopConfig,
          make_batches: Callable[[dict], Iterator],
          step_fn: Callable[[object, np.random.Generator], StepResult],
          data_state: Callable[[], dict],
          evaluate: Callable[[], dict] | None = None,
          vocab_from=None, resume: bool = False, log=print) -> LoopState:
    """Runs `cfg.total_steps` optimizer steps of `step_fn` (which leaves gradients in model.grads).

    `make_batches(state)` returns the batch iterator positioned at a saved data state ({} = start);
    `data_state()` returns the position after the batches consumed so far. `evaluate()` returns the
    task's metrics with a "main" entry; the best checkpoint by it is kept in best/."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    optimizer = AdamW(model.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if (directory / "last").exists():
        if not resume:
            raise TrainingError(f"{directory / 'last'} holds an earlier run of stage {stage!r}: pass --resume to "
                                f"continue it, or choose another --out")
        state = load_state(directory, model, optimizer)
        log(f"[{stage}] resuming at step {state.step}/{cfg.total_steps} from {directory / 'last'}")
    else:
        state = LoopState()
    if state.done:
        log(f"[{stage}] already complete ({directory}); reusing it")
        return state

    rng = np.random.default_rng(cfg.seed)           # dropout
    if state.rng:
        rng.bit_generator.state = state.rng
    batches = make_batches(state.data)
    log_path = directory / "log.jsonl"
    if not resume and log_path.exists():
        log_path.unlink()
    elif log_path.exists():
        _truncate_log(log_path, state.step)
    logf = open(log_path, "a")
    bar = _progress(cfg.total_steps, state.step, stage)
    run_steps = 0

    def checkpoint(name="last"):
        state.data = data_state()
        state.rng = rng.bit_generator.state
        _save_state(model, optimizer, state, directory, vocab_from, name)

    def run_eval():
        metrics = evaluate()
        record = {"stage": stage, "step": state.step, "eval": metrics}
        logf.write(json.dumps(record) + "\n")
        logf.flush()
        improved = state.best_metric is None or metrics["main"] > state.best_metric
        if improved:
            state.best_metric, state.best_step = float(metrics["main"]), state.step
            save_checkpoint(model, directory / "best", vocab_from=vocab_from,
                            extra_files={"metrics.json": json.dumps({"step": state.step, **metrics}, indent=1)})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "main")
        log(f"[{stage}] step {state.step}: dev {shown}" + ("  (best so far, saved)" if improved else ""))

    try:
        with Stopper() as stopper:
            while state.step < cfg.total_steps:
                t0 = time.perf_counter()
                batch = next(batches)
                lr = cfg.lr * linear_schedule(state.step, cfg.total_steps, cfg.warmup)
                result = step_fn(batch, rng)
                grad_norm = clip_grad_norm(model.grads.data, cfg.max_grad_norm)
                if not np.isfinite(grad_norm):
                    raise TrainingError(f"[{stage}] step {state.step}: the gradient is not finite (losses "
                                        f"{result.losses}); lower the learning rate")
                optimizer.step(model.grads.data, lr=lr)
                state.step += 1
                run_steps += 1
                seconds = time.perf_counter() - t0
                if state.step % cfg.log_every == 0 or state.step == cfg.total_steps:
                    logf.write(json.dumps({"stage": stage, "step": state.step, "lr": lr, "grad_norm": grad_norm,
                                           **result.losses, "seq_per_s": result.sequences / seconds,
                                           "tokens_per_s": result.tokens / seconds, "seconds": seconds}) + "\n")
                    logf.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{result.losses['loss']:.4f}", seq_s=f"{result.sequences / seconds:.1f}")
                if evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0 \
                        and state.step < cfg.total_steps:
                    run_eval()
                if stopper.requested or (cfg.stop_after is not None and run_steps >= cfg.stop_after):
                    checkpoint()
                    log(f"[{stage}] stopped at step {state.step}/{cfg.total_steps}; checkpoint in "
                        f"{directory / 'last'} (continue with --resume)")
                    return state
                if cfg.save_every and state.step % cfg.save_every == 0:
                    checkpoint()
            if evaluate is not None:
                run_eval()
            state.done = True
            checkpoint()
            if evaluate is None:
                save_checkpoint(model, directory / "final", vocab_from=vocab_from)
    finally:
        if bar is not None:
            bar.close()
        logf.close()
        plot_log(log_path, directory / "loss.png")
    return state


def _truncate_log(path: Path, step: int) -> None:
    """Drops log lines past the checkpoint being resumed (a run killed between two checkpoints
    logged steps that will now be run again), so that every step appears once."""
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:      # a line cut short by the kill
            continue
    tmp = path.with_suffix(".part")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_log(log_path: Path, png_path: Path) -> Path | None:
    """Loss curves (one line per loss term, log scale) and the dev metric, if matplotlib is installed."""
    try:
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
    tmp = png_path.with_suffix(".part.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


__all__ = ["LoopConfig", "StepResult", "LoopState", "TrainingError", "train", "plot_log", "read_log",
           "WeightsError"]
