"""Run on the board (or under emulation): runtime.py's outputs for fixed texts, as one JSON line.

    python3 probe.py RUNTIME_PY MODEL TEXTS_JSON [numpy|numba]

Standard library and NumPy (and Numba for "numba") only: this is what runs inside the Debian arm64 /
armhf roots. "numba" asks for the Numba kernels outright, so a Numba that cannot import or compile
fails the probe instead of quietly falling back to NumPy; it loads the model with threads=2, so that the
single-text predictions run the block kernel in bands on Numba's threads."""
import json
import platform
import sys
import importlib.util

import numpy as np

spec = importlib.util.spec_from_file_location("runtime", sys.argv[1])
runtime = importlib.util.module_from_spec(spec)
sys.modules["runtime"] = runtime
spec.loader.exec_module(runtime)

kernels = sys.argv[4] if len(sys.argv) > 4 else "numpy"
# Numba's path with threads=2: a single text's products run in bands of rows on Numba's threads (where its threading
# layer is thread-safe: "numba_threads" says which layer ran them)
model = runtime.load(sys.argv[2], kernels=kernels, threads=2 if kernels == "numba" else None)
texts = json.loads(open(sys.argv[3], encoding="utf-8").read())
pairs = [(a, b) for a, b in zip(texts, texts[1:] + texts[:1])]
batch = model.tokenize(texts)
try:                                   # the BLAS library actually loaded (the alternative's target)
    with open("/proc/self/maps") as f:
        blas = sorted({line.split()[-1] for line in f if "blas" in line.split()[-1].rsplit("/", 1)[-1]})
except OSError:
    blas = []
try:
    import numba
    numba_version = numba.__version__ if kernels == "numba" else None
except ImportError:
    numba_version = None


def threading_layer():
    """Numba's threading layer once a parallel kernel has run, else None."""
    try:
        import numba
        return numba.threading_layer()
    except (ImportError, ValueError):
        return None



print(json.dumps({
    "machine": platform.machine(), "numpy": np.__version__, "numba": numba_version, "blas": blas,
    "dtype": model.dtype,
    "ids": [row[row_mask.astype(bool)].tolist() for row, row_mask in zip(batch["input_ids"], batch["attention_mask"])],
    "predictions": model.predict(texts, batch_size=4),
    # one text at a time: short products, the ones the Numba block kernels take (batch-1 fast path)
    "single": model.predict(texts, batch_size=1),
    "pairs": model.predict(pairs, batch_size=4),
    "embed_mean": model.embed(texts, pooling="mean").tolist(),
    "embed_cls": model.embed(texts, pooling="cls").tolist(),
    "kernels": model.kernels,          # settled at the first forward pass: read after them
    "numba_threads": threading_layer() if kernels == "numba" else None,
}))
