"""Run on the board (or under emulation): runtime.py's outputs for fixed texts, as one JSON line.

    python3 probe.py RUNTIME_PY MODEL TEXTS_JSON

Standard library and NumPy only (this is what runs inside the Debian arm64 / armhf roots). A script
run by its path, not a module: the roots hold runtime.py and this file, not the package, which is
why runtime.py is loaded from the path given."""
import json
import platform
import sys
import importlib.util

import numpy as np

spec = importlib.util.spec_from_file_location("runtime", sys.argv[1])
runtime = importlib.util.module_from_spec(spec)
sys.modules["runtime"] = runtime
spec.loader.exec_module(runtime)

model = runtime.load(sys.argv[2])
texts = json.loads(open(sys.argv[3], encoding="utf-8").read())
pairs = [(a, b) for a, b in zip(texts, texts[1:] + texts[:1])]
batch = model.tokenize(texts)
try:                                   # the BLAS library actually loaded (the alternative's target)
    with open("/proc/self/maps") as f:
        blas = sorted({line.split()[-1] for line in f if "blas" in line.split()[-1].rsplit("/", 1)[-1]})
except OSError:
    blas = []
print(json.dumps({
    "machine": platform.machine(), "numpy": np.__version__, "kernels": model.kernels, "blas": blas,
    "dtype": model.dtype,
    "ids": [row[row_mask.astype(bool)].tolist() for row, row_mask in zip(batch["input_ids"], batch["attention_mask"])],
    "predictions": model.predict(texts, batch_size=4),
    "pairs": model.predict(pairs, batch_size=4),
    "embed_mean": model.embed(texts, pooling="mean").tolist(),
    "embed_cls": model.embed(texts, pooling="cls").tolist(),
}))
