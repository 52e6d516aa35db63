"""The distillation pipeline on a tiny world (tiny teacher, tiny student, tiny GLUE-shaped data):
the whole objective's gradient, losses that go down, exact resume, Ctrl-C, hard kills, one run per
directory, failed writes, bad input, and general students reused and extended."""
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minitinybert.engine.config import BertConfig
from minitinybert.distill import (TASK_DEFAULTS, LossWeights, parse_config, stage_steps, task_teacher_lr,
                                  intermediate_step, layer_mapping, main, prediction_step)
from minitinybert.engine.model import Bert
from minitinybert.engine.optim import AdamW
from minitinybert.data.tasks import get_task
from minitinybert.data.tokenizer import Batch, Tokenizer
from minitinybert.engine.weights import load_model, save_checkpoint
from tests.glue_files import write_task
from tests.gradcheck import assert_grad_close, numeric_directional
from tests.tiny_world import STUDENT, TEACHER, build_world, sentences  # noqa: F401  (sentences: test_hub's)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = build_world(tmp_path_factory.mktemp("world"))
    save_checkpoint(Bert(TEACHER.replace(num_labels=2), seed=2), root / "teacher-sst2",
                    vocab_from=root / "vocab.txt")
    return root


def cli(world, out, *extra, shared_general=False):
    """The command's options for a tiny run in `out`; its general student in out/general unless
    `shared_general` (then where every run beside it finds it: <parent of out>/general/)."""
    general = [] if shared_general else ["--general-dir", str(out / "general")]
    return ["--data", str(world / "data"), "--teacher", str(world / "teacher"), "--student",
            str(world / "student.json"), "--out", str(out), "--batch-size", "8", "--general-seq-len", "16",
            "--augment-limit", "16", "--n-aug", "2", "--save-every", "2", "--eval-every", "0", *general, *extra]


def accuracy_here(checkpoint, texts, labels):
    """A checkpoint's accuracy computed from its forward pass alone (none of the pipeline's evaluation)."""
    model, tok = load_model(checkpoint), Tokenizer.from_dir(checkpoint)
    batch = tok.encode(list(texts), max_length=64)
    logits = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
    return float(np.mean(logits.argmax(1) == np.asarray(labels)))


# --- the mapping ----------------------------------------------------------------------------------

def test_uniform_mapping():
    assert layer_mapping(4, 12) == [0, 3, 6, 9, 12]          # the paper's TinyBERT4 of BERT-base
    assert layer_mapping(4, 6) == [0, 2, 3, 5, 6]            # 6 is not a multiple of 4: rounded
    assert layer_mapping(6, 6) == list(range(7))
    assert layer_mapping(2, 3) == [0, 2, 3]


def test_explicit_mapping_and_errors():
    assert layer_mapping(2, 6, [3, 6]) == [0, 3, 6]
    with pytest.raises(ValueError, match="lists 3 teacher layers"):
        layer_mapping(2, 6, [1, 2, 3])
    with pytest.raises(ValueError, match="1..6"):
        layer_mapping(2, 6, [0, 7])


# --- the whole intermediate objective: gradient check in float64 ------------------------------------

def tiny_batch(rng, B=2, T=5):
    ids = rng.integers(5, TEACHER.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 3:] = 0
    return Batch(ids, np.zeros_like(ids), mask)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("use_kernels", [False, True])
def test_intermediate_objective_gradient(shared, use_kernels):
    rng = np.random.default_rng(0)
    teacher = Bert(TEACHER, dtype=np.float64, seed=1, use_kernels=use_kernels)
    student = Bert(STUDENT.replace(fit_size=24, fit_shared=shared), dtype=np.float64, seed=2,
                   use_kernels=use_kernels)
    student.params.data[...] += rng.normal(0, 0.05, student.params.size)   # non-trivial LN / biases
    batch, mapping = tiny_batch(rng), layer_mapping(2, 3)
    w = LossWeights(embedding=0.7, hidden=1.3, attention=0.9)
    intermediate_step(teacher, student, batch, None, mapping, w, use_kernels=use_kernels)
    grad = student.grads.data.copy()
    f = lambda: intermediate_step(teacher, student, batch, None, mapping, w, use_kernels).losses["loss"]
    for _ in range(3):
        d = rng.standard_normal(grad.shape)
        assert_grad_close(grad @ d, numeric_directional(f, student.params.data, d), rtol=1e-5, atol=1e-7,
                          what="intermediate distillation objective")
    # the projections get gradients too
    name = "fit_dense.weight" if shared else "fit_denses.1.weight"
    assert np.abs(student.grads[name]).sum() > 0


def test_prediction_objective_gradient():
    rng = np.random.default_rng(1)
    teacher = Bert(TEACHER.replace(num_labels=3), dtype=np.float64, seed=1)
    student = Bert(STUDENT.replace(num_labels=3), dtype=np.float64, seed=2)
    batch, labels = tiny_batch(rng), np.array([0, 2])
    w = LossWeights(prediction=1.0, hard=0.5)
    t_logits = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
    prediction_step(student, batch, labels, t_logits, None, w, temperature=2.0)
    grad = student.grads.data.copy()
    f = lambda: prediction_step(student, batch, labels, t_logits, None, w, 2.0).losses["loss"]
    d = rng.standard_normal(grad.shape)
    assert_grad_close(grad @ d, numeric_directional(f, student.params.data, d), rtol=1e-5, atol=1e-8,
                      what="prediction distillation objective")


