"""TinyBERT's distillation losses, each a forward/backward pair with its gradient derived by hand.

Conventions: every loss is a mean, so its scale does not depend on batch size or length;
`*_forward` returns (loss, cache), `*_backward(cache, weight)` returns the gradients of
`weight * loss`. The losses here are NumPy; `loss_kernels.py` holds fused Numba twins of the
expensive one (the attention loss, which runs over B*H*T*T entries per layer pair).

Derivations (n = number of entries averaged over):
- MSE(y, t) = sum((y - t)^2) / n                     d/dy = 2 (y - t) / n
- projected MSE, y = s W^T + b:                      ds = dy W,  dW = dy^T s,  db = sum dy
- attention MSE: entries <= -100 (the -10000 padding mask, in either model) are set to 0 in
  both, as the official code does; the zeroing is a constant for the student's masked entries,
  so their gradient is 0:                            d/ds = 2 (s' - t') / n * [s > -100]
- soft cross-entropy at temperature T, mean over batch *and* classes (B*K), as the official code:
  L = -sum(p_t * log softmax(s / T)) / (B K),  p_t = softmax(t / T)
  d/ds = (softmax(s / T) - p_t) / (T B K)            (because each row of p_t sums to 1)
- hard cross-entropy, mean over batch:                d/ds = (softmax(s) - onehot(y)) / B
- sentence embeddings (engine/pooling.py makes them: pooled, projected, normalised), rows s_b, t_b of
  (B, D): MSE as above, n = B D; cosine distance L = sum_b (1 - c_b) / B with
  c_b = s_b . t_b / (|s_b| |t_b|):                   d/ds_b = -(t_b / (|s_b| |t_b|) - c_b s_b / |s_b|^2) / B
  (norms clamped at 1e-12: a zero row gets no gradient from its direction)
"""
from __future__ import annotations

import numpy as np

MASKED_SCORE = -100.0   # at or below: a padded key (the mask adds -10000); zeroed in the attention loss


# --- MSE --------------------------------------------------------------------------------------

def mse_forward(pred, target):  # (...) , (...) -> scalar
    if pred.shape != target.shape:
        raise ValueError(f"MSE of shapes {pred.shape} and {target.shape}")
    diff = pred - target
    return float(np.mean(diff * diff)), (diff,)


def mse_backward(cache, weight=1.0):
    (diff,) = cache
    return diff * (2.0 * weight / diff.size)


# --- MSE through a learned projection (embedding and hidden-state losses) ----------------------

def projected_mse_forward(student, weight, bias, teacher):  # (B, T, Cs), (Ct, Cs), (Ct,), (B, T, Ct) -> scalar
    """MSE(student W^T + b, teacher): W maps the student's width to the teacher's."""
    if student.shape[:-1] != teacher.shape[:-1] or weight.shape != (teacher.shape[-1], student.shape[-1]):
        raise ValueError(f"projection {weight.shape} cannot map student {student.shape} onto teacher "
                         f"{teacher.shape}")
    proj = student @ weight.T
    proj += bias
    proj -= teacher                       # proj now holds the difference: no second temporary
    return float(np.mean(proj * proj)), (proj, student)


def projected_mse_backward(cache, weight_matrix, weight=1.0):
    """-> d student (B, T, Cs), d W (Ct, Cs), d b (Ct,)."""
    diff, student = cache
    dproj = diff * (2.0 * weight / diff.size)
    dproj2 = dproj.reshape(-1, dproj.shape[-1])
    dstudent = dproj @ weight_matrix
    dW = dproj2.T @ student.reshape(-1, student.shape[-1])
    return dstudent, dW, dproj2.sum(axis=0)


# --- attention-score MSE ------------------------------------------------------------------------

def attention_mse_forward(student_scores, teacher_scores, overwrite=False):  # (B, H, T, T) x 2 -> scalar
    """`overwrite` is there for the fused twin's signature (loss_kernels writes its gradient over the
    student's scores when allowed): distill.intermediate_step calls either one with it. This
    reference never writes its inputs."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"attention scores differ in shape: student {student_scores.shape}, teacher "
                         f"{teacher_scores.shape} (student and teacher need the same number of heads)")
    keep = student_scores > MASKED_SCORE
    s = np.where(keep, student_scores, 0.0)
    t = np.where(teacher_scores > MASKED_SCORE, teacher_scores, 0.0)
    diff = (s - t).astype(student_scores.dtype, copy=False)
    return float(np.mean(diff * diff)), (diff, keep)


def attention_mse_backward(cache, weight=1.0):
    diff, keep = cache
    return diff * keep * (2.0 * weight / diff.size)


# --- prediction layer ---------------------------------------------------------------------------

def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def soft_cross_entropy_forward(student_logits, teacher_logits, temperature=1.0):  # (B, K) x 2 -> scalar
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher logits {teacher_logits.shape} and student logits {student_logits.shape} "
                         f"differ: the two task heads must have the same labels")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_q = _log_softmax(student_logits / temperature)
    p = np.exp(_log_softmax(teacher_logits / temperature))
    loss = float(-np.sum(p * log_q) / p.size)
    return loss, (np.exp(log_q), p, temperature)


def soft_cross_entropy_backward(cache, weight=1.0):
    q, p, temperature = cache
    return (q - p) * (weight / (temperature * p.size))


def cross_entropy_forward(logits, labels):  # (B, K), (B,) int -> scalar
    labels = np.asarray(labels)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{labels.shape[0] if labels.ndim else 'scalar'} labels for {logits.shape[0]} rows")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"label ids must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
    log_q = _log_softmax(logits)
    rows = np.arange(len(labels))
    return float(-log_q[rows, labels].mean()), (np.exp(log_q), labels)


def cross_entropy_backward(cache, weight=1.0):
    q, labels = cache
    d = q.copy()
    d[np.arange(len(labels)), labels] -= 1.0
    return d * (weight / len(labels))


def regression_mse_forward(prediction, target):  # (B, 1), (B,) -> scalar
    """STS-B and other regression tasks: MSE of the single output to a score (gold or teacher's)."""
    return mse_forward(prediction, np.asarray(target, dtype=prediction.dtype).reshape(prediction.shape))


regression_mse_backward = mse_backward


# --- sentence embeddings (student against teacher, rows of (B, D)) ------------------------------

def _check_embeddings(student, teacher):
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"sentence embeddings of shapes {student.shape} and {teacher.shape}: the student's must be "
                         f"(batch, teacher width); project it when the widths differ")


def embedding_mse_forward(student, teacher):  # (B, D) x 2 -> scalar
    _check_embeddings(student, teacher)
    return mse_forward(student, teacher)


embedding_mse_backward = mse_backward


def embedding_cosine_forward(student, teacher, eps: float = 1e-12):  # (B, D) x 2 -> scalar: mean(1 - cos)
    _check_embeddings(student, teacher)
    s_norm = np.maximum(np.linalg.norm(student, axis=1, keepdims=True), eps)
    t_unit = teacher / np.maximum(np.linalg.norm(teacher, axis=1, keepdims=True), eps)
    s_unit = student / s_norm
    cos = np.sum(s_unit * t_unit, axis=1, keepdims=True)
    return float(np.mean(1.0 - cos)), (s_unit, t_unit, s_norm, cos)


def embedding_cosine_backward(cache, weight=1.0):
    s_unit, t_unit, s_norm, cos = cache
    return ((s_unit * cos - t_unit) / s_norm * (weight / len(cos))).astype(s_unit.dtype, copy=False)
