"""Teacher fine-tuning with one thing changed: the recipe variants the README measured against the
default and did not adopt, kept so that each of their rows can be run again.

    python tools/teacher_variants.py VARIANT [--value X] [finetune-teacher flags ...]

Variants (each patches the package for this process only, then runs
`python -m minitinybert.distill finetune-teacher` with the other flags):
  pooler-identity  all-MiniLM-L6-v2's pooler was never trained (its bias is all zero, its weight
                   small noise); it starts as the identity instead, so the head first sees [CLS]
  mean-pooling     the head reads the mean of the last layer's hidden states over the real tokens
                   (the pooling sentence-transformers trained this teacher with), not [CLS]
  ema              the dev evaluations, and best/, use the exponential moving average of the
                   weights with decay --value (default 0.99); training itself is unchanged (the
                   average is not checkpointed: no --resume)
  llrd             layer-wise learning rates: the embeddings and layer l of L get --value^(L-l)
                   of the peak rate (default 0.85; the pooler and head the full rate)

A mean-pooling teacher is not a Hugging Face BertForSequenceClassification (that reads [CLS]):
this tool is for measuring, its checkpoints are not for export.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import re
import sys
import threading
from unittest import mock

import numpy as np

import minitinybert.distill as distill
import minitinybert.model as model
import minitinybert.ops as ops
import minitinybert.training as training
from minitinybert.optim import AdamW, _adamw_kernel

VARIANTS = ("pooler-identity", "mean-pooling", "ema", "llrd")
DEFAULT_VALUE = {"ema": 0.99, "llrd": 0.85}


# --- pooler-identity ---------------------------------------------------------------------------------

LOAD_MODEL = distill.load_model


def load_with_identity_pooler(directory, *args, **kwargs):
    """distill.load_model, with an untrained pooler (bias all zero) of a model given a head made the identity."""
    bert = LOAD_MODEL(directory, *args, **kwargs)
    weight, bias = bert.params["pooler.dense.weight"], bert.params["pooler.dense.bias"]
    if kwargs.get("num_labels") is not None and not np.any(bias):
        weight[...] = np.eye(weight.shape[0], dtype=weight.dtype)
        print("[teacher variant] the untrained pooler starts as the identity", flush=True)
    return bert


# --- mean-pooling ------------------------------------------------------------------------------------

_batch = threading.local()       # the attention mask of the forward pass running in this thread
BERT_FORWARD = model.Bert.forward


class MeanPoolerCache:
    def __init__(self, linear, pooled, weights):
        self.linear, self.pooled, self.weights = linear, pooled, weights


def mean_pooler_forward(hidden, weight, bias, mask=None):
    """(B, T, C) -> (B, C): tanh(W mean + b), the mean over the real tokens of each row (mask (B, T),
    by default the one of the forward pass running in this thread)."""
    mask = _batch.mask if mask is None else mask
    weights = (mask / mask.sum(1, keepdims=True)).astype(hidden.dtype)          # (B, T)
    mean = np.einsum("bt,btc->bc", weights, hidden)
    pre, linear = ops.linear_forward(mean, weight, bias)
    pooled = np.tanh(pre)
    return pooled, MeanPoolerCache(linear, pooled, weights)


def mean_pooler_backward(dpooled, cache, weight, hidden_shape):
    """(B, C) -> (B, T, C): each real token gets its share of d mean, padding none."""
    dpre = dpooled * (1.0 - cache.pooled * cache.pooled)
    dmean, dweight, dbias = ops.linear_backward(dpre, cache.linear, weight)
    return (cache.weights[:, :, None] * dmean[:, None, :]).astype(dpooled.dtype), dweight, dbias


def forward_keeping_the_mask(self, input_ids, token_type_ids=None, attention_mask=None, rng=None,
                             keep_cache=False):
    _batch.mask = np.ones(np.shape(input_ids)) if attention_mask is None else np.asarray(attention_mask)
    return BERT_FORWARD(self, input_ids, token_type_ids, attention_mask, rng, keep_cache)


# --- ema ---------------------------------------------------------------------------------------------

class AveragingAdamW(AdamW):
    """AdamW that also keeps `average`, the weights' exponential moving average (from the start weights)."""

    def __init__(self, params, decay: float, **kwargs):
        super().__init__(params, **kwargs)
        self.average_decay = decay
        self.average = params.data.copy()

    def step(self, grads, lr=None):
        super().step(grads, lr)
        self.average *= self.average_decay
        self.average += (1 - self.average_decay) * self.params.data


