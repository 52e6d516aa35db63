"""Small GLUE files in the layouts GLUE distributes (the real ones are not in the data directory):
the same headers, column orders, label spellings, bare quotes and, for MRPC, the byte-order mark.
See ../shared/data/README.md, "The other GLUE tasks".

`write_task(data_dir, task, examples, newline)` writes glue/<TASK>/ for `examples`: per split, a
list of (text, pair, label) with labels as the files spell them.
"""
from __future__ import annotations

from pathlib import Path

BOM = "\ufeff"
MNLI_TRAIN = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV = MNLI_TRAIN[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def _parse(text: str) -> str:
    return "( " + " ".join(f"( {w} )" for w in text.split()) + " )"


def _rows(task: str, split: str, examples) -> tuple[list[str], list[list[str]]]:
    """The header and rows of one file, with the extra columns GLUE's files carry."""
    if task == "mrpc":
        return ([BOM + "Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                [[y, str(1000 + 2 * i), str(1001 + 2 * i), a, b] for i, (a, b, y) in enumerate(examples)])
    if task == "qqp":
        return (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                [[str(i), str(2 * i + 1), str(2 * i + 2), a, b, y] for i, (a, b, y) in enumerate(examples)])
    if task == "sst2":
        return ["sentence", "label"], [[a, y] for a, _, y in examples]
    if task == "stsb":
        return (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                 "score"], [[str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, y]
                            for i, (a, b, y) in enumerate(examples)])
    if task == "qnli":
        return ["index", "question", "sentence", "label"], [[str(i), a, b, y] for i, (a, b, y) in enumerate(examples)]
    if task in ("rte", "wnli"):
        return (["index", "sentence1", "sentence2", "label"],
                [[str(i), a, b, y] for i, (a, b, y) in enumerate(examples)])
    if task == "mnli":
        header = MNLI_TRAIN if split == "train" else MNLI_DEV
        votes = 1 if split == "train" else 5
        return header, [[str(i), str(31193 + i), f"{31193 + i}n", "fiction", _parse(a), _parse(b), f"(ROOT {_parse(a)})",
                         f"(ROOT {_parse(b)})", a, b, *[y] * votes, y] for i, (a, b, y) in enumerate(examples)]
    raise ValueError(f"no layout for {task}")


FOLDERS = {"sst2": "SST-2", "stsb": "STS-B", "mrpc": "MRPC", "qqp": "QQP", "qnli": "QNLI", "mnli": "MNLI", "wnli": "WNLI", "rte": "RTE"}


def file_name(task: str, split: str) -> str:
    if task == "mnli" and split != "train":
        return {"dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv"}[split]
    return f"{split}.tsv"


def write_task(data_dir: Path, task: str, examples: dict[str, list], newline: str = "\n",
               extra_lines: dict[str, list[str]] | None = None) -> Path:
    """glue/<TASK>/<split>.tsv for each split of `examples`; `extra_lines[split]` are appended as
    they are (QQP's broken rows)."""
    folder = Path(data_dir) / "glue" / FOLDERS[task]
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in examples.items():
        header, body = _rows(task, split, rows)
        lines = ["\t".join(header)] + ["\t".join(row) for row in body] + (extra_lines or {}).get(split, [])
        (folder / file_name(task, split)).write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return folder
