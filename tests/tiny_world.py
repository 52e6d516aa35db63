"""The tiny world the pipeline tests (and tools/pipeline_fingerprint.py) run in: a 32-token vocabulary,
a tiny teacher and student, GLUE-shaped SST-2 files whose label is carried by one sentiment word,
and a corpus of short documents."""
from pathlib import Path

import numpy as np

from minitinybert.engine.config import BertConfig
from minitinybert.engine.model import Bert
from minitinybert.engine.weights import save_checkpoint

WORDS = ("the a film movie was is good bad great awful fun dull plot actors story , . ! and not very "
         "funny boring loved hated it this").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEACHER = BertConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=24, num_hidden_layers=3,
                     num_attention_heads=12, intermediate_size=48, max_position_embeddings=64)
STUDENT = BertConfig(vocab_size=TEACHER.vocab_size, hidden_size=12, num_hidden_layers=2, num_attention_heads=12,
                     intermediate_size=24, max_position_embeddings=64)


def sentences(rng, n):
    pos, neg = ["good", "great", "fun", "funny", "loved"], ["bad", "awful", "dull", "boring", "hated"]
    rows = []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(WORDS[:6], 3)) + [rng.choice(pos if label else neg)] + list(rng.choice(WORDS, 2))
        rows.append((" ".join(words), label))
    return rows


def build_world(root: Path, train: int = 64, dev: int = 24, documents: int = 12) -> Path:
    """root/vocab.txt, root/data/glue/SST-2/{train,dev}.tsv, root/data/corpus/tiny.txt, a random teacher
    checkpoint in root/teacher and the student's config in root/student.json; the same files every time."""
    rng = np.random.default_rng(0)
    (root / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    data = root / "data"
    (data / "glue" / "SST-2").mkdir(parents=True)
    for split, n in (("train", train), ("dev", dev)):
        lines = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in sentences(rng, n)]
        (data / "glue" / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (data / "corpus").mkdir()
    docs = ["\n".join(t for t, _ in sentences(rng, 6)) for _ in range(documents)]
    (data / "corpus" / "tiny.txt").write_text("\n\n".join(docs) + "\n")
    save_checkpoint(Bert(TEACHER, seed=1), root / "teacher", vocab_from=root / "vocab.txt")
    STUDENT.save(root / "student.json")
    return root
