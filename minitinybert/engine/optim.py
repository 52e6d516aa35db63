"""AdamW on the flat parameter buffer, gradient clipping and the learning-rate schedule.

One flat array of parameters, one of gradients, two of moments: the update is a single fused
pass (Numba) over all of them, with a plain-NumPy twin for the tests. As BERT and TinyBERT do,
biases and LayerNorm parameters get no weight decay; decay is decoupled (Loshchilov & Hutter):
p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .params import ParamSet


def decay_mask(params: ParamSet) -> np.ndarray:
    """1 where weight decay applies (weight matrices and embeddings), 0 for biases and LayerNorm."""
    mask = np.zeros(params.size, dtype=np.float32)
    for name, (offset, shape) in params.layout.items():
        if not (name.endswith(".bias") or "LayerNorm" in name):
            mask[offset:offset + int(np.prod(shape))] = 1.0
    return mask


@njit(parallel=True, nogil=True, cache=True)
def _adamw_kernel(p, g, m, v, decay, lr, beta1, beta2, eps, weight_decay, bc1, bc2):
    for i in prange(p.size):
        gi = g[i]
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= lr * ((mi / bc1) / (math.sqrt(vi / bc2) + eps) + weight_decay * decay[i] * p[i])


def adamw_step_numpy(p, g, m, v, decay, lr, beta1, beta2, eps, weight_decay, step):
    """The NumPy twin of the fused kernel (same arithmetic, several passes)."""
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    p -= lr * ((m / bc1) / (np.sqrt(v / bc2) + eps) + weight_decay * decay * p)


class AdamW:
    def __init__(self, params: ParamSet, lr=5e-5, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 use_kernels=True):
        self.params = params
        self.lr, (self.beta1, self.beta2), self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = np.zeros_like(params.data)
        self.v = np.zeros_like(params.data)
        self.decay = decay_mask(params).astype(params.dtype)
        self.step_count = 0
        self.use_kernels = use_kernels

    def step(self, grads: np.ndarray, lr: float | None = None) -> None:
        if grads.shape != self.params.data.shape:
            raise ValueError(f"gradient buffer {grads.shape} does not match parameters {self.params.data.shape}")
        self.step_count += 1
        lr = self.lr if lr is None else lr
        t = self.step_count
        if self.use_kernels:
            _adamw_kernel(self.params.data, grads, self.m, self.v, self.decay, lr, self.beta1, self.beta2,
                          self.eps, self.weight_decay, 1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t)
        else:
            adamw_step_numpy(self.params.data, grads, self.m, self.v, self.decay, lr, self.beta1, self.beta2,
                             self.eps, self.weight_decay, t)

    def state_dict(self) -> dict:
        return {"m": self.m, "v": self.v, "step": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        for key in ("m", "v"):
            if state[key].shape != self.m.shape:
                raise ValueError(f"optimizer state {key} has {state[key].shape}, parameters need {self.m.shape}")
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.step_count = int(state["step"])


def clip_grad_norm(grads: np.ndarray, max_norm: float) -> float:
    """Scales the flat gradient in place so its global L2 norm is at most max_norm; returns the norm before."""
    norm = float(np.sqrt(np.dot(grads, grads)))
    if max_norm > 0 and norm > max_norm:
        grads *= max_norm / (norm + 1e-6)
    return norm


def linear_schedule(step: int, total_steps: int, warmup_fraction: float = 0.1) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then linear decay to 0 (BERT's schedule).
    `step` counts from 0 for the first update."""
    warmup = int(total_steps * warmup_fraction)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
