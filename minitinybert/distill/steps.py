"""One training step of each stage: the distillation losses (and the teacher's fine-tuning loss) on a
batch, their gradients left in the student's buffer; and the dev-set evaluator the stages share.

Every step has the signature parallel.py's DataParallel runs on shards of a batch:
step(..., grads=, share=) writes its gradient into `grads` scaled by `share`, the shard's fraction
of the global batch, and returns the shard's own mean losses.
"""
from __future__ import annotations

import numpy as np

from ..data.batches import predict_logits
from ..data.metrics import evaluate
from ..data.token_cache import token_table
from ..engine import loss_kernels, losses
from ..engine.config import BertConfig
from ..engine.model import Bert
from ..training.loop import StepResult
from .recipe import LossWeights


def _projection_names(cfg: BertConfig, m: int) -> tuple[str, str]:
    prefix = "fit_dense" if cfg.fit_shared else f"fit_denses.{m}"
    return prefix + ".weight", prefix + ".bias"


def layer_losses(t_out, s_out, student: Bert, mapping: list[int], w, share: float, dhidden: dict, dscores: dict,
                 extra: list, use_kernels: bool = True) -> dict:
    """TinyBERT's embedding, hidden-state and attention losses between two forward passes' outputs (w:
    anything with embedding, hidden and attention weights). Their gradients, scaled by `share`, are added
    to `dhidden` (by hidden state) and `dscores` (by layer), the projections' to `extra` as (name,
    gradient) pairs to add after the student's backward; returns the unweighted loss terms."""
    cfg, P = student.config, student.params
    attn = loss_kernels if use_kernels else losses
    terms = {}
    for m, g in enumerate(mapping):
        weight = w.embedding if m == 0 else w.hidden
        if weight == 0:
            continue
        wname, bname = _projection_names(cfg, m)
        loss, cache = losses.projected_mse_forward(s_out.hidden_states[m], P[wname], P[bname],
                                                   t_out.hidden_states[g])
        dh, dW, db = losses.projected_mse_backward(cache, P[wname], weight * share)
        dhidden[m] = dhidden[m] + dh if m in dhidden else dh
        extra += [(wname, dW), (bname, db)]
        key = "loss_embedding" if m == 0 else "loss_hidden"
        terms[key] = terms.get(key, 0.0) + loss
    if w.attention:
        terms["loss_attention"] = 0.0
        for m in range(1, len(mapping)):
            # the student's scores are not needed after the loss (backward uses the probabilities)
            loss, cache = attn.attention_mse_forward(s_out.attention_scores[m - 1],
                                                     t_out.attention_scores[mapping[m] - 1], overwrite=True)
            dscores[m - 1] = attn.attention_mse_backward(cache, w.attention * share)
            terms["loss_attention"] += loss
    return terms


def weighted_layer_loss(terms: dict, w) -> float:
    return (w.embedding * terms.get("loss_embedding", 0.0) + w.hidden * terms.get("loss_hidden", 0.0)
            + w.attention * terms.get("loss_attention", 0.0))


def intermediate_step(teacher: Bert, student: Bert, batch, rng, mapping: list[int], w: LossWeights,
                      use_kernels: bool = True, grads=None, share: float = 1.0) -> StepResult:
    """Embedding, hidden-state and attention losses; leaves the gradients in `grads` (default
    student.grads), scaled by `share` (this batch's fraction of a larger one: see parallel.py)."""
    t_out = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask)
    s_out = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng,
                            keep_cache=True)
    dhidden, dscores, extra = {}, {}, []
    terms = layer_losses(t_out, s_out, student, mapping, w, share, dhidden, dscores, extra, use_kernels)
    grads = student.backward(s_out, dhidden=dhidden, dscores=dscores, grads=grads)
    for name, g in extra:                        # after backward, which zeroes the buffer
        grads[name][...] += g
    B, T = batch.input_ids.shape
    return StepResult({"loss": weighted_layer_loss(terms, w), **terms}, B, int(batch.attention_mask.sum()), B * T)


