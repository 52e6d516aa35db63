"""A student initialised from its teacher's weights (subclone.py): a student of the teacher's size is
the teacher; what is dropped is what carries least; the head scaling keeps the teacher's scores;
shapes that do not fit are refused; the general stage records the choice and resumes exactly."""
import json

import numpy as np
import pytest

from minitinybert.engine.config import ConfigError
from minitinybert.distill import layer_mapping, main
from minitinybert.engine.model import Bert
from minitinybert.distill.subclone import hidden_importance, kept_layers, resolve_mode, subclone_weights
from minitinybert.data.tokenizer import Batch
from minitinybert.engine.weights import load_model
from tests.tiny_world import STUDENT, TEACHER, build_world


def samples(seed=0, n=2, B=3, T=7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(5, TEACHER.vocab_size, (B, T)).astype(np.int32)
        mask = np.ones((B, T), np.int32)
        mask[0, T - 2:] = 0                                   # padding is not counted
        out.append(Batch(ids, np.zeros_like(ids), mask))
    return out


def subcloned(teacher, config, batches=None):
    config = config.replace(fit_size=teacher.config.hidden_size)
    mapping = layer_mapping(config.num_hidden_layers, teacher.config.num_hidden_layers)
    student = Bert(config, seed=None)
    student.params.data[...] = subclone_weights(teacher, config, mapping, batches or samples())
    return student


def test_a_student_of_the_teachers_size_is_the_teacher():
    teacher = Bert(TEACHER, seed=3)
    student = subcloned(teacher, TEACHER)
    b = samples(seed=1)[0]
    t, s = (m.forward(b.input_ids, b.token_type_ids, b.attention_mask) for m in (teacher, student))
    for a, c in zip(t.hidden_states + t.attention_scores, s.hidden_states + s.attention_scores):
        np.testing.assert_allclose(c, a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.pooled, t.pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(student.params["fit_denses.2.weight"], np.eye(TEACHER.hidden_size))


def test_feed_forward_units_that_carry_nothing_are_the_ones_dropped():
    teacher = Bert(TEACHER, seed=3)
    F = STUDENT.intermediate_size
    idle = np.arange(1, TEACHER.intermediate_size, 2)[:TEACHER.intermediate_size - F]   # every other unit
    for layer in range(TEACHER.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        teacher.params[p + "intermediate.dense.weight"][idle] = 0      # GELU(0) = 0: they add nothing
        teacher.params[p + "intermediate.dense.bias"][idle] = 0
    student = subcloned(teacher, TEACHER.replace(intermediate_size=F))
    b = samples(seed=2)[0]
    t, s = (m.forward(b.input_ids, b.token_type_ids, b.attention_mask) for m in (teacher, student))
    for a, c in zip(t.hidden_states, s.hidden_states):
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)
    busy = np.setdiff1d(np.arange(TEACHER.intermediate_size), idle)
    np.testing.assert_array_equal(student.params["encoder.layer.1.output.dense.weight"],
                                  teacher.params["encoder.layer.1.output.dense.weight"][:, busy])


def test_the_most_used_hidden_dimensions_are_kept_and_the_projection_selects_them():
    teacher = Bert(TEACHER, seed=3)
    batches = samples()
    student = subcloned(teacher, STUDENT, batches)
    importance = hidden_importance(teacher, batches)
    keep = np.sort(np.argsort(-importance)[:STUDENT.hidden_size])
    W = student.params["fit_denses.0.weight"]                      # (C_teacher, C_student)
    assert W.sum() == STUDENT.hidden_size and set(np.unique(W)) == {0.0, 1.0}
    np.testing.assert_array_equal(np.argmax(W, axis=0), keep)
    assert importance[keep].min() >= np.delete(importance, keep).max()
    np.testing.assert_array_equal(student.params["embeddings.word_embeddings.weight"],
                                  teacher.params["embeddings.word_embeddings.weight"][:, keep])
    np.testing.assert_array_equal(student.params["pooler.dense.weight"],
                                  teacher.params["pooler.dense.weight"][np.ix_(keep, keep)])


def test_the_layers_kept_are_the_first_then_the_mapped_ones():
    assert kept_layers(4, layer_mapping(4, 6)) == [0, 2, 4, 5]
    assert kept_layers(6, layer_mapping(6, 6)) == [0, 1, 2, 3, 4, 5]
    assert kept_layers(2, layer_mapping(2, 3)) == [0, 2]
    teacher = Bert(TEACHER, seed=3)
    student = subcloned(teacher, TEACHER.replace(num_hidden_layers=2))
    for m, t in enumerate([0, 2]):
        name = "attention.output.LayerNorm.bias"
        np.testing.assert_array_equal(student.params[f"encoder.layer.{m}.{name}"],
                                      teacher.params[f"encoder.layer.{t}.{name}"])


def test_each_heads_scores_are_the_teachers_partial_scores():
    """q_s.k_s / sqrt(d_s) = (the teacher's q.k over the kept rows and hidden dimensions) / sqrt(d_t)."""
    teacher = Bert(TEACHER, seed=3)
    batches = samples()
    student = subcloned(teacher, STUDENT, batches)
    keep = np.argmax(student.params["fit_denses.0.weight"], axis=0)
    d_t, d_s = TEACHER.head_size, STUDENT.head_size
    p = "encoder.layer.0.attention.self."
    x = np.random.default_rng(4).normal(size=(5, STUDENT.hidden_size))
    q_s = x @ student.params[p + "query.weight"].T + student.params[p + "query.bias"]
    k_s = x @ student.params[p + "key.weight"].T + student.params[p + "key.bias"]
    Wq, Wk = teacher.params[p + "query.weight"][:, keep], teacher.params[p + "key.weight"][:, keep]
    bq, bk = teacher.params[p + "query.bias"], teacher.params[p + "key.bias"]
    for h in range(TEACHER.num_attention_heads):
        rows = np.arange(h * d_t, (h + 1) * d_t)
        q_t, k_t = x @ Wq[rows].T + bq[rows], x @ Wk[rows].T + bk[rows]
        cols = slice(h * d_s, (h + 1) * d_s)
        student_scores = q_s[:, cols] @ k_s[:, cols].T / np.sqrt(d_s)
        # the rows kept are d_s of the head's d_t: one of the teacher's per-dimension products
        per_row = [np.outer(q_t[:, r], k_t[:, r]) / np.sqrt(d_t) for r in range(d_t)]
        assert any(np.allclose(student_scores, sum(per_row[r] for r in chosen), rtol=1e-4, atol=1e-6)
                   for chosen in _subsets(d_t, d_s))


def _subsets(n, k):
    from itertools import combinations
    return combinations(range(n), k)


@pytest.mark.parametrize("change, field", [(dict(num_hidden_layers=4), "num_hidden_layers"),
                                           (dict(num_attention_heads=6), "num_attention_heads"),
                                           (dict(intermediate_size=96), "intermediate_size")])
def test_a_student_that_does_not_fit_inside_the_teacher_is_refused(change, field):
    with pytest.raises(ConfigError, match=field):
        subcloned(Bert(TEACHER, seed=3), STUDENT.replace(**change))


def test_auto_subclones_a_student_that_fits_and_says_why_it_does_not():
    assert resolve_mode("auto", TEACHER, STUDENT) == ("subclone", "the student fits inside the teacher")
    mode, why = resolve_mode("auto", TEACHER, STUDENT.replace(num_attention_heads=6))
    assert mode == "random" and "num_attention_heads 6" in why
    assert resolve_mode("random", TEACHER, STUDENT)[0] == "random"
    with pytest.raises(ConfigError, match="num_hidden_layers 4"):
        resolve_mode("subclone", TEACHER, STUDENT.replace(num_hidden_layers=4))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def general_args(world, out, *extra):
    return ["general", "--teacher", str(world / "teacher"), "--student", str(world / "student.json"),
            "--data", str(world / "data"), "--out", str(out), "--general-seq-len", "16", "--batch-size", "8",
            "--general-steps", "3", "--workers", "1", *extra]


def test_the_general_stage_records_the_init_starts_closer_and_resumes_exactly(world, tmp_path, capsys):
    assert main(general_args(world, tmp_path / "random" / "run", "--student-init", "random")) == 0
    assert main(general_args(world, tmp_path / "sub" / "run")) == 0                  # auto: it fits
    assert "initialised from the teacher's weights" in capsys.readouterr().out
    (random_dir,), (sub_dir,) = (list((tmp_path / k / "general").iterdir()) for k in ("random", "sub"))
    assert random_dir.name != sub_dir.name                       # another recipe, another student
    assert "student_init" not in json.loads((random_dir / "general.json").read_text())["recipe"]
    assert json.loads((sub_dir / "general.json").read_text())["recipe"]["student_init"] == "subclone"
    first = [json.loads((d / "log.jsonl").read_text().splitlines()[0]) for d in (random_dir, sub_dir)]
    assert first[1]["loss_embedding"] < first[0]["loss_embedding"]
    assert main(general_args(world, tmp_path / "sub" / "run", "--student-init", "subclone")) == 0
    assert "reusing the general student" in (said := capsys.readouterr().out) and "from the teacher's" in said

    out = tmp_path / "stopped" / "run"                          # stopped after every step, then resumed
    for extra in (["--stop-after", "1"], ["--resume", "--stop-after", "1"], ["--resume"]):
        capsys.readouterr()
        assert main(general_args(world, out, "--student-init", "subclone", *extra)) == 0
        # cut once, at the start; a resumed run takes its saved state instead
        assert ("initialised from the teacher's weights" in capsys.readouterr().out) == (extra[0] != "--resume")
    (stopped_dir,) = (tmp_path / "stopped" / "general").iterdir()
    np.testing.assert_array_equal(load_model(stopped_dir / "final").params.data,
                                  load_model(sub_dir / "final").params.data)