def test_short_distillation_lowers_every_loss_term():
    rng = np.random.default_rng(3)
    teacher = Bert(TEACHER, seed=1)
    student = Bert(STUDENT.replace(fit_size=24), seed=2)
    batches = [tiny_batch(rng, B=8, T=10) for _ in range(4)]
    opt = AdamW(student.params, lr=3e-3)
    mapping, w = layer_mapping(2, 3), LossWeights()
    first = last = None
    for step in range(60):
        result = intermediate_step(teacher, student, batches[step % 4], None, mapping, w)
        opt.step(student.grads.data)
        if step < 4:
            first = {k: (first or {}).get(k, 0) + v / 4 for k, v in result.losses.items()}
        if step >= 56:
            last = {k: (last or {}).get(k, 0) + v / 4 for k, v in result.losses.items()}
    for term in ("loss_embedding", "loss_hidden", "loss_attention"):
        assert last[term] < 0.7 * first[term], (term, first[term], last[term])


# --- the command: every stage, resume, Ctrl-C --------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_pipeline_runs_and_resume_is_exact(world, tmp_path, workers):
    steps = ["--teacher-steps", "4", "--general-steps", "5", "--intermediate-steps", "5", "--prediction-steps", "4",
             "--workers", workers, "--eval-every", "2"]
    assert main(["all", *cli(world, tmp_path / "straight"), *steps]) == 0
    # the same run, stopped every 3 steps of each run and resumed
    out = tmp_path / "paused"
    assert main(["all", *cli(world, out), *steps, "--stop-after", "3"]) == 0
    rounds = 0
    while not (out / "summary.json").exists():
        assert main(["all", *cli(world, out), *steps, "--stop-after", "3", "--resume"]) == 0
        rounds += 1
        assert rounds < 10
    assert rounds >= 3
    for stage, name in (("teacher", "best"), ("general", "final"), ("task-intermediate", "final"),
                        ("task-prediction", "best")):
        a = load_model(tmp_path / "straight" / stage / name).params.data
        b = load_model(out / stage / name).params.data
        np.testing.assert_array_equal(a, b, err_msg=stage)
    # best/ holds the best model by dev accuracy, and its logged metric is what that model scores
    summary = json.loads((out / "summary.json").read_text())
    rows = [line.split("\t") for line in (world / "data" / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()[1:]]
    texts, labels = [t for t, _ in rows], [int(y) for _, y in rows]
    for stage, who in (("teacher", "teacher"), ("task-prediction", "student")):
        saved = json.loads((out / stage / "best" / "metrics.json").read_text())
        state = json.loads((out / stage / "last" / "trainer_state.json").read_text())
        evals = [(r["step"], r["eval"]["main"]) for r in map(json.loads, (out / stage / "log.jsonl").read_text()
                                                             .splitlines()) if "eval" in r]
        assert [step for step, _ in evals] == [2, 4]
        best = max(evals, key=lambda e: e[1])                      # the first of equals: a later tie is no gain
        assert (state["best_step"], state["best_metric"]) == (saved["step"], saved["main"]) == best
        assert saved["accuracy"] == saved["main"] == summary[who]["dev"]["main"]
        assert accuracy_here(out / stage / "best", texts, labels) == saved["accuracy"], stage
    for stage in ("teacher/best", "task-prediction/best"):     # SST-2's 0/1 codes get names
        config = json.loads((out / stage / "config.json").read_text())
        assert list(config["id2label"].values()) == ["negative", "positive"]
    log = [json.loads(line) for line in (out / "general" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]          # resumed runs append, never repeat
    assert {"loss_embedding", "loss_hidden", "loss_attention", "lr", "seq_per_s"} <= set(log[0])
    assert (out / "general" / "loss.png").stat().st_size > 1000
    for stage in ("teacher", "task-intermediate", "task-prediction"):   # every step says what it computed
        steps = [r for r in map(json.loads, (out / stage / "log.jsonl").read_text().splitlines()) if "eval" not in r]
        assert steps and all(0 < r["tokens"] <= r["padded_tokens"] <= 8 * 64 for r in steps), stage


def test_existing_run_is_never_overwritten_without_resume(world, tmp_path, capsys):
    args = cli(world, tmp_path, "--teacher-steps", "2", "--stop-after", "1")
    assert main(["finetune-teacher", *args]) == 0
    before = (tmp_path / "teacher" / "last" / "model.safetensors").read_bytes()
    assert main(["finetune-teacher", *args]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "teacher" / "last" / "model.safetensors").read_bytes() == before


def test_corrupt_checkpoint_is_refused_on_resume(world, tmp_path, capsys):
    args = cli(world, tmp_path, "--teacher-steps", "3", "--stop-after", "1")
    assert main(["finetune-teacher", *args]) == 0
    (tmp_path / "teacher" / "last" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    assert main(["finetune-teacher", *args, "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--task", "mnli2"], "unknown task"),
    (["--data", "/nonexistent/data"], "does not exist"),
    (["--teacher", "/nonexistent/teacher"], "not found"),
])
def test_bad_input_gives_a_clear_error(world, tmp_path, capsys, argv, message):
    assert main(["finetune-teacher", *cli(world, tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err.lower()


def test_task_stage_needs_a_general_student(world, tmp_path, capsys):
    args = cli(world, tmp_path / "o", "--finetuned-teacher", str(world / "teacher-sst2"))
    assert main(["task", *args]) == 2
    assert "general student not found" in capsys.readouterr().err
    assert main(["task", *args, "--general-student", str(tmp_path / "nowhere")]) == 2
    assert "general student not found" in capsys.readouterr().err


def test_task_stage_refuses_mismatched_teacher_and_student(world, tmp_path, capsys):
    # a teacher fine-tuned with 3 labels cannot teach SST-2's 2
    save_checkpoint(Bert(TEACHER.replace(num_labels=3), seed=0), tmp_path / "t3", vocab_from=world / "vocab.txt")
    save_checkpoint(Bert(STUDENT.replace(fit_size=24), seed=0), tmp_path / "g", vocab_from=world / "vocab.txt")
    args = cli(world, tmp_path / "o", "--general-student", str(tmp_path / "g"))
    assert main(["task", *args, "--finetuned-teacher", str(tmp_path / "t3")]) == 2
    assert "3-output head" in capsys.readouterr().err
    # a student with 6 heads cannot learn 12-head attention scores
    save_checkpoint(Bert(STUDENT.replace(num_attention_heads=6, fit_size=24), seed=0), tmp_path / "g6",
                    vocab_from=world / "vocab.txt")
    args = cli(world, tmp_path / "o", "--general-student", str(tmp_path / "g6"))
    assert main(["task", *args, "--finetuned-teacher", str(world / "teacher-sst2")]) == 2
    assert "heads" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(world, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "minitinybert.distill", "general", *cli(world, out, "--general-steps", "100000",
                                                                          "--save-every", "0")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = out / "general" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "interrupted" in output and "--resume" in output
    state = json.loads((out / "general" / "last" / "trainer_state.json").read_text())
    assert 3 <= state["step"] < 100000 and not state["done"]
    steps_logged = log.read_text().count("\n")
    assert steps_logged == state["step"]


def test_local_jsonl_task_and_unknown_label(world, tmp_path, capsys):
    rng = np.random.default_rng(5)
    for split, n in (("train", 16), ("dev", 8)):
        rows = [{"text": t, "sentiment": ["neg", "pos"][y]} for t, y in sentences(rng, n)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    local = ["--train-file", str(tmp_path / "train.jsonl"), "--dev-file", str(tmp_path / "dev.jsonl"),
             "--text-column", "text", "--label-column", "sentiment", "--labels", "neg,pos", "--teacher-steps", "2"]
    assert main(["finetune-teacher", *cli(world, tmp_path / "o"), *local]) == 0
    metrics = json.loads((tmp_path / "o" / "teacher" / "best" / "metrics.json").read_text())
    dev = [json.loads(line) for line in (tmp_path / "dev.jsonl").read_text().splitlines()]
    assert metrics["accuracy"] == accuracy_here(tmp_path / "o" / "teacher" / "best", [r["text"] for r in dev],
                                                [["neg", "pos"].index(r["sentiment"]) for r in dev])
    config = json.loads((tmp_path / "o" / "teacher" / "best" / "config.json").read_text())
    assert list(config["id2label"].values()) == ["neg", "pos"]
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write(json.dumps({"text": "the film", "sentiment": "meh"}) + "\n")
    assert main(["finetune-teacher", *cli(world, tmp_path / "o2"), *local]) == 2
    assert "meh" in capsys.readouterr().err


def test_resume_after_a_hard_kill_logs_each_step_once(world, tmp_path):
    """A run killed between checkpoints: the steps after the last checkpoint are run again, and
    the log keeps one line per step."""
    out = tmp_path / "run"
    args = cli(world, out, "--general-steps", "6", "--save-every", "2")
    assert main(["general", *args, "--stop-after", "3"]) == 0      # checkpoint at step 3
    with open(out / "general" / "log.jsonl", "a") as f:             # what a killed run had logged beyond it
        f.write(json.dumps({"stage": "general", "step": 4, "loss": 1.0}) + "\n" + '{"stage": "gen')
    assert main(["general", *args, "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "general" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_prediction_step_regression_target_and_unused_teacher():
    """STS-B: MSE to the teacher's (precomputed) output, or with regression_target="gold" to the gold
    score, which needs no teacher logits at all."""
    rng = np.random.default_rng(2)
    teacher = Bert(TEACHER.replace(num_labels=1), dtype=np.float64, seed=1)
    student = Bert(STUDENT.replace(num_labels=1), dtype=np.float64, seed=2)
    batch, scores = tiny_batch(rng), np.array([0.5, 4.0])
    prediction = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits[:, 0]
    t_logits = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits
    fit_teacher = prediction_step(student, batch, scores, t_logits, None, LossWeights())
    assert fit_teacher.losses["loss_prediction"] == pytest.approx(np.mean((prediction - t_logits[:, 0]) ** 2),
                                                                  rel=1e-12)
    fit_gold = prediction_step(student, batch, scores, None, None, LossWeights(), regression_target="gold")
    assert fit_gold.losses["loss_prediction"] == pytest.approx(np.mean((prediction - scores) ** 2), rel=1e-12)
    # the teacher's logits, if given, are ignored for a gold target
    assert prediction_step(student, batch, scores, t_logits, None, LossWeights(),
                           regression_target="gold").losses["loss"] == pytest.approx(fit_gold.losses["loss"])
    grad = student.grads.data.copy()
    f = lambda: prediction_step(student, batch, scores, None, None, LossWeights(),   # noqa: E731
                                regression_target="gold").losses["loss"]
    d = rng.standard_normal(grad.shape)
    assert_grad_close(grad @ d, numeric_directional(f, student.params.data, d), rtol=1e-5, atol=1e-8,
                      what="prediction objective, gold regression target")
    with pytest.raises(ValueError, match="regression_target"):
        prediction_step(student, batch, scores, t_logits, None, LossWeights(), regression_target="labels")


def test_labels_only_prediction_step_needs_no_teacher_logits():
    rng = np.random.default_rng(4)
    student = Bert(STUDENT.replace(num_labels=2), seed=2)
    result = prediction_step(student, tiny_batch(rng), np.array([0, 1]), None, None,
                             LossWeights(prediction=0.0, hard=1.0))
    assert result.losses["loss_prediction"] == 0 and result.losses["loss_hard"] > 0
    assert result.losses["loss"] == result.losses["loss_hard"]


def test_task_stage_skips_the_teacher_logits_when_unused(world, tmp_path, monkeypatch):
    """--w-prediction 0 (labels only): the stage does not run the teacher over the training set."""
    import minitinybert.distill.stages as stages

    def no_logits(*a, **k):
        raise AssertionError("teacher logits computed although unused")
    monkeypatch.setattr(stages, "teacher_logits", no_logits)
    args = cli(world, tmp_path / "o", "--finetuned-teacher", str(world / "teacher-sst2"), "--general-student",
               "scratch", "--skip-intermediate", "--prediction-steps", "1", "--w-prediction", "0", "--w-hard", "1")
    assert main(["task", *args]) == 0


def test_task_stage_from_scratch_without_intermediate(world, tmp_path):
    out = tmp_path / "o"
    args = cli(world, out, "--finetuned-teacher", str(world / "teacher-sst2"), "--general-student", "scratch",
               "--skip-intermediate", "--prediction-steps", "2")
    assert main(["task", *args]) == 0
    assert not (out / "task-intermediate").exists() and not (out / "general").exists()
    assert (out / "task-prediction" / "best" / "model.safetensors").exists()
    assert main(["task", *cli(world, tmp_path / "p", "--finetuned-teacher", str(world / "teacher-sst2"),
                             "--general-student", str(tmp_path / "missing"))]) == 2


def test_augmentation_by_default_only_when_the_task_stage_repeats_its_training_set():
    from argparse import Namespace
    import minitinybert.distill as distill
    said = []

    def copies(n_train, **given):
        args = Namespace(**{"n_aug": None, "skip_intermediate": False, "batch_size": 32, "intermediate_steps": None,
                            "prediction_steps": None, **given})
        return distill.augment_copies(args, get_task("sst2"), n_train, said.append)

    sst2_steps = distill.TASK_DEFAULTS["sst2"].intermediate_steps
    assert copies(67349) == 0 and "0.7 passes" in said[-1] and "no augmentation" in said[-1]   # SST-2's defaults
    assert copies(2490) == distill.AUGMENT_COPIES                       # RTE's size: 38 passes
    exactly = int(sst2_steps * 32 / distill.AUGMENT_FROM_PASSES)
    assert copies(exactly) == distill.AUGMENT_COPIES and copies(exactly + 1) == 0
    assert copies(67349, intermediate_steps=10000) == distill.AUGMENT_COPIES     # a longer stage: 4.8 passes
    assert copies(67349, skip_intermediate=True, prediction_steps=10000) == distill.AUGMENT_COPIES
    n = len(said)
    assert copies(67349, n_aug=7) == 7 and copies(100, n_aug=0) == 0 and len(said) == n   # as given, silently


def test_runs_sharing_an_augment_cache_share_the_teacher_logits_too(world, tmp_path, capsys):
    shared, said = tmp_path / "cache", []
    for run in ("a", "b"):
        args = cli(world, tmp_path / run, "--finetuned-teacher", str(world / "teacher-sst2"), "--general-student",
                   "scratch", "--skip-intermediate", "--prediction-steps", "2", "--augment-cache", str(shared))
        capsys.readouterr()
        assert main(["task", *args]) == 0
        said.append(capsys.readouterr().out)
        assert not (tmp_path / run / "augment-cache").exists()
    assert len(list(shared.glob("augment-sst2-*.jsonl"))) == 1
    (logits,) = shared.glob("teacher-logits-sst2-*.safetensors")
    assert "teacher logits computed" in said[0] and "teacher logits computed" not in said[1]
    assert f"read from {logits}" in said[1]


def test_augmentation_ahead_of_the_task_stage_fills_its_cache(world, tmp_path, capsys):
    from minitinybert.data.augment import main as augment_main
    out = tmp_path / "o"
    ahead = ["--task", "sst2", "--data", str(world / "data"), "--teacher", str(world / "teacher"), "--out", str(out),
             "--augment-limit", "16", "--n-aug", "2"]
    assert augment_main(ahead) == 0
    assert "16 examples ->" in capsys.readouterr().out
    cached = list((out / "augment-cache").glob("augment-sst2-*.jsonl"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert augment_main(ahead) == 0 and "read from the cache" in capsys.readouterr().out
    args = cli(world, out, "--finetuned-teacher", str(world / "teacher-sst2"), "--general-student", "scratch",
               "--skip-intermediate", "--prediction-steps", "1")
    assert main(["task", *args]) == 0                                  # the same settings: the same cache file
    assert list((out / "augment-cache").glob("*.jsonl")) == cached and cached[0].stat().st_mtime_ns == stamp
    assert augment_main([*ahead, "--candidates", "mlm"]) == 2
    assert "masked-language-model head" in capsys.readouterr().err
# --- the general student: recorded, found by other runs, extended ---------------------------------------

def test_general_student_is_recorded_reused_and_extended(world, tmp_path, capsys):
    steps = ["--teacher-steps", "2", "--general-steps", "4", "--intermediate-steps", "2", "--prediction-steps", "2"]
    assert main(["all", *cli(world, tmp_path / "sst2", shared_general=True), *steps]) == 0
    (general_dir,) = (tmp_path / "general").iterdir()          # beside the run: <parent of --out>/general/
    record = json.loads((general_dir / "general.json").read_text())
    assert json.loads((general_dir / "final" / "general.json").read_text()) == record
    assert (record["steps"], record["complete"], record["cycles"]) == (4, True, [4])
    assert general_dir.name == f"student-{record['fingerprint']}"
    recipe = record["recipe"]
    assert recipe["teacher"]["weights_sha256"] == hashlib.sha256(
        (world / "teacher" / "model.safetensors").read_bytes()).hexdigest()
    assert (recipe["student"]["num_hidden_layers"], recipe["student"]["hidden_size"],
            recipe["student"]["fit_size"]) == (2, 12, 24)
    corpus = world / "data" / "corpus" / "tiny.txt"
    assert recipe["corpus"] == [{"name": "tiny.txt", "bytes": corpus.stat().st_size,
                                 "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest()}]
    assert recipe["seq_len"] == 16 and recipe["batch_size"] == 8
    summary = json.loads((tmp_path / "sst2" / "summary.json").read_text())
    assert summary["general_student"]["path"] == str((general_dir / "final").resolve())
    assert summary["general_student"]["steps"] == 4

    # a second run beside it finds and reuses it, and says so
    capsys.readouterr()
    assert main(["all", *cli(world, tmp_path / "again", shared_general=True), *steps]) == 0
    assert "reusing the general student" in capsys.readouterr().out
    assert list((tmp_path / "general").iterdir()) == [general_dir]
    source = json.loads((tmp_path / "again" / "task-intermediate" / "general-student.json").read_text())
    assert source == summary["general_student"]

    # more steps than it has: refused without --resume; with it, extended in its own directory
    assert main(["general", *cli(world, tmp_path / "sst2", shared_general=True), "--general-steps", "7"]) == 2
    assert "--resume" in capsys.readouterr().err
    shutil.copytree(general_dir, tmp_path / "copy")
    assert main(["general", *cli(world, tmp_path / "sst2", shared_general=True), "--general-steps", "7",
                 "--resume"]) == 0
    record = json.loads((general_dir / "general.json").read_text())
    assert (record["steps"], record["complete"], record["cycles"]) == (7, True, [4, 7])
    log = [json.loads(line) for line in (general_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6, 7]
    # the added steps are a schedule cycle of their own: no warm-up at 3 steps, decay from the peak
    assert [r["lr"] for r in log[4:]] == pytest.approx([5e-4, 5e-4 * 2 / 3, 5e-4 / 3])
    assert log[3]["lr"] < 5e-4 / 3
    # the same extension, interrupted after every step and resumed, gives the same student
    copy = ["--general-dir", str(tmp_path / "copy"), "--general-steps", "7", "--resume", "--stop-after", "1"]
    for _ in range(4):                       # 3 steps, and a last call that finds them all made and finishes
        assert main(["general", *cli(world, tmp_path / "sst2", shared_general=True), *copy]) == 0
    assert json.loads((tmp_path / "copy" / "general.json").read_text())["cycles"] == [4, 7]
    np.testing.assert_array_equal(load_model(tmp_path / "copy" / "final").params.data,
                                  load_model(general_dir / "final").params.data)

    # a run asking for fewer steps than it now has reuses the longer student
    capsys.readouterr()
    assert main(["all", *cli(world, tmp_path / "third", shared_general=True), *steps]) == 0
    assert "7 steps" in capsys.readouterr().out


def test_changed_corpus_makes_another_general_student_and_explicit_one_skips_the_stage(world, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    steps = ["--general-steps", "2"]
    assert main(["general", *cli(world, tmp_path / "a", shared_general=True), "--data", str(data), *steps]) == 0
    with open(data / "corpus" / "tiny.txt", "a") as f:
        f.write("\nthe film was not very good\n")
    assert main(["general", *cli(world, tmp_path / "a", shared_general=True), "--data", str(data), *steps]) == 0
    assert len(list((tmp_path / "general").iterdir())) == 2
    # --general-dir holding another recipe's student is refused, naming what differs
    (first,) = [d for d in (tmp_path / "general").iterdir()
                if json.loads((d / "general.json").read_text())["recipe"]["corpus"][0]["bytes"] !=
                (data / "corpus" / "tiny.txt").stat().st_size]
    assert main(["general", *cli(world, tmp_path / "a", shared_general=True), "--data", str(data), *steps,
                 "--general-dir", str(first)]) == 2
    assert "corpus differ" in capsys.readouterr().err
    # all with --general-student: no general stage, that student used
    assert main(["all", *cli(world, tmp_path / "b", shared_general=True), "--general-student", str(first),
                 "--teacher-steps", "1", "--intermediate-steps", "1", "--prediction-steps", "1"]) == 0
    assert "using the general student" in capsys.readouterr().out
    source = json.loads((tmp_path / "b" / "task-intermediate" / "general-student.json").read_text())
    assert source["path"] == str((first / "final").resolve()) and source["steps"] == 2
    assert len(list((tmp_path / "general").iterdir())) == 2


def test_local_dataset_is_its_own_task(world, tmp_path, capsys, monkeypatch):
    """A paraphrase dataset with 0/1 labels and no --task is not SST-2: it is named after its
    folder, and its models call the classes what the file does ("0"/"1", or --labels' order)."""
    rng = np.random.default_rng(6)
    folder = tmp_path / "paraphrase"
    folder.mkdir()
    for split, n in (("train", 16), ("dev", 8)):
        rows = [f"{t}\t{u}\t{y}" for (t, y), (u, _) in zip(sentences(rng, n), sentences(rng, n))]
        (folder / f"{split}.tsv").write_bytes(("\ufeffQuality\t#1 String\t#2 String\r\n"   # as Excel saves it
                                               + "".join(f"{y}\t{t}\t{u}\r\n" for t, u, y in
                                                         (r.split("\t") for r in rows))).encode())
    local = ["--train-file", str(folder / "train.tsv"), "--dev-file", str(folder / "dev.tsv"),
             "--text-column", "#1 String", "--pair-column", "#2 String", "--label-column", "Quality",
             "--teacher-steps", "2"]
    assert main(["finetune-teacher", *cli(world, tmp_path / "o"), *local]) == 0
    out = capsys.readouterr().out
    assert " on paraphrase:" in out and "sst2" not in out
    config = json.loads((tmp_path / "o" / "teacher" / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"}
    # --labels sets the classes' order, --name the name; no --out: runs/<name>
    monkeypatch.chdir(tmp_path)
    args = [a for a in cli(world, tmp_path / "unused") if a not in ("--out", str(tmp_path / "unused"))]
    assert main(["finetune-teacher", *args, *local, "--labels", "1,0", "--name", "my-pairs"]) == 0
    assert " on my-pairs:" in capsys.readouterr().out
    config = json.loads((tmp_path / "runs" / "my-pairs" / "teacher" / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "1", "1": "0"}


@pytest.mark.parametrize("task", ["mnli", "mrpc"])
def test_glue_task_from_its_files(world, tmp_path, task):
    """`--task T --data DIR` on the files GLUE distributes: the teacher is fine-tuned and evaluated
    on every dev set (MNLI: matched and mismatched), with the task's metrics and class names (MRPC:
    F1 first; every task's files are read in test_datafiles)."""
    rng = np.random.default_rng(7)
    spec = get_task(task)
    def rows(n):
        return [(a, b, spec.labels[int(rng.integers(len(spec.labels)))])
                for (a, _), (b, _) in zip(sentences(rng, n), sentences(rng, n))]
    write_task(world / "data", task, {"train": rows(16), **{split: rows(8) for split in spec.dev_splits}})
    assert main(["finetune-teacher", *cli(world, tmp_path), "--task", task, "--teacher-steps", "2"]) == 0
    metrics = json.loads((tmp_path / "teacher" / "best" / "metrics.json").read_text())
    expected = {"step", "main", *spec.metrics} | ({"mismatched_accuracy"} if task == "mnli" else set())
    assert set(metrics) == expected and metrics["main"] == metrics[spec.main_metric]
    config = json.loads((tmp_path / "teacher" / "best" / "config.json").read_text())
    assert list(config["id2label"].values()) == list(spec.class_names)


# --- faults: a second run, a failed write, a hard kill -----------------------------------------------

def stage_files(directory):
    """Every checkpoint file of a stage directory (last/, final/, best/), by relative path."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*"))
            if p.is_file() and p.parent.name in ("last", "final", "best")}


def start(world, out, *extra, prefix=()):
    """`distill general` in a child process (stdout and stderr to out.log)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, *(prefix or ["-m", "minitinybert.distill"]), "general", *cli(world, out, *extra)]
    with open(f"{out}.log", "a") as log:
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})


def error_lines(stderr):
    """What a failed command said, without its progress bar: one line, and no traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error")]


def wait_for(condition, proc, what, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def logged_steps(out):
    log = out / "general" / "log.jsonl"
    return log.read_text().count("\n") if log.exists() else 0


def test_one_run_per_directory(world, tmp_path, capsys):
    """A second run on a directory a live run holds is refused with the other's pid, host, command
    and start time; once that run is killed, its lock is taken over without anyone cleaning up."""
    out = tmp_path / "run"
    args = ["--general-steps", "100000", "--workers", "1"]
    proc = start(world, out, *args)
    try:
        wait_for(lambda: (out / "general" / "last").exists(), proc, "a first checkpoint")
        assert main(["general", *cli(world, out, *args), "--resume"]) == 2
        [line] = error_lines(capsys.readouterr().err)
        assert f"is in use by another run (pid {proc.pid} on {socket.gethostname()}, started 20" in line
        assert "-m minitinybert.distill general" in line
    finally:
        proc.kill()
        proc.wait()
    assert (out / "run.lock").exists()                              # what the killed run left
    assert main(["general", *cli(world, out, *args), "--resume", "--stop-after", "1"]) == 0
    said = capsys.readouterr().out
    assert f"held by a run that is gone (pid {proc.pid} " in said and "taking it over" in said
    assert not (out / "run.lock").exists()


ERRORS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
          errno.EACCES: "Permission denied"}


@pytest.fixture(scope="module")
def straight_general(world, tmp_path_factory):
    """An uninterrupted general distillation of 24 steps (checkpoints every 2), 1 worker."""
    out = tmp_path_factory.mktemp("straight")
    assert main(["general", *cli(world, out, "--general-steps", "24", "--workers", "1")]) == 0
    return stage_files(out / "general")


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_last_one(world, tmp_path, monkeypatch, capsys,
                                                                        straight_general, code):
    """The second checkpoint's model file fails half-way (a full disk, a read-only place, a lost
    permission): one line says so and which checkpoint is intact; that one is untouched, and
    --resume from it ends as the uninterrupted run."""
    import minitinybert.engine.weights as weights
    out = tmp_path / "run"
    args = cli(world, out, "--general-steps", "24", "--workers", "1")
    real_write, models, before = weights.write_file, [], {}

    def write_file(path, data):
        if Path(path).name == "model.safetensors":
            models.append(path)
            if len(models) == 2:                                   # the checkpoint of step 4
                before.update(stage_files(out / "general"))
                real_write(path, data[: len(data) // 2])             # its header and half its tensors
                raise OSError(code, os.strerror(code), str(path))
        real_write(path, data)

    monkeypatch.setattr(weights, "write_file", write_file)
    assert main(["general", *args]) == 2
    err = capsys.readouterr().err
    last = out / "general" / "last"
    assert error_lines(err) == [f"error: [general] stopped at step 4: {last}: {ERRORS[code]} "
                                f"({errno.errorcode[code]}); the checkpoint of step 2 in {last} is intact: free some "
                                f"space or fix the permissions, then run the same command with --resume"]
    assert stage_files(out / "general") == before and json.loads((last / "trainer_state.json").read_text())["step"] == 2
    assert sorted(p.name for p in (out / "general").iterdir()) == ["general.json", "last", "log.jsonl", "loss.png"]
    assert not (out / "run.lock").exists()
    if code == errno.ENOSPC:                                       # the same path for every code: resume once
        monkeypatch.undo()
        assert main(["general", *args, "--resume"]) == 0
        assert stage_files(out / "general") == straight_general


def test_a_full_disk_for_real(world, tmp_path, capsys, straight_general):
    """The same on a small tmpfs filled up after the first checkpoint (needs root and mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); "
                    f"test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_last_one injects the same failure")
    try:
        out = disk / "run"
        args = cli(world, out, "--general-steps", "24", "--workers", "1")
        assert main(["general", *args, "--stop-after", "2"]) == 0
        before = stage_files(out / "general")
        filler = disk / "filler"
        with open(filler, "wb") as f:                             # fill the disk up ...
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
            f.truncate(0)
        # ... but for room for the lock and the log: not for a checkpoint
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 3 * 4096))
        capsys.readouterr()
        assert main(["general", *args, "--resume"]) == 2
        err = capsys.readouterr().err
        [line] = error_lines(err)
        assert line.startswith("error: [general] stopped at step 4: ") and "(ENOSPC)" in line
        assert "the checkpoint of step 2 in" in line
        assert stage_files(out / "general") == before
        filler.unlink()
        assert main(["general", *args, "--resume"]) == 0
        assert stage_files(out / "general") == straight_general
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


KILL_DURING_WRITE = """
import os, signal, sys
import minitinybert.engine.weights as weights
where, nth = sys.argv.pop(1), int(sys.argv.pop(1))
seen = []
if where == "file":              # half-way through a checkpoint's model file
    real_write = weights.write_file
    def write_file(path, data):
        if os.path.basename(path) == "model.safetensors":
            seen.append(path)
            if len(seen) == nth:
                real_write(path, data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)
    weights.write_file = write_file
else:                            # between the two renames that swap last/ for the new checkpoint
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("last.old"):
            seen.append(dst)
            if len(seen) == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    weights.os.replace = replace
sys.argv[0] = "distill"
from minitinybert.distill import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_at_any_moment_then_resume_is_exact(world, tmp_path, straight_general):
    """General distillation killed (SIGKILL) at a random moment of training, half-way through a
    checkpoint file, and between the two renames of a checkpoint swap, resumed each time: it ends
    byte-identical to the uninterrupted run, each step logged once, with no lock or debris left."""
    out = tmp_path / "run"
    args = ["--general-steps", "24", "--workers", "1", "--resume"]
    rng = np.random.default_rng(0)
    # a random moment: once a random number of steps are logged, after a random delay
    proc = start(world, out, *args)
    steps = int(rng.integers(1, 7))                                  # of 24: the kill lands before the end
    wait_for(lambda: logged_steps(out) >= steps, proc, f"step {steps}")
    time.sleep(float(rng.uniform(0, 0.02)))
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    # half-way through writing the model file of the resumed run's second checkpoint
    proc = start(world, out, *args, prefix=["-c", KILL_DURING_WRITE, "file", "2"])
    assert proc.wait(timeout=300) == -signal.SIGKILL, Path(f"{out}.log").read_text()
    assert any(p.name.endswith(".part") for p in (out / "general").iterdir())
    # between the renames of its first swap: last/ is gone, last.old holds it
    proc = start(world, out, *args, prefix=["-c", KILL_DURING_WRITE, "swap", "1"])
    assert proc.wait(timeout=300) == -signal.SIGKILL, Path(f"{out}.log").read_text()
    assert not (out / "general" / "last").exists() and (out / "general" / "last.old").exists()
    assert (out / "run.lock").exists()
    assert main(["general", *cli(world, out, *args)]) == 0
    assert stage_files(out / "general") == straight_general
    assert sorted(p.name for p in (out / "general").iterdir()) == ["final", "general.json", "last", "log.jsonl",
                                                                    "loss.png"]
    assert [json.loads(line)["step"] for line in (out / "general" / "log.jsonl").read_text().splitlines()] == \
        list(range(1, 25))
    assert not (out / "run.lock").exists()


def test_a_shared_general_student_is_made_by_one_run_at_a_time(world, tmp_path, capsys):
    """Outside --out (whose lock covers its own directory), the general run takes a lock of its own."""
    from minitinybert.training.runlock import RunLock
    shared = ["--general-dir", str(tmp_path / "shared"), "--general-steps", "1"]
    with RunLock(tmp_path / "shared", log=lambda *a: None):
        assert main(["general", *cli(world, tmp_path / "o"), *shared]) == 2
        assert f"{tmp_path / 'shared'} is in use by another run" in capsys.readouterr().err
    assert main(["general", *cli(world, tmp_path / "o"), *shared]) == 0
    assert not (tmp_path / "shared" / "run.lock").exists()


def test_step_defaults_follow_the_task_and_yield_to_the_command_line():
    """Small tasks get their own defaults (SST-2's 2,000 teacher steps are 26 epochs of RTE);
    a given --<stage>-steps always wins, and tasks without an entry take SST-2's."""
    args = parse_config(["all"])
    for stage in ("teacher", "intermediate", "prediction"):
        assert stage_steps(args, get_task("rte"), stage) == getattr(TASK_DEFAULTS["rte"], f"{stage}_steps")
        assert stage_steps(args, get_task("qnli"), stage) == getattr(TASK_DEFAULTS["sst2"], f"{stage}_steps")
    assert TASK_DEFAULTS["rte"].teacher_steps < TASK_DEFAULTS["sst2"].teacher_steps
    assert (stage_steps(args, get_task("sst2"), "teacher"), stage_steps(args, get_task("sst2"), "intermediate"),
            stage_steps(args, get_task("sst2"), "prediction")) == (2000, 1500, 1000)      # the README's first command
    args = parse_config(["all", "--task", "rte", "--teacher-steps", "7"])
    assert stage_steps(args, get_task("rte"), "teacher") == 7


def test_teacher_learning_rate_follows_the_task_and_yields_to_the_command_line():
    args = parse_config(["all"])
    assert task_teacher_lr(args, get_task("sst2")) == 5e-5
    assert task_teacher_lr(args, get_task("qnli")) == 5e-5      # large tasks: SST-2's
    assert task_teacher_lr(args, get_task("rte")) == TASK_DEFAULTS["rte"].teacher_lr == 1e-4
    args = parse_config(["all", "--task", "rte", "--teacher-lr", "3e-5"])
    assert task_teacher_lr(args, get_task("rte")) == 3e-5


def test_teacher_fine_tuning_can_start_from_the_teacher_of_another_task(world, tmp_path, capsys):
    """--teacher-init: the encoder of the teacher fine-tuned on SST-2 (2 labels) starts MNLI's (3): its
    head dropped for a new one; a checkpoint of another architecture is refused."""
    rng = np.random.default_rng(3)
    spec = get_task("mnli")
    rows = lambda n: [(a, b, spec.labels[int(rng.integers(3))])      # noqa: E731
                      for (a, _), (b, _) in zip(sentences(rng, n), sentences(rng, n))]
    write_task(world / "data", "mnli", {"train": rows(16), **{split: rows(8) for split in spec.dev_splits}})
    out = tmp_path / "mnli"
    assert main(["finetune-teacher", *cli(world, out), "--task", "mnli", "--teacher-steps", "2", "--teacher-lr", "0",
                 "--teacher-init", str(world / "teacher-sst2")]) == 0
    assert f"starting from the encoder of {world / 'teacher-sst2'}" in capsys.readouterr().out
    tuned, start, plain = (load_model(d) for d in (out / "teacher" / "best", world / "teacher-sst2", world / "teacher"))
    assert tuned.config.num_labels == 3 and tuned.params["classifier.weight"].shape[0] == 3
    for name in ("encoder.layer.1.attention.self.query.weight", "embeddings.word_embeddings.weight",
                 "pooler.dense.weight"):
        np.testing.assert_array_equal(tuned.params[name], start.params[name])      # lr 0: as it started
        assert not np.array_equal(tuned.params[name], plain.params[name])

    other = tmp_path / "student-ckpt"
    save_checkpoint(Bert(BertConfig.from_json(world / "student.json"), seed=0), other, vocab_from=world / "vocab.txt")
    assert main(["finetune-teacher", *cli(world, tmp_path / "bad"), "--task", "mnli", "--teacher-steps", "1",
                 "--teacher-init", str(other)]) == 2
    assert "is not the teacher fine-tuned on another task" in capsys.readouterr().err
