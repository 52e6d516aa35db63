"""tools/edge/check_arm.py without an ARM root: its probe on this machine (NumPy and Numba paths
agree, an asked-for Numba path never falls back silently), its comparison (labels, ids, tolerance),
and its root cache (built again when the package list changes, not otherwise)."""
import copy
import json
import os
import sys
from pathlib import Path

import pytest

from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.export import export_model
from tools.edge import check_arm

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + \
        ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["the", "film", "good", "dull", "!", ","]
TEXTS = ["the film, good!", "dull", "a good film", "zzz", ""]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge")
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=64, num_labels=2,
                     id2label={0: "neg", 1: "pos"})
    model = Bert(cfg, seed=1)
    model.params["classifier.weight"][...] *= 30.0
    path = export_model(model, tmp / "m.safetensors", VOCAB, True, "int8", quantize_embeddings=True)
    texts = tmp / "texts.json"
    texts.write_text(json.dumps(TEXTS), encoding="utf-8")
    return path, texts


def host_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINITINYBERT_", "NUMBA_"))}
    return dict(env, **extra)


def test_probe_numpy_path_on_this_machine(model_file):
    got = check_arm.probe([sys.executable], host_env(), *model_file, "numpy")
    assert got["kernels"] == "numpy" and len(got["single"]) == len(got["predictions"]) == len(TEXTS)
    assert {p["label"] for p in got["predictions"]} <= {"neg", "pos"}
    assert check_arm.compare(got, got) == ([], 0.0)


def test_probe_numba_path_matches_numpy(model_file, tmp_path):
    pytest.importorskip("numba")
    ref = check_arm.probe([sys.executable], host_env(), *model_file, "numpy")
    got = check_arm.probe([sys.executable], host_env(NUMBA_CACHE_DIR=str(tmp_path)), *model_file, "numba")
    assert got["kernels"] == "numba" and got["numba"]
    assert got["numba_threads"] in ("omp", "tbb", "workqueue")      # the threaded block kernel was built and run
    problems, worst = check_arm.compare(ref, got)
    assert problems == [] and worst < check_arm.TOLERANCE


def test_numba_asked_for_but_missing_is_a_failure_not_a_fallback(model_file, tmp_path):
    (tmp_path / "numba.py").write_text("raise ImportError('no Numba on this board')\n")   # shadows a real one
    with pytest.raises(SystemExit, match="kernels=numba"):
        check_arm.probe([sys.executable], host_env(PYTHONPATH=str(tmp_path)), *model_file, "numba")
    assert check_arm.probe([sys.executable], host_env(PYTHONPATH=str(tmp_path)), *model_file, "numpy")


def test_compare_flags_labels_ids_and_differences(model_file):
    ref = check_arm.probe([sys.executable], host_env(), *model_file, "numpy")
    got = copy.deepcopy(ref)
    got["ids"][0] = got["ids"][0][:-1]
    got["single"][1]["label"] = "pos" if ref["single"][1]["label"] == "neg" else "neg"
    first = next(iter(got["pairs"][2]["scores"]))
    got["pairs"][2]["scores"][first] += 3 * check_arm.TOLERANCE
    problems, worst = check_arm.compare(ref, got)
    assert "token ids differ" in problems
    assert any(p.startswith("single[1]: label") for p in problems)
    assert worst == pytest.approx(3 * check_arm.TOLERANCE) and any("max |difference|" in p for p in problems)
    got = copy.deepcopy(ref)
    got["embed_cls"][0][0] += check_arm.TOLERANCE / 2                 # within tolerance: no problem
    assert check_arm.compare(ref, got)[0] == []


def test_root_is_built_once_and_again_when_its_packages_change(tmp_path, monkeypatch):
    builds = []

    def fake_mmdebstrap(command, **kwargs):
        builds.append(next(a for a in command if a.startswith("--include=")))
        root = Path(command[-2])
        lib = root / "usr" / "lib" / "aarch64-linux-gnu"
        for folder, name in (("blas", "libblas.so.3"), ("lapack", "liblapack.so.3"),
                             ("openblas-pthread", "libblas.so.3"), ("openblas-pthread", "liblapack.so.3")):
            (lib / folder).mkdir(parents=True, exist_ok=True)
            (lib / folder / name).write_bytes(b"")
        (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
        (root / "usr" / "bin" / "python3").write_bytes(b"")

    monkeypatch.setattr(check_arm.subprocess, "run", fake_mmdebstrap)
    root = tmp_path / "arm64"
    check_arm.build_root("arm64", root, "mirror", "bookworm", "reference")
    check_arm.build_root("arm64", root, "mirror", "bookworm", "reference")
    assert builds == ["--include=python3-numpy,python3-numba"]
    assert (root / "usr/lib/aarch64-linux-gnu/libblas.so.3").resolve().parent.name == "blas"
    (root / check_arm.PACKAGES_MARK).unlink()                           # a root of the older, NumPy-only check
    check_arm.build_root("arm64", root, "mirror", "bookworm", "reference")
    assert len(builds) == 2
    check_arm.build_root("arm64", root, "mirror", "bookworm", "openblas")
    assert builds[-1] == "--include=python3-numpy,python3-numba,libopenblas0-pthread"
    armhf = tmp_path / "armhf"
    monkeypatch.setitem(check_arm.ARCHES, "armhf", ("qemu-arm-static", "aarch64-linux-gnu"))   # the fake's libdir
    check_arm.build_root("armhf", armhf, "mirror", "bookworm", "reference")
    assert builds[-1] == "--include=python3-numpy"                      # no Numba where it aborts
