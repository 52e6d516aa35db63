"""The training loop every stage shares: schedule, clipping, AdamW, a progress bar, a JSONL log,
atomic checkpoints that resume exactly, Ctrl-C that saves, evaluation that keeps the best model,
and a loss-curve plot at the end (plots.py).

A stage directory holds:
    last/        the resumable state: checkpoint (HF naming) + optimizer.safetensors + trainer_state.json
    best/        the best checkpoint by the dev metric (task stages), or final/ (general distillation)
    log.jsonl    one JSON object per step (every loss term, lr, grad norm, throughput) and per evaluation
    loss.png     the loss curves
Every checkpoint is built beside its target, flushed to the disk and renamed into place, so an
interruption at any moment (SIGKILL included) leaves the previous good one intact, and so does a
write that fails: a full disk or a read-only place stops the run with one line that says which
checkpoint is intact and how to go on.

Under mpiexec (world.py) every rank runs this loop in step: rank 0 alone reads the checkpoint it
resumes from (the others receive parameters, optimizer moments and position by broadcast) and alone
writes checkpoints, the log, the plot and the progress bar; a stop (Ctrl-C, --stop-after) is agreed
by all ranks before any acts on it; each rank's batch-stream position is saved, and a resumed run
needs the same number of ranks.
"""
from __future__ import annotations

import errno
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..engine.files import write_atomic
from ..engine.optim import AdamW, clip_grad_norm, linear_schedule
from ..engine.progress import progress_bar
from ..engine.weights import load_model, read_safetensors, recover_checkpoint, save_checkpoint
from .plots import plot_log
from .world import World, get_world


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
    tokens: int                      # real tokens
    padded_tokens: int = 0           # tokens computed: the batch's rows times its width, padding included


@dataclass
class LoopState:                     # the fields' order is trainer_state.json's
    step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    done: bool = False
    data: dict = field(default_factory=dict)     # the batch stream's state_dict()
    rng: dict = field(default_factory=dict)      # the dropout generator's state
    cycle_start: int = 0             # the step the learning-rate schedule's current cycle began at


class BatchStream(Protocol):
    """What the loop draws batches from (batches.TaskBatches, corpus.CorpusBatcher): an endless
    iterator whose position between two batches can be saved and restored."""

    def __next__(self): ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# --- checkpoints and the log ----------------------------------------------------------------------

class Checkpoints:
    """A stage directory's checkpoints: last/ (the resumable state), best/ (by the dev metric),
    final/ (the end of a stage without evaluation)."""

    def __init__(self, directory: Path, model, optimizer: AdamW, vocab_from):
        self.directory, self.model, self.optimizer, self.vocab_from = directory, model, optimizer, vocab_from
        self.last = directory / "last"
        self.saved_step: int | None = None       # the step last/ holds, once known

    def recover(self, log) -> None:
        """Puts back what a killed checkpoint write left half-swapped, and clears its unfinished copies."""
        for name in ("last", "best", "final"):
            if recover_checkpoint(self.directory / name):
                log(f"{self.directory / name}: restored from {name}.old (a run was stopped while replacing it)")

    def save_last(self, state: LoopState, data: dict, rng: np.random.Generator) -> None:
        """Parameters, optimizer moments, and the loop's position: its step and best-so-far, the
        position of the batch stream (`data`) and of the dropout generator."""
        state.data = data
        state.rng = rng.bit_generator.state
        trainer_state = json.dumps({**state.__dict__, "optimizer_step": self.optimizer.step_count}, indent=1)
        save_checkpoint(self.model, self.last, vocab_from=self.vocab_from,
                        extra_files={"trainer_state.json": trainer_state + "\n"},
                        extra_tensors={"optimizer.safetensors": {"m": self.optimizer.m, "v": self.optimizer.v}})
        self.saved_step = state.step

    def load_last(self) -> LoopState:
        """Restores parameters and optimizer moments from last/; returns the loop state saved with them."""
        try:
            saved = load_model(self.last)
            raw = json.loads((self.last / "trainer_state.json").read_text())
            moments = read_safetensors(self.last / "optimizer.safetensors")
        except (OSError, ValueError, KeyError) as e:
            raise TrainingError(f"cannot resume from {self.last}: {e}") from None
        if saved.params.shapes() != self.model.params.shapes():
            raise TrainingError(f"cannot resume from {self.last}: its parameters do not match this run's model "
                                f"(different student, head or projections)")
        self.model.params.data[...] = saved.params.data
        self.optimizer.load_state_dict({"m": moments["m"], "v": moments["v"], "step": raw.pop("optimizer_step")})
        state = LoopState(**raw)
        self.saved_step = state.step
        return state

    def save_best(self, step: int, metrics: dict) -> None:
        save_checkpoint(self.model, self.directory / "best", vocab_from=self.vocab_from,
                        extra_files={"metrics.json": json.dumps({"step": step, **metrics}, indent=1)})

    def save_final(self) -> None:
        save_checkpoint(self.model, self.directory / "final", vocab_from=self.vocab_from)


