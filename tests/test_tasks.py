"""The task registry (GLUE spellings, task properties) and Examples."""
import numpy as np
import pytest

from minitinybert.data import tasks
from minitinybert.data.tasks import DataError, Examples, get_task


def test_get_task_aliases():
    for alias in ("sst2", "SST-2", "sst-2", "Sst2"):
        assert get_task(alias).name == "sst2"
    for alias in ("STS-B", "stsb", "sts-b"):
        assert get_task(alias).name == "stsb"
    assert get_task("CoLA").name == "cola" and get_task("RTE").name == "rte"
    assert get_task(get_task("rte")) is tasks.TASKS["rte"]
    with pytest.raises(DataError, match=r"unknown task 'mnli2'; known tasks: mnli \(MNLI\), qqp \(QQP\)"):
        get_task("mnli2")
    for alias in ("MNLI", "QQP", "QNLI", "MRPC", "WNLI"):
        assert get_task(alias).name == alias.lower()
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("rte").is_pair and not get_task("sst2").is_pair


def test_examples_check_lengths_and_subset():
    ex = Examples([f"sentence number {i}" for i in range(23)], None, np.arange(23) % 2, get_task("sst2"))
    sub = ex.subset([3, 1])
    assert sub.texts == ["sentence number 3", "sentence number 1"] and sub.labels.tolist() == [1, 1]
    assert sub.task is ex.task and sub.pairs is None
    with pytest.raises(IndexError):
        ex.subset([23])
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        Examples(["a", "b"], None, np.array([0]), get_task("sst2"))
    with pytest.raises(DataError, match="2 texts but 1 pairs"):
        Examples(["a", "b"], ["c"], np.array([0, 1]), get_task("rte"))
