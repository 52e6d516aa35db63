"""runtime.py stands alone: copied into an empty directory and run with numba and tokenizers made
unimportable (a sitecustomize that installs a blocking import hook), it imports nothing beyond the
standard library and NumPy, never minitinybert, and predicts what it predicts with them."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minitinybert import runtime
from minitinybert.engine.config import BertConfig
from minitinybert.export import export_model
from minitinybert.engine.model import Bert

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,!?é") + \
        ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["good", "bad", "movie", "the", "was", "cafe"]
TEXTS = ["the movie was good", "bad!", "Café, the movie?", "a much longer text about the movie that was bad"]

BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"numba", "tokenizers", "minitinybert", "scipy", "llvmlite"}
    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None
    sys.meta_path.insert(0, _Blocker())
""")

PROBE = textwrap.dedent("""
    import json, sys, importlib.util
    baseline = set(sys.modules)            # what the interpreter's start-up (site, .pth files) loaded
    spec = importlib.util.spec_from_file_location("runtime", sys.argv[1])
    rt = importlib.util.module_from_spec(spec)
    sys.modules["runtime"] = rt
    spec.loader.exec_module(rt)
    after_import = sorted(set(sys.modules) - baseline)
    model = rt.load(sys.argv[2])
    texts = json.loads(sys.argv[3])
    pairs = [(a, b) for a, b in zip(texts, texts[::-1])]
    result = {
        "have_numba": rt.HAVE_NUMBA, "kernels": model.kernels,
        "predictions": model.predict(texts, batch_size=2), "pairs": model.predict(pairs),
        "ids": model.tokenize(texts)["input_ids"].tolist(),
        "embed": model.embed(texts).tolist(),
        "import_modules": after_import, "modules": sorted(set(sys.modules) - baseline),
    }
    print(json.dumps(result))
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isolation")
    board = tmp / "board"
    board.mkdir()
    shutil.copy(runtime.__file__, board / "runtime.py")
    blocker = tmp / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=32, num_labels=3,
                     id2label={0: "neg", 1: "neu", 2: "pos"})
    model = export_model(Bert(cfg, seed=2), board / "model.safetensors", VOCAB, True, "float32")
    return board, blocker, model


def run_probe(board, model, blocker=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINITINYBERT_NUMBA",
                                                              "MINITINYBERT_TOKENIZERS")}
    if blocker is not None:
        env["PYTHONPATH"] = str(blocker)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(board / "runtime.py"), str(model), json.dumps(TEXTS)],
                          cwd=board, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def top_level(modules):
    return {m.split(".")[0] for m in modules}


def test_standalone_without_optional_packages(setup):
    board, blocker, model = setup
    blocked = run_probe(board, model, blocker)
    assert not blocked["have_numba"] and blocked["kernels"] == "numpy"
    allowed = set(sys.stdlib_module_names) | {"numpy", "runtime"}
    for key in ("import_modules", "modules"):
        extra = top_level(blocked[key]) - allowed
        assert not extra, f"runtime.py pulled in {sorted(extra)}"
    assert "minitinybert" not in top_level(blocked["modules"])


def test_same_predictions_with_and_without_speedups(setup):
    board, blocker, model = setup
    blocked = run_probe(board, model, blocker)
    full = run_probe(board, model)
    if full["have_numba"]:
        assert full["kernels"] == "numba"
    # the import alone loads neither optional package (Numba is imported at the first forward pass)
    assert not {"numba", "tokenizers", "minitinybert"} & top_level(full["import_modules"])
    assert "minitinybert" not in top_level(full["modules"])
    assert blocked["ids"] == full["ids"]
    for key in ("predictions", "pairs"):
        for a, b in zip(blocked[key], full[key]):
            assert a["label"] == b["label"]
            for label in a["scores"]:
                assert abs(a["scores"][label] - b["scores"][label]) < 1e-5
    for a, b in zip(blocked["embed"], full["embed"]):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5


def test_script_mode_on_the_board(setup):
    board, blocker, model = setup
    env = dict(os.environ, PYTHONPATH=str(blocker))
    proc = subprocess.run([sys.executable, "runtime.py", str(model), *TEXTS[:2]], cwd=board, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["text"] for x in lines] == TEXTS[:2] and all(x["label"] in ("neg", "neu", "pos") for x in lines)
    proc = subprocess.run([sys.executable, "runtime.py", str(model)], cwd=board, env=env, input="good\n\nbad\n",
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2
    assert Path(board / "runtime.py").read_text().count("import minitinybert") == 0