class StepLog:
    """log.jsonl, one JSON object a line, flushed as written. A new run starts it afresh; a resumed
    run first drops what was logged past its checkpoint."""

    def __init__(self, path: Path, resume: bool, step: int):
        if not resume and path.exists():
            path.unlink()
        elif path.exists():
            _truncate_log(path, step)
        self.path = path
        self._file = open(path, "a")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


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
    write_atomic(path, "".join(line + "\n" for line in keep))


# --- the loop --------------------------------------------------------------------------------------

def _restore(stage: str, checkpoints: Checkpoints, optimizer: AdamW, cfg: LoopConfig, resume: bool, world: World,
             log) -> LoopState:
    """The state to start from (new, or a checkpoint's), read by rank 0 alone, with its model and
    optimizer moments broadcast to every rank."""
    def start() -> LoopState:        # rank 0 alone touches the directory
        checkpoints.directory.mkdir(parents=True, exist_ok=True)
        checkpoints.recover(log)
        return _start_or_resume(stage, checkpoints, cfg, resume, log)

    state = world.root_call(start)
    for array in (checkpoints.model.params.data, optimizer.m, optimizer.v):     # rank 0's, on every rank
        world.bcast_(array)
    optimizer.step_count = world.bcast(optimizer.step_count)
    return state


def train(stage: str, model, directory: Path, cfg: LoopConfig, batches: BatchStream,
          step_fn: Callable[[object, np.random.Generator], StepResult],
          evaluate: Callable[[], dict] | None = None,
          vocab_from=None, resume: bool = False, log=print, world: World | None = None) -> LoopState:
    """Runs `cfg.total_steps` optimizer steps of `step_fn(batch, rng)` (which leaves gradients in
    model.grads, summed over the world's ranks) on the batches of `batches`; a resumed run restores the
    stream's position. `evaluate()` returns the task's metrics with a "main" entry; the best checkpoint
    by it is kept in best/. Returns rank 0's final state on every rank.

    A finished run resumed with more steps than it made is extended from its saved state: the
    added steps get a schedule cycle of their own (warm-up, then linear decay to 0 over them),
    with the optimizer's moments carried over."""
    world = world or get_world()
    root = world.is_root
    directory = Path(directory)
    optimizer = AdamW(model.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    checkpoints = Checkpoints(directory, model, optimizer, vocab_from)
    state = _restore(stage, checkpoints, optimizer, cfg, resume, world, log)
    if state.done and state.step >= cfg.total_steps:
        log(f"[{stage}] already complete ({directory}, {state.step} steps); reusing it")
        return state
    if state.done:
        log(f"[{stage}] extending the finished {state.step}-step run to {cfg.total_steps} steps: a new warm-up "
            f"and linear decay over the {cfg.total_steps - state.step} added steps")
        state.done, state.cycle_start = False, state.step
    rng = np.random.default_rng(cfg.seed)           # dropout
    if state.rng:
        rng.bit_generator.state = state.rng
    if state.data:
        batches.load_state_dict(_this_ranks_part(state.data, world))

    def save_last():
        parts = world.allgather(batches.state_dict())
        if root:
            checkpoints.save_last(state, parts[0] if world.size == 1 else {"ranks": parts}, rng)

    step_log = StepLog(directory / "log.jsonl", resume, state.step) if root else None
    bar = progress_bar(cfg.total_steps, stage, enabled=root, initial=state.step, unit="step")
    steps_this_run = 0
    try:
        with Stopper(announce=root) as stopper:
            while state.step < cfg.total_steps:
                t0 = time.perf_counter()
                batch = next(batches)
                lr = cfg.lr * linear_schedule(state.step - state.cycle_start, cfg.total_steps - state.cycle_start,
                                              cfg.warmup)
                result = step_fn(batch, rng)
                grad_norm = _clip_and_step(model, optimizer, cfg.max_grad_norm, lr, result,
                                           where=f"[{stage}] step {state.step}")
                state.step += 1
                steps_this_run += 1
                seconds = time.perf_counter() - t0
                if root and (state.step % cfg.log_every == 0 or state.step == cfg.total_steps):
                    step_log.write(_step_record(stage, state.step, lr, grad_norm, result, seconds))
                _show_progress(bar, result, seconds)
                if root and evaluate is not None and cfg.eval_every and state.step % cfg.eval_every == 0 \
                        and state.step < cfg.total_steps:
                    _evaluate(stage, evaluate, state, checkpoints, step_log, log)
                if world.any(stopper.requested) or (cfg.stop_after is not None and steps_this_run >= cfg.stop_after):
                    save_last()
                    log(f"[{stage}] stopped at step {state.step}/{cfg.total_steps}; checkpoint in "
                        f"{checkpoints.last} (continue with --resume)")
                    break
                if cfg.save_every and state.step % cfg.save_every == 0:
                    save_last()
            else:
                if root and evaluate is not None:
                    _evaluate(stage, evaluate, state, checkpoints, step_log, log)
                state.done = True
                save_last()
                if root and evaluate is None:
                    checkpoints.save_final()
    except OSError as e:                 # a full disk, a read-only place: one line, and what is safe
        raise TrainingError(_write_failure(stage, state.step, e, checkpoints)) from None
    finally:
        if bar is not None:
            bar.close()
        if step_log is not None:
            try:
                step_log.close()
                plot_log(step_log.path, directory / "loss.png")
            except OSError:
                pass                     # the disk that failed the run fails these too: its error is the one to tell
    world.barrier()                  # what rank 0 wrote is there before any rank reads it
    return world.bcast(state)


def _this_ranks_part(data: dict, world: World) -> dict:
    """The batch-stream state of this rank from a checkpoint's (one per rank when several ran)."""
    ranks = data.get("ranks") if isinstance(data, dict) else None
    written_by = 1 if ranks is None else len(ranks)
    if written_by != world.size:
        raise TrainingError(f"the checkpoint was written by a run of {written_by} process(es), this one has "
                            f"{world.size}: resume with the same number of processes (mpiexec -n {written_by})")
    return data if ranks is None else ranks[world.rank]


def describe_os_error(error: OSError) -> str:
    """"path: No space left on device (ENOSPC)": what failed, where, and the code to search for."""
    code = errno.errorcode.get(error.errno, "") if error.errno else ""
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}" + (f" ({code})" if code else "")