EVALUATE = training._evaluate


def evaluate_the_average(stage, run_eval, state, checkpoints, step_log, log):
    """training._evaluate on the averaged weights (so best/ holds them too), then the live ones back."""
    params, live = checkpoints.optimizer.params.data, checkpoints.optimizer.params.data.copy()
    params[...] = checkpoints.optimizer.average
    try:
        return EVALUATE(stage, run_eval, state, checkpoints, step_log, log)
    finally:
        params[...] = live


# --- llrd --------------------------------------------------------------------------------------------

def layer_groups(layout: dict, factor: float) -> list[tuple[int, int, float]]:
    """(start, stop, rate multiplier) over the flat buffer: the embeddings and each layer get
    factor^(L - depth) (depth 0 the embeddings, l + 1 layer l), everything else 1."""
    layers = 1 + max(int(m.group(1)) for name in layout if (m := re.match(r"encoder\.layer\.(\d+)\.", name)))
    groups: list[tuple[int, int, float]] = []
    for name, (offset, shape) in layout.items():
        m = re.match(r"encoder\.layer\.(\d+)\.", name)
        depth = 0 if name.startswith("embeddings.") else int(m.group(1)) + 1 if m else layers + 1
        scale = float(np.float32(factor ** max(0, layers - depth)))
        stop = offset + int(np.prod(shape))
        if groups and groups[-1][1] == offset and groups[-1][2] == scale:
            groups[-1] = (groups[-1][0], stop, scale)
        else:
            groups.append((offset, stop, scale))
    return groups


class LayerwiseAdamW(AdamW):
    """AdamW whose rate is multiplied by layer_groups' factor in each group: the fused kernel per group."""

    def __init__(self, params, factor: float, **kwargs):
        super().__init__(params, **kwargs)
        self.groups = layer_groups(params.layout, factor)

    def step(self, grads, lr=None):
        self.step_count += 1
        lr, t = self.lr if lr is None else lr, self.step_count
        for start, stop, scale in self.groups:
            part = slice(start, stop)
            _adamw_kernel(self.params.data[part], grads[part], self.m[part], self.v[part], self.decay[part],
                          lr * scale, self.beta1, self.beta2, self.eps, self.weight_decay,
                          1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t)


# --- the command -------------------------------------------------------------------------------------

def patches(variant: str, value: float | None) -> list[tuple[object, str, object]]:
    """(module or class, attribute, replacement) for each thing the variant changes."""
    if variant == "pooler-identity":
        return [(distill, "load_model", load_with_identity_pooler)]
    if variant == "mean-pooling":
        return [(model.Bert, "forward", forward_keeping_the_mask), (ops, "pooler_forward", mean_pooler_forward),
                (ops, "pooler_backward", mean_pooler_backward)]
    if variant == "ema":
        return [(training, "AdamW", functools.partial(AveragingAdamW, decay=value)),
                (training, "_evaluate", evaluate_the_average)]
    if variant == "llrd":
        return [(training, "AdamW", functools.partial(LayerwiseAdamW, factor=value))]
    raise ValueError(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="other flags go to `python -m minitinybert.distill finetune-teacher`")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--value", type=float, default=None, help="ema: the decay; llrd: the factor per layer")
    args, rest = parser.parse_known_args(argv)
    value = DEFAULT_VALUE.get(args.variant) if args.value is None else args.value
    if args.variant in DEFAULT_VALUE and not 0 < value < 1:
        parser.error(f"--value must lie in (0, 1) for {args.variant}, got {value}")
    if args.variant == "ema" and "--resume" in rest:
        parser.error("ema keeps its average in memory, not in the checkpoint: run it in one go, without --resume")
    print(f"[teacher variant] {args.variant}" + (f" {value}" if args.variant in DEFAULT_VALUE else ""), flush=True)
    with contextlib.ExitStack() as stack:        # the package is itself again afterwards
        for target, name, replacement in patches(args.variant, value):
            stack.enter_context(mock.patch.object(target, name, replacement))
        return distill.main(["finetune-teacher", *rest])


if __name__ == "__main__":
    sys.exit(main())
