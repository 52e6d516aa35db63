"""The general student: TinyBERT's task-independent part, distilled once and reused by every task.

A general run records what made it in `general.json` (in its directory and in final/): the
teacher (sha256 of its weights file, its configuration, the vocabulary), the student's
configuration, the corpus (name, size and sha256 of every file) and the settings that shape the
result (sequence length, batch size, learning rate and schedule, seed, loss weights, layer
mapping), which together are its *recipe*, plus the steps it has made. The recipe's hash names
the run's directory: by default <parent of --out>/general/<student>-<fingerprint>/, so that
`all --task cola` finds, in runs/general/, the student `all --task sst2` distilled. Steps are not
part of the recipe: a run is continued for more steps in its own directory.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .corpus import corpus_files
from .teacher import sha256_of
from .weights import write_file

RECORD = "general.json"
RECORD_FORMAT = "minitinybert-general/1"


FULL_HASH_BYTES = 256 << 20     # larger corpus files are identified by samples of their bytes
SAMPLES, SAMPLE_BYTES = 64, 1 << 20


def file_identity(path: Path) -> dict:
    """Name, size and sha256 of a corpus file; for a file over 256 MB (a Wikipedia dump), the
    sha256 of its size and 64 evenly spaced 1 MB samples instead, so that `all` does not read
    gigabytes to find its general student."""
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return {"name": path.name, "bytes": size, "sha256": sha256_of(path)}
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for k in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * k // (SAMPLES - 1))
            h.update(f.read(SAMPLE_BYTES))
    return {"name": path.name, "bytes": size, "sha256_sampled": h.hexdigest()}


def make_recipe(teacher_weights: Path, teacher_config: dict, vocab: str, student_config: dict, corpus: Path,
                settings: dict) -> dict:
    """Everything a general student's weights depend on, but the number of steps (and the worker
    count, which changes only the dropout stream)."""
    return {"teacher": {"weights_sha256": sha256_of(teacher_weights), "config": teacher_config, "vocab": vocab},
            "student": student_config,
            "corpus": [file_identity(p) for p in corpus_files(corpus)[0]],
            **settings}


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_dir(out: str | Path, student_name: str, recipe: dict) -> Path:
    """<parent of out>/general/<student>-<fingerprint>: beside the task runs (runs/general/ for runs/sst2)."""
    name = Path(student_name).stem if str(student_name).endswith(".json") else str(student_name)
    return Path(out).resolve().parent / "general" / f"{name}-{fingerprint(recipe)}"


def checkpoint_of(path: str | Path) -> Path:
    """A general student's checkpoint directory, given it or the run directory holding final/."""
    path = Path(path)
    return path / "final" if (path / "final" / "model.safetensors").exists() else path


def read_record(directory: str | Path) -> dict | None:
    """The general.json of a run or checkpoint directory, or None when it has none."""
    path = Path(directory) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable general-student record ({e}); delete it") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or "recipe" not in record:
        raise ValueError(f"{path} is not a general-student record (format {RECORD_FORMAT}); delete it")
    return record


def write_record(directory: str | Path, recipe: dict, steps: int, complete: bool, **details) -> dict:
    """Writes general.json atomically; returns what it wrote."""
    record = {"format": RECORD_FORMAT, "fingerprint": fingerprint(recipe), "steps": int(steps),
              "complete": bool(complete), **details, "recipe": recipe}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (RECORD + ".part")
    write_file(tmp, (json.dumps(record, indent=1) + "\n").encode())
    os.replace(tmp, directory / RECORD)
    return record


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The recipe entries in which two recipes differ ("teacher.weights_sha256", "corpus", ...)."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict) and key != "config":
            out += differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(prefix + key)
    return out


def describe(record: dict) -> str:
    """One line: steps, start, teacher, corpus."""
    recipe = record["recipe"]
    corpus = recipe.get("corpus", [])
    size = sum(f["bytes"] for f in corpus) / 1e6
    start = "from the teacher's weights" if recipe.get("student_init") == "subclone" else "from random init"
    return (f"{record['steps']} steps at {recipe.get('seq_len')} tokens x {recipe.get('batch_size')} {start}, "
            f"teacher {recipe['teacher']['weights_sha256'][:12]}, corpus of {len(corpus)} file(s), {size:.1f} MB")
