"""The embedding stage (distill/embedding.py) on the tiny world: the whole objective's gradient against
finite differences, a short run that lowers its loss and writes the zero-shot similarity summary, and a
run stopped and resumed that ends on the same bytes as a straight one; the similarity-file reader."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minitinybert.data.sts import read_similarity_file, similarity_scores
from minitinybert.data.task_files import load_split
from minitinybert.data.tokenizer import Batch
from minitinybert.distill import main as distill_main
from minitinybert.distill.config import RunConfig
from minitinybert.distill.embedding import EmbeddingWeights, embedding_step, read_embedding_config, text_tasks
from minitinybert.engine.model import Bert
from minitinybert.engine.pooling import SentenceConfig
from minitinybert.engine.weights import load_model
from tests.gradcheck import assert_grad_close, numeric_directional
from tests.tiny_world import STUDENT, TEACHER, build_world, sentences


def main(argv) -> int:
    """`python -m minitinybert.distill embed ARGV`."""
    return distill_main(["embed", *argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = build_world(tmp_path_factory.mktemp("world"))
    rng = np.random.default_rng(5)
    rows = [f"{a}\t{b}\t{rng.uniform(0, 5):.2f}" for (a, _), (b, _) in zip(sentences(rng, 12), sentences(rng, 12))]
    (root / "sts.tsv").write_text("sentence1\tsentence2\tscore\n" + "\n".join(rows) + "\n")
    return root


def args(world, out, *extra):
    return ["--data", str(world / "data"), "--teacher", str(world / "teacher"), "--student",
            str(world / "student.json"), "--out", str(out), "--general-dir", str(out.parent / "no-general"),
            "--batch-size", "8", "--embed-seq-len", "12", "--general-seq-len", "16", "--save-every", "2",
            "--embed-eval-every", "0", "--sts-file", str(world / "sts.tsv"), "--workers", "1", *extra]


def tiny_batch(rng, B=3, T=6):
    ids = rng.integers(5, TEACHER.vocab_size, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 3:] = 0
    return Batch(ids, np.zeros_like(ids), mask)


@pytest.mark.parametrize("objective", ["cosine", "mse"])
@pytest.mark.parametrize("layers", [0.0, 0.5])
def test_embedding_objective_gradient(objective, layers):
    rng = np.random.default_rng(0)
    teacher = Bert(TEACHER, dtype=np.float64, seed=1)
    student = Bert(STUDENT.replace(fit_size=24), dtype=np.float64, seed=2)
    student.params.data[...] += rng.normal(0, 0.05, student.params.size)
    batch, mapping = tiny_batch(rng), [0, 2, 3]
    w = EmbeddingWeights(1.3, 0.7 * layers, layers, 0.9 * layers)
    sentence = SentenceConfig("mean", True)
    step = lambda: embedding_step(teacher, student, batch, None, mapping, w, objective, sentence, sentence)
    step()
    grad = student.grads.data.copy()
    f = lambda: step().losses["loss"]
    for _ in range(3):
        d = rng.standard_normal(grad.shape)
        assert_grad_close(grad @ d, numeric_directional(f, student.params.data, d), rtol=1e-5, atol=1e-8,
                          what=f"embedding objective ({objective}, layers x {layers})")
    assert np.abs(student.grads["fit_denses.2.weight"]).sum() > 0        # the embedding's projection learns


def test_stage_lowers_its_loss_and_writes_the_summary(world, tmp_path):
    out = tmp_path / "embed"
    assert main(args(world, out, "--embed-steps", "30", "--embed-lr", "3e-3", "--warmup", "0")) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss_sentence"] for r in log if "loss_sentence" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and "subclone" in summary["start"]
    assert set(summary["sts"]) >= {"teacher", "student", "student_over_teacher"}
    assert -1 <= summary["sts"]["student"]["spearman"] <= 1
    sentence, projection = read_embedding_config(out / "final")
    assert sentence == SentenceConfig("mean", True, None) and projection == "fit_denses.2"
    assert load_model(out / "final").config.fit_size == TEACHER.hidden_size


def test_stage_reads_the_corpus_and_the_tasks_training_sentences(world, tmp_path, capsys):
    """--embed-texts auto: the corpus plus SST-2's training sentences (the tiny world's one task), without
    their labels; none: the corpus alone; a task whose file is missing: a clear error."""
    out = tmp_path / "auto"
    assert main(args(world, out, "--embed-steps", "2")) == 0
    assert json.loads((out / "summary.json").read_text())["texts"] == ["sst2"]
    train = load_split("sst2", "train", world / "data")
    written = [x for x in (out / "task-sentences.txt").read_text().split("\n\n") if x.strip()]
    assert sorted(x.strip() for x in written) == sorted(set(" ".join(t.split()) for t in train.texts))
    assert not any("\t" in x for x in written)                      # texts only, never a label column
    assert sorted(p.name for p in (out / "corpus").iterdir()) == ["task-sentences.txt", "tiny.txt"]
    alone = tmp_path / "alone"
    assert main(args(world, alone, "--embed-steps", "2", "--embed-texts", "none")) == 0
    assert json.loads((alone / "summary.json").read_text())["texts"] == [] and not (alone / "corpus").exists()
    a, b = (load_model(d / "final").params.data for d in (out, alone))
    assert not np.array_equal(a, b)                                  # the sentences changed what it learnt
    capsys.readouterr()
    assert main(args(world, tmp_path / "missing", "--embed-steps", "2", "--embed-texts", "sst2,rte")) == 2
    assert "RTE train file not found" in capsys.readouterr().err


def test_auto_texts_leave_out_the_task_the_stage_is_scored_on(world):
    """auto: every GLUE task in the data directory but the one whose file is the similarity file; names
    given are taken as they are (the scored task too)."""
    data, other = world / "data", world / "sts.tsv"
    assert text_tasks(RunConfig(data=str(data), sts_file=str(other))) == ["sst2"]              # the control
    assert text_tasks(RunConfig(data=str(data), sts_file=str(data / "glue/SST-2/dev.tsv"))) == []
    assert text_tasks(RunConfig(data=str(data), sts_file=str(data / "glue/SST-2/dev.tsv"), embed_texts="sst2")) \
        == ["sst2"]
    assert text_tasks(RunConfig(data=str(data), sts_file=str(other), embed_texts="none")) == []


def test_stage_resumes_exactly(world, tmp_path):
    steps = ["--embed-steps", "6", "--embed-layers", "0.5"]
    assert main(args(world, tmp_path / "straight", *steps)) == 0
    out = tmp_path / "paused"
    assert main(args(world, out, *steps, "--stop-after", "2")) == 0
    assert not (out / "final").exists()
    rounds = 0
    while not (out / "final").exists():
        assert main(args(world, out, *steps, "--stop-after", "2", "--resume")) == 0
        rounds += 1
        assert rounds < 5
    assert rounds >= 2
    a, b = (load_model(d / "final").params.data for d in (tmp_path / "straight", out))
    np.testing.assert_array_equal(a, b)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_stage_refuses_to_overwrite_without_resume(world, tmp_path, capsys):
    out = tmp_path / "once"
    assert main(args(world, out, "--embed-steps", "2")) == 0
    assert main(args(world, out, "--embed-steps", "2")) == 2
    assert "--resume" in capsys.readouterr().err


def test_similarity_files(tmp_path):
    glue = tmp_path / "STS-B"
    glue.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    glue.joinpath("dev.tsv").write_text(header + '\n0\tmain\tx\t2012\t1\tnone\tnone\tA "man" sings.\tA man is '
                                                 'singing.\t4.8\n1\tmain\tx\t2012\t2\tnone\tnone\tA cat.\tA car.\t0.4\n')
    pairs = read_similarity_file(glue)
    assert pairs.texts == ['A "man" sings.', "A cat."] and pairs.pairs[1] == "A car." and list(pairs.scores) == [4.8, 0.4]
    plain = tmp_path / "plain.tsv"
    plain.write_text("one\tuno\t1\ntwo\tdos\t0.5\nthree\ttres\t0\n")
    got = read_similarity_file(plain)
    assert len(got) == 3 and got.scores[1] == 0.5
    vectors = {"one": [1, 0], "uno": [1, 0.1], "two": [1, 0], "dos": [0.5, 1], "three": [1, 0], "tres": [-1, 0.2]}
    scores = similarity_scores(lambda texts: np.array([vectors[t] for t in texts], float), got)
    assert scores["spearman"] == pytest.approx(1.0) and scores["main"] == scores["spearman"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n")
    with pytest.raises(ValueError, match="two texts and a score"):
        read_similarity_file(bad)


MPIEXEC = shutil.which("mpiexec")


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or MPIEXEC is None, reason="needs mpi4py and mpiexec")
def test_stage_under_mpiexec_equals_one_process_of_two_workers(world, tmp_path):
    steps = ["--embed-steps", "4", "--embed-layers", "0.5"]
    assert main(args(world, tmp_path / "threads", *steps, "--workers", "2")) == 0
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "minitinybert.distill", "embed",
           *args(world, tmp_path / "mpi", *steps, "--workers", "1")]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    a, b = (load_model(d / "final").params.data for d in (tmp_path / "threads", tmp_path / "mpi"))
    np.testing.assert_array_equal(a, b)
