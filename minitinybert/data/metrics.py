"""The GLUE metrics TinyBERT reports: accuracy, F1 (of class 1: MRPC, QQP), Matthews correlation
(CoLA), Pearson and Spearman correlations (STS-B), and `evaluate`, a task's metrics with its "main" one.
"""
from __future__ import annotations

import numpy as np

from .tasks import DataError, TaskSpec, get_task


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1_binary(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are neither predicted nor true positives."""
    tp = float(np.sum((pred == positive) & (gold == positive)))
    fp = float(np.sum((pred == positive) & (gold != positive)))
    fn = float(np.sum((pred != positive) & (gold == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary MCC from the confusion matrix; 0 when a row or column of it is empty (as scikit-learn)."""
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred != 1) & (gold != 1)))
    fp = float(np.sum((pred == 1) & (gold != 1)))
    fn = float(np.sum((pred != 1) & (gold == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / denominator)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (undefined: no linear relation to measure)."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return 0.0 if denominator == 0 else float(np.sum(x * y) / denominator)


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the average of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # first index of each run of equal values, and the run each sorted element belongs to
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0        # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = average[run]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def evaluate(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """The task's metrics plus "main" (the one TinyBERT reports for it).

    Classification: `predictions` are logits (N, K) or label ids (N,). Regression: scores (N,) or (N, 1)."""
    task = get_task(task)
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if task.is_regression:
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.shape != labels.shape:
            raise DataError(f"{task.name}: {predictions.shape} predictions for {labels.shape} scores")
        if not np.all(np.isfinite(predictions)):
            raise DataError(f"{task.name}: predictions hold NaN or infinite values")
        results = {"pearson": pearson(predictions, labels), "spearman": spearman(predictions, labels)}
    else:
        if predictions.ndim == 2:
            if predictions.shape[1] != task.num_labels:
                raise DataError(f"{task.name}: logits have {predictions.shape[1]} columns, the task has "
                                f"{task.num_labels} labels")
            predictions = predictions.argmax(axis=1)
        if predictions.shape != labels.shape:
            raise DataError(f"{task.name}: {predictions.shape} predictions for {labels.shape} labels")
        predictions = predictions.astype(np.int64)
        results = {"accuracy": accuracy(predictions, labels)}
        if "f1" in task.metrics:
            results["f1"] = f1_binary(predictions, labels)
        if "mcc" in task.metrics:
            results["mcc"] = matthews_corrcoef(predictions, labels)
    results["main"] = results[task.main_metric]
    return results
