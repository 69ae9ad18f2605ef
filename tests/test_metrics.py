"""Held-out metrics (brain_resnet.metrics) on cases small enough to work out by hand."""

import numpy as np
import pytest

from brain_resnet.metrics import classification_metrics, share_interval


def test_classification_metrics_of_a_known_case():
    """Macro-F1 averages the classes' F1 (not the slices'), recall is per true class and precision per called class,
    ROC-AUC ranks the probabilities (not the calls), the confusion matrix has the true class in rows."""
    names = ["glioma", "meningioma", "notumor"]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1],
         [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]
    )  # fmt: skip  # called: 0, 0, 1, 1, 1, 0, 2, 2
    metrics = classification_metrics(labels, probs, names)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["confusion_matrix"] == [[2, 2, 0], [1, 1, 0], [0, 0, 2]]
    assert metrics["recall"] == pytest.approx({"glioma": 1 / 2, "meningioma": 1 / 2, "notumor": 1.0})
    assert metrics["precision"] == pytest.approx({"glioma": 2 / 3, "meningioma": 1 / 3, "notumor": 1.0})
    assert metrics["support"] == {"glioma": 4, "meningioma": 2, "notumor": 2}
    f1 = {"glioma": 4 / 7, "meningioma": 2 / 5, "notumor": 1.0}  # 2PR / (P + R)
    assert metrics["f1"] == pytest.approx(f1)
    assert metrics["macro_f1"] == pytest.approx(np.mean(list(f1.values())))  # 0.657; accuracy (micro-F1) 0.625

    def ranked(c):  # the share of (this class, other class) pairs whose probability of c is in order, ties half
        pairs = [(p > n) + 0.5 * (p == n) for p in probs[labels == c, c] for n in probs[labels != c, c]]
        return float(np.mean(pairs))

    assert metrics["roc_auc"] == pytest.approx({name: ranked(c) for c, name in enumerate(names)})
    assert metrics["roc_auc"]["glioma"] == pytest.approx(13.5 / 16)
    assert metrics["roc_auc_macro"] == pytest.approx(np.mean([ranked(c) for c in range(3)]))


def test_share_interval_is_of_the_share_of_slices_when_groups_differ_in_size():
    """50 patients of 10 slices, all right, and 50 of one slice, all wrong: 500 of 550 slices (0.91) are right,
    though only half the patients are."""
    hits = np.concatenate([np.ones(500), np.zeros(50)])
    groups = np.concatenate([np.repeat(np.arange(50), 10), np.arange(50, 100)])
    low, high = share_interval(hits, groups)
    assert low < 500 / 550 < high and low > 0.8
