"""A student initialised from a subset of its teacher's weights, instead of from random numbers.

TinyBERT starts general distillation from BERT's random initialisation and needs many steps
before the student's hidden states and attention look like the teacher's. A narrower,
shallower student can start from the teacher itself ("weight subcloning", Samragh et al.,
arXiv 2312.09299): keep the teacher's most used hidden dimensions, in every head the query/key
and value/output dimensions that carry the most weight, the feed-forward units that carry the
most weight, and some of its layers. The student's outputs then start close to the teacher's on
the dimensions kept, and general distillation starts from there.

What is kept, and why:
- hidden dimensions: the C_s with the largest mean |activation| over the teacher's hidden states
  (embeddings and every layer) on a few sample batches. A few dimensions of a BERT's residual
  stream are always large; dropping one of them changes every layer norm.
- layers: the teacher's first (the only one that reads embeddings), then for student layer m >= 2
  the teacher layer whose output it learns, g(m) (distill.layer_mapping). With as many layers
  as the teacher, every layer, in order.
- per head (the student must have the teacher's head count): the d_s query/key dimensions with
  the largest |W_q row| |W_k row|, the d_s value/output dimensions with the largest
  |W_v row| |W_o column|. Query and key are scaled by (d_s / d_t)^(1/4) each, so that the
  student's q.k / sqrt(d_s) is the teacher's partial q.k / sqrt(d_t).
- feed-forward units: the F_s with the largest |W_in row| |W_out column|.
- TinyBERT's projections to the teacher's width (fit_dense) start as the selection itself: the
  student's dimension i goes to the teacher's dimension keep[i], the others start at zero.

The teacher's classifier and MLM head are not copied (a general student has neither).
"""
from __future__ import annotations

import numpy as np

from ..engine.config import BertConfig, ConfigError
from ..engine.model import Bert

MODES = ("auto", "subclone", "random")


def resolve_mode(mode: str, teacher: BertConfig, student: BertConfig) -> tuple[str, str]:
    """(the init to use, why): `auto` is subclone where the student fits inside the teacher, else random."""
    if mode != "auto":
        if mode == "subclone":
            check_shapes(teacher, student)
        return mode, "asked for"
    problems = misfits(teacher, student)
    return ("random", "the student does not fit inside the teacher: " + "; ".join(problems)) if problems \
        else ("subclone", "the student fits inside the teacher")


def check_shapes(teacher: BertConfig, student: BertConfig) -> None:
    """Raises ConfigError unless every dimension of the student fits inside the teacher's."""
    problems = misfits(teacher, student)
    if problems:
        raise ConfigError("--student-init subclone needs a student inside the teacher: " + "; ".join(problems))


def misfits(teacher: BertConfig, student: BertConfig) -> list[str]:
    """The dimensions in which the student does not fit inside the teacher (none: it can be subcloned)."""
    problems = []
    for field in ("num_hidden_layers", "hidden_size", "intermediate_size", "max_position_embeddings"):
        if getattr(student, field) > getattr(teacher, field):
            problems.append(f"{field} {getattr(student, field)} > the teacher's {getattr(teacher, field)}")
    for field in ("num_attention_heads", "vocab_size", "type_vocab_size"):
        if getattr(student, field) != getattr(teacher, field):
            problems.append(f"{field} {getattr(student, field)} != the teacher's {getattr(teacher, field)}")
    return problems


def kept_layers(student_layers: int, mapping: list[int]) -> list[int]:
    """Which teacher layer (0-based) each student layer copies: the first, then g(m) - 1."""
    return [0] + [mapping[m] - 1 for m in range(2, student_layers + 1)]


