"""Sentence-embedding models through export: the runtime file carries pooling, normalisation, projection
and max_seq_length, so runtime.embed(), `runtime.py MODEL --embed` and infer give the model's embedding
without flags (float32 equal to the training engine's, int8 close); the sentence-transformers folder;
and the real teacher against sentence-transformers' embeddings of hard texts (a stored fixture)."""
import json
from pathlib import Path

import numpy as np
import pytest

from minitinybert import infer, runtime
from minitinybert.data.sts import cosine_rows
from minitinybert.data.tokenizer import Tokenizer
from minitinybert.distill.embedding import embed_texts, model_projection
from minitinybert.engine.model import Bert
from minitinybert.engine.pooling import (
    EMBEDDING_FILE,
    SentenceConfigError,
    read_model_sentence_config,
    read_sentence_config,
)
from minitinybert.engine.weights import save_checkpoint
from minitinybert.export import export_runtime, write_st_folder
from tests.tiny_world import STUDENT, build_world

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["the film was good", "a very boring plot , and bad actors", "fun !",
         ("this story is not dull at all . the actors loved it and the plot was great fun and the movie was very "
          "funny")]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny embedding student: its checkpoint with embedding.json (mean, normalised, a projection)."""
    root = build_world(tmp_path_factory.mktemp("world"))
    model = Bert(STUDENT.replace(fit_size=24), seed=3)
    record = {"pooling": "mean", "normalize": True, "max_seq_length": 12, "projection": "fit_denses.2"}
    save_checkpoint(model, root / "student", vocab_from=root / "vocab.txt",
                    extra_files={EMBEDDING_FILE: json.dumps(record)})
    return root / "student"


def engine_embeddings(checkpoint, texts, max_length=None):
    from minitinybert.engine.weights import load_model
    model = load_model(checkpoint)
    sentence, prefix = read_model_sentence_config(checkpoint)
    return embed_texts(model, Tokenizer.from_dir(checkpoint), texts, sentence, model_projection(model, prefix),
                       max_length=max_length)


def test_runtime_file_carries_the_embedding_pipeline(student, tmp_path):
    path = export_runtime(student, tmp_path / "f32.safetensors")
    model = runtime.load(path)
    assert (model.pooling, model.normalize, model.max_length) == ("mean", True, 12)   # max_seq_length, not 128
    got = model.embed(TEXTS)
    assert got.shape == (len(TEXTS), 24)                                  # the projection: the teacher's width
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-5)
    want = engine_embeddings(student, TEXTS)
    assert np.max(1 - cosine_rows(got, want)) < 1e-6
    np.testing.assert_allclose(got, want, atol=1e-5)
    raw = model.embed(TEXTS, normalize=False)                               # flags still override the file
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)
    assert model.embed(TEXTS, pooling="cls").shape == (len(TEXTS), STUDENT.hidden_size)   # no projection there


def test_int8_with_quantized_embeddings_stays_close(student, tmp_path):
    f32 = runtime.load(export_runtime(student, tmp_path / "f32.safetensors"))
    i8 = runtime.load(export_runtime(student, tmp_path / "i8.safetensors", "int8", quantize_embeddings=True))
    assert i8.dtype == "int8" and i8.pooling == "mean"
    assert runtime.read_safetensors(tmp_path / "i8.safetensors")[1]["embedding_projection.weight"][0] == "I8"
    assert np.min(cosine_rows(i8.embed(TEXTS), f32.embed(TEXTS))) > 0.99


def test_script_and_infer_embed_without_flags(student, tmp_path, capsys):
    path = export_runtime(student, tmp_path / "f32.safetensors")
    want = runtime.load(path).embed(TEXTS[:2])
    assert runtime.main([str(path), *TEXTS[:2]]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["embedding"] for r in rows], want, atol=2e-6)
    assert infer.main([str(student), *TEXTS[:2]]) == 0                   # a checkpoint directory too
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([r["embedding"] for r in rows], want, atol=2e-6)


def test_embed_flag_on_a_model_with_a_head(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    root = build_world(tmp_path / "w")
    save_checkpoint(Bert(STUDENT.replace(num_labels=2), seed=4), root / "clf", vocab_from=root / "vocab.txt")
    path = export_runtime(root / "clf", tmp_path / "clf.safetensors")
    assert runtime.main([str(path), "the film", "--embed"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert len(row["embedding"]) == STUDENT.hidden_size and "label" not in row
    assert infer.main([str(path), "the film", "--embed"]) == 0
    assert len(json.loads(capsys.readouterr().out)["embedding"]) == STUDENT.hidden_size


def test_sentence_transformers_folder(student, tmp_path):
    out = write_st_folder(student, tmp_path / "st")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 12
    pool = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_mean_tokens"] and not pool["pooling_mode_cls_token"]
    dense = json.loads((out / "2_Dense" / "config.json").read_text())
    assert (dense["in_features"], dense["out_features"]) == (STUDENT.hidden_size, 24)
    from minitinybert.engine.weights import load_model, read_safetensors
    linear = read_safetensors(out / "2_Dense" / "model.safetensors")
    np.testing.assert_array_equal(linear["linear.weight"], load_model(student).params["fit_denses.2.weight"])
    config = json.loads((out / "config.json").read_text())
    assert "fit_size" not in config and config["architectures"] == ["BertModel"]
    names = set(read_safetensors(out / "model.safetensors"))
    assert not any(n.startswith("fit_dense") for n in names) and "embeddings.word_embeddings.weight" in names
    with pytest.raises(SentenceConfigError, match="Dense"):     # the folder's Dense is read from embedding.json
        read_sentence_config(out)


TEACHER = ROOT / "weights" / "all-MiniLM-L6-v2"
FIXTURE = ROOT / "tests" / "fixtures" / "st_teacher_embeddings.npz"


@pytest.mark.skipif(not (TEACHER / "model.safetensors").exists() or not FIXTURE.exists(),
                    reason="needs the teacher (python -m minitinybert.engine.teacher)")
def test_teacher_runtime_matches_sentence_transformers(tmp_path):
    """tools/reference/st_parity.py stored sentence-transformers' embeddings of hard texts (accents, CJK,
    emoji, control characters, 400 words: past max_seq_length 256); the runtime file must give them."""
    if read_sentence_config(TEACHER) is None:
        from minitinybert.engine.pooling import ensure_sentence_files
        if ensure_sentence_files(TEACHER) is None:
            pytest.skip("the teacher's sentence-transformers files are not there (nor its wheel)")
    model = runtime.load(export_runtime(TEACHER, tmp_path / "teacher.safetensors"))
    assert (model.pooling, model.normalize, model.max_length) == ("mean", True, 256)
    fixture = np.load(FIXTURE)
    got = model.embed([str(t) for t in fixture["texts"]])
    distance = 1 - cosine_rows(got, fixture["embeddings"])
    worst = int(np.argmax(distance))
    assert distance.max() < 1e-5, (str(fixture["names"][worst]), distance.max())
