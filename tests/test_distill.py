"""The distillation pipeline on a tiny world (tiny teacher, tiny student, tiny GLUE-shaped data):
the whole objective's gradient, losses that go down, exact resume, Ctrl-C, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minitinybert.config import BertConfig
from minitinybert.distill import LossWeights, intermediate_step, layer_mapping, main, prediction_step
from minitinybert.model import Bert
from minitinybert.optim import AdamW
from minitinybert.tokenizer import Batch, Tokenizer
from minitinybert.weights import load_model, save_checkpoint
from gradcheck import assert_grad_close, numeric_directional

WORDS = ("the a film movie was is good bad great awful fun dull plot actors story , . ! and not very "
         "funny boring loved hated it this").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEACHER = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=24, num_hidden_layers=3,
                     num_attention_heads=12, intermediate_size=48, max_position_embeddings=64)
STUDENT = BertConfig(vocab_size=TEACHER.vocab_size, hidden_size=12, num_hidden_layers=2, num_attention_heads=12,
                     intermediate_size=24, max_position_embeddings=64)
ROOT = Path(__file__).resolve().parent.parent


def sentences(rng, n):
    pos, neg = ["good", "great", "fun", "funny", "loved"], ["bad", "awful", "dull", "boring", "hated"]
    rows = []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(WORDS[:6], 3)) + [rng.choice(pos if label else neg)] + list(rng.choice(WORDS, 2))
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    (root / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    data = root / "data"
    (data / "glue" / "SST-2").mkdir(parents=True)
    for split, n in (("train", 64), ("dev", 24)):
        lines = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in sentences(rng, n)]
        (data / "glue" / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (data / "corpus").mkdir()
    docs = ["\n".join(t for t, _ in sentences(rng, 6)) for _ in range(12)]
    (data / "corpus" / "tiny.txt").write_text("\n\n".join(docs) + "\n")
    save_checkpoint(Bert(TEACHER, seed=1), root / "teacher", vocab_from=root / "vocab.txt")
    save_checkpoint(Bert(TEACHER.replace(num_labels=2), seed=2), root / "teacher-sst2",
                    vocab_from=root / "vocab.txt")
    STUDENT.save(root / "student.json")
    return root


def cli(world, out, *extra):
    return ["--data", str(world / "data"), "--teacher", str(world / "teacher"), "--student",
            str(world / "student.json"), "--out", str(out), "--batch-size", "8", "--general-seq-len", "16",
            "--augment-limit", "16", "--n-aug", "2", "--save-every", "2", "--eval-every", "0", *extra]


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
    prediction_step(teacher, student, batch, labels, None, w, temperature=2.0)
    grad = student.grads.data.copy()
    f = lambda: prediction_step(teacher, student, batch, labels, None, w, 2.0).losses["loss"]
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
    (["--task", "mnli"], "unknown task"),
    (["--data", "/nonexistent/data"], "does not exist"),
    (["--teacher", "/nonexistent/teacher"], "not found"),
])
def test_bad_input_gives_a_clear_error(world, tmp_path, capsys, argv, message):
    assert main(["finetune-teacher", *cli(world, tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err.lower()


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


class CountingForward:
    """Counts a model's forward passes."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        inner = model.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)
        model.forward = counted


def test_prediction_step_regression_target_and_unused_teacher():
    rng = np.random.default_rng(2)
    teacher = Bert(TEACHER.replace(num_labels=1), dtype=np.float64, seed=1)
    student = Bert(STUDENT.replace(num_labels=1), dtype=np.float64, seed=2)
    batch, scores = tiny_batch(rng), np.array([0.5, 4.0])
    counter = CountingForward(teacher)
    prediction = student.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits[:, 0]
    t_out = teacher.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits[:, 0]
    counter.calls = 0
    fit_teacher = prediction_step(teacher, student, batch, scores, None, LossWeights())
    assert counter.calls == 1
    assert fit_teacher.losses["loss_prediction"] == pytest.approx(np.mean((prediction - t_out) ** 2), rel=1e-12)
    fit_gold = prediction_step(teacher, student, batch, scores, None, LossWeights(), regression_target="gold")
    assert counter.calls == 1                                      # the gold score needs no teacher
    assert fit_gold.losses["loss_prediction"] == pytest.approx(np.mean((prediction - scores) ** 2), rel=1e-12)
    grad = student.grads.data.copy()
    f = lambda: prediction_step(teacher, student, batch, scores, None, LossWeights(),   # noqa: E731
                                regression_target="gold").losses["loss"]
    d = rng.standard_normal(grad.shape)
    assert_grad_close(grad @ d, numeric_directional(f, student.params.data, d), rtol=1e-5, atol=1e-8,
                      what="prediction objective, gold regression target")
    with pytest.raises(ValueError, match="regression_target"):
        prediction_step(teacher, student, batch, scores, None, LossWeights(), regression_target="labels")


def test_labels_only_prediction_step_skips_the_teacher():
    rng = np.random.default_rng(4)
    teacher = Bert(TEACHER.replace(num_labels=2), seed=1)
    student = Bert(STUDENT.replace(num_labels=2), seed=2)
    counter = CountingForward(teacher)
    result = prediction_step(teacher, student, tiny_batch(rng), np.array([0, 1]), None,
                             LossWeights(prediction=0.0, hard=1.0))
    assert counter.calls == 0 and result.losses["loss_prediction"] == 0 and result.losses["loss_hard"] > 0
    assert result.losses["loss"] == result.losses["loss_hard"]


def test_task_stage_from_scratch_without_intermediate(world, tmp_path):
    out = tmp_path / "o"
    args = cli(world, out, "--finetuned-teacher", str(world / "teacher-sst2"), "--general-student", "scratch",
               "--skip-intermediate", "--prediction-steps", "2")
    assert main(["task", *args]) == 0
    assert not (out / "task-intermediate").exists() and not (out / "general").exists()
    assert (out / "task-prediction" / "best" / "model.safetensors").exists()
    assert main(["task", *cli(world, tmp_path / "p", "--finetuned-teacher", str(world / "teacher-sst2"),
                             "--general-student", str(tmp_path / "missing"))]) == 2


def test_augmentation_ahead_of_the_task_stage_fills_its_cache(world, tmp_path, capsys):
    from minitinybert.augment import main as augment_main
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
