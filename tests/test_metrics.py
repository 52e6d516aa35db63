"""The GLUE metrics against hand computations, and evaluate's checks of its inputs."""
import numpy as np
import pytest

from minitinybert.data.metrics import evaluate, rankdata
from minitinybert.data.tasks import DataError


def test_classification_metrics_by_hand():
    # confusion matrix: tp=3, tn=4, fp=1, fn=2
    gold = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 1])
    r = evaluate("cola", pred, gold)
    mcc = (3 * 4 - 1 * 2) / np.sqrt((3 + 1) * (3 + 2) * (4 + 1) * (4 + 2))
    assert r["mcc"] == pytest.approx(mcc) and r["main"] == r["mcc"]
    assert r["accuracy"] == pytest.approx(0.7)
    assert r["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    logits = np.stack([-pred.astype(float), pred.astype(float)], axis=1)   # argmax = pred
    assert evaluate("sst2", logits, gold) == {"accuracy": pytest.approx(0.7), "f1": r["f1"],
                                              "main": pytest.approx(0.7)}
    assert evaluate("cola", np.zeros(4, int), np.array([0, 1, 0, 1]))["mcc"] == 0.0   # degenerate
    with pytest.raises(DataError, match="3 columns"):
        evaluate("sst2", np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(DataError, match="predictions for"):
        evaluate("rte", np.zeros(3, int), np.array([0, 1]))


def test_regression_metrics_with_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 4.0, 6.0])
    assert rankdata(x).tolist() == [1.0, 2.5, 2.5, 4.0, 5.0]
    assert rankdata(y).tolist() == [2.0, 1.0, 3.5, 3.5, 5.0]
    # Pearson by hand: deviations x: -1.6 -.6 -.6 .4 2.4 ; y: -1.4 -2.4 .6 .6 2.6
    sxy = (-1.6 * -1.4) + (-0.6 * -2.4) + (-0.6 * 0.6) + (0.4 * 0.6) + (2.4 * 2.6)
    sxx = 1.6 ** 2 + 0.6 ** 2 * 2 + 0.4 ** 2 + 2.4 ** 2
    syy = 1.4 ** 2 + 2.4 ** 2 + 0.6 ** 2 * 2 + 2.6 ** 2
    r = evaluate("stsb", x[:, None], y)
    assert r["pearson"] == pytest.approx(sxy / np.sqrt(sxx * syy))
    # Spearman = Pearson of the average ranks: rx - 3 = -2 -.5 -.5 1 2 ; ry - 3 = -1 -2 .5 .5 2
    rs = (2 + 1 - 0.25 + 0.5 + 4) / np.sqrt((4 + 0.25 + 0.25 + 1 + 4) * (1 + 4 + 0.25 + 0.25 + 4))
    assert r["spearman"] == pytest.approx(rs) and r["main"] == r["pearson"]
    assert evaluate("stsb", np.ones(5), y)["pearson"] == 0.0