def hidden_importance(teacher: Bert, samples) -> np.ndarray:
    """Mean |activation| of each hidden dimension over the teacher's hidden states, real tokens only."""
    total = np.zeros(teacher.config.hidden_size)
    count = 0
    for batch in samples:
        out = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask)
        real = batch.attention_mask[..., None].astype(np.float64)
        for h in out.hidden_states:
            total += (np.abs(h) * real).sum(axis=(0, 1))
        count += len(out.hidden_states) * int(batch.attention_mask.sum())
    return total / max(count, 1)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, in increasing index order (ties: the lower index)."""
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def subclone_weights(teacher: Bert, config: BertConfig, mapping: list[int], samples) -> np.ndarray:
    """The student's flat parameter buffer (float32), taken from the teacher's weights."""
    check_shapes(teacher.config, config)
    student = Bert(config, seed=0)        # BERT's init for what is not copied (a classifier)
    S, T = student.params, teacher.params
    H, d_t, d_s = config.num_attention_heads, teacher.config.head_size, config.head_size
    keep = _top(hidden_importance(teacher, samples), config.hidden_size)

    e = "embeddings."
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        S[e + name + ".weight"][...] = T[e + name + ".weight"][:S[e + name + ".weight"].shape[0], keep]
    for part in ("weight", "bias"):
        S[e + "LayerNorm." + part][...] = T[e + "LayerNorm." + part][keep]

    qk_scale = (d_s / d_t) ** 0.25
    for m, t_layer in enumerate(kept_layers(config.num_hidden_layers, mapping)):
        s, t = f"encoder.layer.{m}.", f"encoder.layer.{t_layer}."
        Wq, Wk, Wv = (T[t + f"attention.self.{p}.weight"][:, keep] for p in ("query", "key", "value"))
        Wo = T[t + "attention.output.dense.weight"][keep]
        qk, vo = [], []
        for h in range(H):
            rows = np.arange(h * d_t, (h + 1) * d_t)
            qk.append(rows[_top(np.linalg.norm(Wq[rows], axis=1) * np.linalg.norm(Wk[rows], axis=1), d_s)])
            vo.append(rows[_top(np.linalg.norm(Wv[rows], axis=1) * np.linalg.norm(Wo[:, rows], axis=0), d_s)])
        qk, vo = np.concatenate(qk), np.concatenate(vo)
        for p, W, rows, scale in (("query", Wq, qk, qk_scale), ("key", Wk, qk, qk_scale), ("value", Wv, vo, 1.0)):
            S[s + f"attention.self.{p}.weight"][...] = W[rows] * scale
            S[s + f"attention.self.{p}.bias"][...] = T[t + f"attention.self.{p}.bias"][rows] * scale
        S[s + "attention.output.dense.weight"][...] = Wo[:, vo]
        S[s + "attention.output.dense.bias"][...] = T[t + "attention.output.dense.bias"][keep]

        Wi, Wout = T[t + "intermediate.dense.weight"][:, keep], T[t + "output.dense.weight"][keep]
        units = _top(np.linalg.norm(Wi, axis=1) * np.linalg.norm(Wout, axis=0), config.intermediate_size)
        S[s + "intermediate.dense.weight"][...] = Wi[units]
        S[s + "intermediate.dense.bias"][...] = T[t + "intermediate.dense.bias"][units]
        S[s + "output.dense.weight"][...] = Wout[:, units]
        S[s + "output.dense.bias"][...] = T[t + "output.dense.bias"][keep]
        for norm in ("attention.output.LayerNorm.", "output.LayerNorm."):
            for part in ("weight", "bias"):
                S[s + norm + part][...] = T[t + norm + part][keep]

    S["pooler.dense.weight"][...] = T["pooler.dense.weight"][np.ix_(keep, keep)]
    S["pooler.dense.bias"][...] = T["pooler.dense.bias"][keep]
    for name in S.names():
        if name.startswith("fit_dense") and name.endswith(".weight"):      # (C_t, C_s): the selection
            S[name][...] = 0.0
            S[name][keep, np.arange(len(keep))] = 1.0
        elif name.startswith("fit_dense"):
            S[name][...] = 0.0
    return S.data.astype(np.float32)