def prediction_step(student: Bert, batch, labels, t_logits, rng, w: LossWeights,
                    temperature: float = 1.0, grads=None, share: float = 1.0,
                    regression_target: str = "teacher") -> StepResult:
    """Soft cross-entropy to the teacher's logits `t_logits` (B, K) (regression: MSE to the teacher's
    output, or with regression_target="gold" to the gold score, as the official code), plus an
    optional share of the gold-label loss. The teacher's logits come from one pass over the training
    set before the stage (logits_cache.py): it is frozen. They may be None when unused (w.prediction
    0, or a gold regression target)."""
    regression = student.config.num_labels == 1
    if regression_target not in ("teacher", "gold"):
        raise ValueError(f"regression_target must be 'teacher' or 'gold', got {regression_target!r}")
    s_out = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng,
                            keep_cache=True)
    if w.prediction == 0 or (regression and regression_target == "gold"):
        t_logits = None                                   # the teacher's output is not used
    if w.prediction == 0:
        loss, dlogits = 0.0, np.zeros_like(s_out.logits)
    elif regression:
        if t_logits is None:
            loss, cache = losses.regression_mse_forward(s_out.logits, labels)
        else:
            loss, cache = losses.mse_forward(s_out.logits, t_logits)
        dlogits = losses.mse_backward(cache, w.prediction * share)
    else:
        loss, cache = losses.soft_cross_entropy_forward(s_out.logits, t_logits, temperature)
        dlogits = losses.soft_cross_entropy_backward(cache, w.prediction * share)
    terms = {"loss_prediction": loss}
    total = w.prediction * loss
    if w.hard:
        hard, dhard = _supervised_loss(s_out.logits, labels, w.hard * share)
        dlogits = dlogits + dhard
        terms["loss_hard"] = hard
        total += w.hard * hard
    student.backward(s_out, dlogits=dlogits, grads=grads)
    return StepResult({"loss": total, **terms}, len(labels), int(batch.attention_mask.sum()), batch.input_ids.size)


def _supervised_loss(logits, labels, weight=1.0):
    if logits.shape[1] == 1:
        loss, cache = losses.regression_mse_forward(logits, labels)
        return loss, losses.regression_mse_backward(cache, weight)
    loss, cache = losses.cross_entropy_forward(logits, labels)
    return loss, losses.cross_entropy_backward(cache, weight)


def finetune_step(model: Bert, batch, labels, rng, grads=None, share: float = 1.0) -> StepResult:
    out = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask, rng=rng, keep_cache=True)
    loss, dlogits = _supervised_loss(out.logits, labels, share)
    model.backward(out, dlogits=dlogits.astype(out.logits.dtype, copy=False), grads=grads)
    return StepResult({"loss": loss}, len(labels), int(batch.attention_mask.sum()), batch.input_ids.size)


# --- evaluation -------------------------------------------------------------------------------------


def make_evaluator(model: Bert, dev_sets, tokenizer, max_length: int, cache_dir=None, log=None,
                   workers: int | None = 1):
    """() -> the task's metrics of `model` (as it is at the call) on its dev sets, with "main".

    `dev_sets`: Examples, or {split: Examples} with "dev" first; the metrics of another split are
    prefixed with its name (MNLI: "accuracy" on dev_matched, "mismatched_accuracy"), and "main" is
    the first set's, which picks the best checkpoint. The dev sets are tokenized once, here (and
    kept in `cache_dir` when given), for every evaluation. `workers`: threads, as `predict_logits`."""
    if not isinstance(dev_sets, dict):
        dev_sets = {"dev": dev_sets}
    tokens = {split: token_table(examples, tokenizer, max_length, cache_dir, log)
              for split, examples in dev_sets.items()}

    def run() -> dict:
        metrics = {}
        for split, examples in dev_sets.items():
            logits = predict_logits(model, examples, tokenizer, max_length, tokens=tokens[split], workers=workers)
            preds = logits[:, 0] if model.config.num_labels == 1 else logits
            found = evaluate(examples.task, preds, examples.labels)
            prefix = "" if not metrics else split.removeprefix("dev_") + "_"
            metrics.update({prefix + k: float(v) for k, v in found.items() if not (prefix and k == "main")})
        return metrics
    return run