def _write_failure(stage: str, step: int, error: OSError, checkpoints: Checkpoints) -> str:
    if checkpoints.saved_step is None:
        safe = "no checkpoint of this stage was written yet; free some space or fix the permissions and run " \
               "the same command again"
    else:
        safe = (f"the checkpoint of step {checkpoints.saved_step} in {checkpoints.last} is intact: free some "
                f"space or fix the permissions, then run the same command with --resume")
    return f"[{stage}] stopped at step {step}: {describe_os_error(error)}; {safe}"


def _start_or_resume(stage: str, checkpoints: Checkpoints, cfg: LoopConfig, resume: bool, log) -> LoopState:
    """A fresh state, or the one in last/ with --resume; never silently over an earlier run."""
    if not checkpoints.last.exists():
        return LoopState()
    if not resume:
        raise TrainingError(f"{checkpoints.last} holds an earlier run of stage {stage!r}: pass --resume to "
                            f"continue it, or choose another --out")
    state = checkpoints.load_last()
    log(f"[{stage}] resuming at step {state.step}/{cfg.total_steps} from {checkpoints.last}")
    return state


def _clip_and_step(model, optimizer: AdamW, max_grad_norm: float, lr: float, result: StepResult,
                   where: str) -> float:
    """Clips model.grads to max_grad_norm, takes the AdamW step; returns the norm before clipping."""
    grad_norm = clip_grad_norm(model.grads.data, max_grad_norm)
    if not np.isfinite(grad_norm):
        raise TrainingError(f"{where}: the gradient is not finite (losses {result.losses}); lower the learning rate")
    optimizer.step(model.grads.data, lr=lr)
    return grad_norm


def _step_record(stage: str, step: int, lr: float, grad_norm: float, result: StepResult, seconds: float) -> dict:
    return {"stage": stage, "step": step, "lr": lr, "grad_norm": grad_norm, **result.losses,
            "tokens": result.tokens, "padded_tokens": result.padded_tokens,
            "seq_per_s": result.sequences / seconds, "tokens_per_s": result.tokens / seconds, "seconds": seconds,
            "time": round(time.time(), 3)}          # wall clock at the step's end: a stage's time from its log alone


def _evaluate(stage: str, evaluate: Callable[[], dict], state: LoopState, checkpoints: Checkpoints,
              step_log: StepLog, log) -> None:
    """The dev metrics, into the log; a new best (by "main") is recorded in `state` and saved in best/."""
    metrics = evaluate()
    step_log.write({"stage": stage, "step": state.step, "eval": metrics})
    improved = state.best_metric is None or metrics["main"] > state.best_metric
    if improved:
        state.best_metric, state.best_step = float(metrics["main"]), state.step
        checkpoints.save_best(state.step, metrics)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "main")
    log(f"[{stage}] step {state.step}: dev {shown}" + ("  (best so far, saved)" if improved else ""))


# --- Ctrl-C and the progress bar ------------------------------------------------------------------

class Stopper:
    """Turns the first Ctrl-C into a request to stop after the current step (and save);
    a second Ctrl-C interrupts at once."""

    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            if self.announce:
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


def _show_progress(bar, result: StepResult, seconds: float) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{result.losses['loss']:.4f}", seq_s=f"{result.sequences / seconds:.1f}")
