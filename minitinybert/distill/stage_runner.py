"""What every training stage shares: the loop around its step (training/loop.py) on shards of each
batch (training/parallel.py), checkpoints in the stage's directory, and its dev-set evaluator."""
from __future__ import annotations

from pathlib import Path

from ..engine.model import Bert
from ..training.loop import LoopConfig, train
from ..training.parallel import DataParallel
from ..training.world import get_world
from .config import RunConfig
from .recipe import stage_dir
from .sources import token_cache_dir
from .steps import make_evaluator


def stage_evaluator(config: RunConfig, model, dev, tokenizer, max_length: int, log=None):
    """The training stages' evaluator, on the --workers threads (the summary's stays on one, as its
    speed figures always were)."""
    with get_world().root_first():      # the dev sets' token ids, as task_tokens
        return make_evaluator(model, dev, tokenizer, max_length, token_cache_dir(config), log,
                              workers=config.workers)


def train_stage(config: RunConfig, stage: str, model: Bert, steps: int, lr: float, batches, step, evaluate=None,
                vocab_from=None, log=print, runner: DataParallel | None = None, directory: Path | None = None):
    """`steps` optimizer steps in the shared loop (training/loop.py), checkpoints in the stage's directory.
    `step(batch, rng, grads=, share=)` runs on shards of each batch in --workers threads of each
    process (parallel.py; several processes under mpiexec)."""
    runner = runner or DataParallel(model, config.workers, get_world())
    loop = LoopConfig(total_steps=steps, lr=lr, warmup=config.warmup, weight_decay=config.weight_decay,
                      max_grad_norm=config.max_grad_norm, save_every=config.save_every, eval_every=config.eval_every,
                      stop_after=config.stop_after, seed=config.seed)
    return train(stage, model, directory or stage_dir(config, stage), loop, batches,
                 lambda batch, rng: runner(step, batch, rng),
                 evaluate=evaluate, vocab_from=vocab_from, resume=config.resume, log=log, world=runner.world)
