"""`python -m minitinybert.infer` in a subprocess: texts from arguments, --file (with pairs), stdin;
clear exit-2 errors for no input and for corrupt models; a warning for over-long inputs."""
import json
import subprocess
import sys

import numpy as np
import pytest

from minitinybert.engine.config import BertConfig
from minitinybert.export import export_runtime
from minitinybert.engine.model import Bert
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.engine.weights import load_model, save_checkpoint

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,!?") + \
        ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["good", "bad", "movie", "the", "was"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    out = {}
    for num_labels in (2, 1):
        cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=24, max_position_embeddings=64, num_labels=num_labels,
                         id2label={0: "negative", 1: "positive"} if num_labels == 2 else {},
                         initializer_range=0.5)   # large weights: outputs that differ from text to text
        ckpt = save_checkpoint(Bert(cfg, seed=num_labels), tmp / f"ckpt{num_labels}", vocab_from=vocab)
        out[num_labels] = (ckpt, export_runtime(ckpt, tmp / f"m{num_labels}.safetensors", max_length=16))
    return out


def engine(ckpt, inputs):
    """What the training engine's Bert computes on the checkpoint, for comparison with the command's
    output (which runs the exported file through runtime.py): {label: probability} per input for a
    classifier, the score for a regression model."""
    model, tok = load_model(ckpt), Tokenizer.from_dir(ckpt)
    pairs = [b for _, b in inputs] if isinstance(inputs[0], tuple) else None
    texts = [a for a, _ in inputs] if pairs is not None else list(inputs)
    batch = tok.encode(texts, pairs, max_length=16)
    logits = model.forward(batch.input_ids, batch.token_type_ids, batch.attention_mask).logits.astype(np.float64)
    if model.config.num_labels == 1:
        return list(logits[:, 0])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return [dict(zip(names, row)) for row in probs]


def assert_scores_match(lines, expected):
    assert len(lines) == len(expected)
    for line, scores in zip(lines, expected):
        assert line["scores"] == pytest.approx(scores, abs=1e-5)
        assert line["label"] == max(scores, key=scores.get)


def run(*args, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "minitinybert.infer", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc, lines


def test_texts_from_arguments(models):
    ckpt, model = models[2]
    texts = ["the movie was good", "bad", "was the movie bad? good!"]
    proc, lines = run(model, *texts)
    assert proc.returncode == 0, proc.stderr
    assert [x["text"] for x in lines] == texts
    assert_scores_match(lines, engine(ckpt, texts))


def test_checkpoint_directory_and_regression(models):
    ckpt, _ = models[1]
    proc, lines = run(ckpt, "good movie", "the bad movie")
    assert proc.returncode == 0, proc.stderr
    assert set(lines[0]) == {"text", "score"}
    assert [x["score"] for x in lines] == pytest.approx(engine(ckpt, ["good movie", "the bad movie"]), abs=1e-5)


def test_file_with_pairs_and_blank_lines(models, tmp_path):
    ckpt, model = models[2]
    f = tmp_path / "pairs.tsv"
    f.write_text("the movie\twas good\n\n   \nbad\tgood\n", encoding="utf-8")
    proc, lines = run(model, "--file", f, "--batch-size", "1")
    assert proc.returncode == 0, proc.stderr
    assert [(x["text"], x["text_pair"]) for x in lines] == [("the movie", "was good"), ("bad", "good")]
    assert_scores_match(lines, engine(ckpt, [("the movie", "was good"), ("bad", "good")]))
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text("a\tb\nsingle\n", encoding="utf-8")
    proc, _ = run(model, "--file", mixed)
    assert proc.returncode == 2 and "line 1" in proc.stderr and "Traceback" not in proc.stderr


def test_stdin(models):
    ckpt, model = models[2]
    proc, lines = run(model, stdin="good\n\nbad movie\n")
    assert proc.returncode == 0, proc.stderr
    assert [x["text"] for x in lines] == ["good", "bad movie"]
    assert_scores_match(lines, engine(ckpt, ["good", "bad movie"]))


@pytest.mark.parametrize("stdin", ["", "\n  \n\t\n"])
def test_empty_input_is_an_error(models, stdin):
    _, model = models[2]
    proc, lines = run(model, stdin=stdin)
    assert proc.returncode == 2 and lines == []
    assert "no input" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_or_missing_model_is_an_error(models, tmp_path):
    _, model = models[2]
    data = model.read_bytes()
    cases = {"truncated.safetensors": data[: len(data) // 2], "garbage.safetensors": b"\xff" * 100,
             "empty.safetensors": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    for path in [tmp_path / name for name in cases] + [tmp_path / "missing.safetensors", tmp_path]:
        proc, lines = run(path, "text")
        assert proc.returncode == 2, (path, proc.stderr)
        assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
        assert lines == []


def test_overlong_line_is_truncated_with_a_warning(models, tmp_path):
    _, model = models[2]
    f = tmp_path / "long.txt"
    f.write_text("short\n" + "the movie was good " * 5000 + "\n", encoding="utf-8")
    proc, lines = run(model, "--file", f)
    assert proc.returncode == 0, proc.stderr
    assert len(lines) == 2
    assert "line 2" in proc.stderr and "truncated" in proc.stderr and "line 1 " not in proc.stderr
    proc, lines = run(model, "--max-length", "8", "the movie was good good good good")
    assert proc.returncode == 0 and "input 1" in proc.stderr and "8 tokens" in proc.stderr
    proc, _ = run(model, "--max-length", "100000", "text")
    assert proc.returncode == 2 and "max_length" in proc.stderr
