"""Datasets laid out as the Hugging Face Hub serves them, written to a local folder (no network):
one folder per config holding a Parquet file per split (`<config>/<split>-00000-of-00001.parquet`)
and a dataset card whose YAML names each config's features and data files, as nyu-mll/glue's does.
The Parquet files carry their `datasets` features (ClassLabel names) as the hub's do.

`write_hub_dataset(root, config, splits, features)` writes one config; `write_glue(root, task,
examples)` writes a GLUE task as nyu-mll/glue has it, from (text, pair, label) rows with labels as
GLUE's TSVs spell them (glue_files.py's rows), so one set of rows can be written both ways.
"""
from __future__ import annotations

from pathlib import Path

import datasets

from minitinybert.data.tasks import GLUE_ON_HUB, get_task

# nyu-mll/glue's ClassLabel names, in its id order (MNLI's differs from the TSVs' order of ours)
GLUE_CLASS_NAMES = {
    "mnli": ["entailment", "neutral", "contradiction"], "qqp": ["not_duplicate", "duplicate"],
    "qnli": ["entailment", "not_entailment"], "sst2": ["negative", "positive"],
    "cola": ["unacceptable", "acceptable"], "stsb": None, "mrpc": ["not_equivalent", "equivalent"],
    "rte": ["entailment", "not_entailment"], "wnli": ["not_entailment", "entailment"],
}


def _yaml_feature(name: str, feature) -> list[str]:
    if isinstance(feature, datasets.ClassLabel):
        return [f"  - name: {name}", "    dtype:", "      class_label:", "        names:",
                *[f"          '{i}': {label}" for i, label in enumerate(feature.names)]]
    return [f"  - name: {name}", f"    dtype: {feature.dtype}"]


def _write_card(root: Path) -> None:
    """README.md naming every config folder under `root`, its features and its splits' files."""
    info, configs = ["dataset_info:"], ["configs:"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.parquet"))
        if not files:
            continue
        features = datasets.Dataset.from_parquet(str(files[0])).features
        info += [f"- config_name: {folder.name}", "  features:"]
        for name, feature in features.items():
            info += _yaml_feature(name, feature)
        configs += [f"- config_name: {folder.name}", "  data_files:"]
        for split in sorted({f.name.split("-")[0] for f in files}):
            configs += [f"  - split: {split}", f"    path: {folder.name}/{split}-*"]
    (root / "README.md").write_text("---\n" + "\n".join(info + configs) + "\n---\n\n# A local copy\n")


def write_hub_dataset(root: Path, config: str, splits: dict[str, dict[str, list]], features: dict) -> Path:
    """`root/<config>/<split>-00000-of-00001.parquet` for each split's columns, and the card."""
    root = Path(root)
    folder = root / config
    folder.mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    _write_card(root)
    return root


def glue_features(task: str) -> dict:
    layout, names = GLUE_ON_HUB[task], GLUE_CLASS_NAMES[task]
    features = {layout.text_column: datasets.Value("string")}
    if layout.pair_column:
        features[layout.pair_column] = datasets.Value("string")
    features["label"] = datasets.ClassLabel(names=names) if names else datasets.Value("float32")
    features["idx"] = datasets.Value("int32")
    return features


def write_glue(root: Path, task: str, examples: dict[str, list]) -> Path:
    """GLUE task `task` as nyu-mll/glue holds it; `examples[split]` (our split names: train, dev,
    dev_mismatched) are (text, pair, label) rows, labels spelled as in GLUE's TSVs ("0", "entailment")."""
    spec, layout, names = get_task(task), GLUE_ON_HUB[task], GLUE_CLASS_NAMES[task]
    hub_split = dict(layout.splits)
    splits = {}
    for split, rows in examples.items():
        columns = {layout.text_column: [a for a, _, _ in rows]}
        if layout.pair_column:
            columns[layout.pair_column] = [b for _, b, _ in rows]
        if names is None:
            columns["label"] = [float(y) for _, _, y in rows]
        else:     # the TSV's spelling -> our class name -> the hub's id of that name
            columns["label"] = [names.index(spec.class_names[spec.labels.index(y)]) for _, _, y in rows]
        columns["idx"] = list(range(len(rows)))
        splits[hub_split[split]] = columns
    return write_hub_dataset(root, layout.config, splits, glue_features(task))
