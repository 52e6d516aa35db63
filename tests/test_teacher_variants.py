"""tools/experiments/teacher_variants.py: pooler-identity starts the default run's teacher but for its
pooler, made the identity, and refuses what it cannot do."""
import numpy as np
import pytest

from minitinybert.engine.weights import load_model, save_checkpoint
from tests.tiny_world import build_world
from tools.experiments import teacher_variants


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


def tiny(world, out, teacher=None):
    return ["--data", str(world / "data"), "--teacher", str(teacher or world / "teacher"), "--out", str(out),
            "--batch-size", "8", "--teacher-steps", "3", "--eval-every", "0", "--workers", "1"]


def test_pooler_identity_starts_from_the_teacher_with_an_identity_pooler(world, tmp_path):
    # at rate 0 the run's weights are its start: the default start (head from the seed) but for the pooler
    assert teacher_variants.main(["pooler-identity", *tiny(world, tmp_path), "--teacher-lr", "0"]) == 0
    got = load_model(tmp_path / "teacher" / "best")
    want = load_model(world / "teacher", num_labels=got.config.num_labels, seed=0)
    pooler = want.params["pooler.dense.weight"]
    assert not np.array_equal(pooler, np.eye(pooler.shape[0]))
    pooler[...] = np.eye(pooler.shape[0])
    np.testing.assert_array_equal(got.params.data, want.params.data)


def test_pooler_identity_trains(world, tmp_path):
    assert teacher_variants.main(["pooler-identity", *tiny(world, tmp_path), "--teacher-lr", "1e-2"]) == 0
    last = load_model(tmp_path / "teacher" / "last").params["pooler.dense.weight"]
    assert not np.allclose(last, np.eye(last.shape[0]))


def test_refused(world, tmp_path):
    trained = load_model(world / "teacher")
    trained.params["pooler.dense.bias"][...] = 0.5
    save_checkpoint(trained, tmp_path / "trained", vocab_from=world / "teacher")
    with pytest.raises(SystemExit, match="pooler was trained"):
        teacher_variants.main(["pooler-identity", *tiny(world, tmp_path / "a", teacher=tmp_path / "trained")])
    with pytest.raises(SystemExit):
        teacher_variants.main(["pooler-identity", *tiny(world, tmp_path / "b"), "--teacher-init", str(tmp_path)])
    with pytest.raises(SystemExit):
        teacher_variants.main(["mean-pooling", *tiny(world, tmp_path / "c")])
