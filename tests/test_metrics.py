"""Held-out metrics (brain_resnet.metrics) on cases small enough to work out by hand."""

import numpy as np
import pytest

from brain_resnet.metrics import classification_metrics, share_interval


def test_classification_metrics_of_a_known_case():
    labels = np.array([0, 0, 0, 0, 1, 2])
    probs = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.8, 0.1, 0.1],
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.5, 0.4, 0.1],  # class 1 called class 0, though ranked above every other slice for class 1
            [0.1, 0.1, 0.8],
        ]
    )
    metrics = classification_metrics(labels, probs, ["a", "b", "c"])

    assert metrics["accuracy"] == pytest.approx(5 / 6)
    # F1 of a: precision 4/5, recall 1 -> 8/9; of b: 0; of c: 1. Macro: their plain mean, not the share right.
    assert metrics["f1"] == pytest.approx({"a": 8 / 9, "b": 0.0, "c": 1.0})
    assert metrics["macro_f1"] == pytest.approx((8 / 9 + 0 + 1) / 3)
    assert metrics["recall"] == pytest.approx({"a": 1.0, "b": 0.0, "c": 1.0})
    # each class's own probability ranks its slices first: every one-vs-rest AUC is 1
    assert metrics["roc_auc"] == {"a": 1.0, "b": 1.0, "c": 1.0} and metrics["roc_auc_macro"] == 1.0
    assert metrics["confusion_matrix"] == [[4, 0, 0], [1, 0, 0], [0, 0, 1]]


def test_share_interval_is_of_the_share_of_slices_when_groups_differ_in_size():
    """50 patients of 10 slices, all right, and 50 of one slice, all wrong: 500 of 550 slices (0.91) are right,
    though only half the patients are."""
    hits = np.concatenate([np.ones(500), np.zeros(50)])
    groups = np.concatenate([np.repeat(np.arange(50), 10), np.arange(50, 100)])
    low, high = share_interval(hits, groups)
    assert low < 500 / 550 < high and low > 0.8
