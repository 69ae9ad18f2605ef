"""Classification metrics of a held-out set, their mean and std over folds, training throughput and model FLOPs."""

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binomtest, bootstrap
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score
from torch.utils.flop_counter import FlopCounterMode

from .runs import epoch_records

METRICS = ("accuracy", "macro_f1", "roc_auc_macro")  # the headline metrics, in tables and summaries


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str], sources=None) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, one-vs-rest ROC-AUC, confusion matrix (scikit-learn)."""
    classes = list(range(len(class_names)))
    preds = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    auc = {
        name: float(roc_auc_score(labels == c, probs[:, c])) if 0 < np.sum(labels == c) < len(labels) else None
        for c, name in enumerate(class_names)  # undefined for a class absent from (or alone in) the fold
    }
    defined = [value for value in auc.values() if value is not None]
    metrics = {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "precision": dict(zip(class_names, precision.tolist(), strict=True)),
        "recall": dict(zip(class_names, recall.tolist(), strict=True)),
        "f1": dict(zip(class_names, f1.tolist(), strict=True)),
        "support": dict(zip(class_names, support.tolist(), strict=True)),
        "roc_auc": auc,
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
    }
    if sources is not None:  # every tumour comes from one source and every healthy slice from another
        sources = np.asarray(sources)
        metrics["accuracy_by_source"] = {
            str(s): float(np.mean(preds[sources == s] == labels[sources == s])) for s in sorted(set(sources))
        }
        # what a source's tumours and healthy slices were called: where a source's tumours are missed
        metrics["confusion_matrix_by_source"] = {
            str(s): confusion_matrix(labels[sources == s], preds[sources == s], labels=classes).tolist()
            for s in sorted(set(sources))
        }
    return metrics


def share_interval(hits, groups, confidence: float = 0.95, resamples: int = 2000) -> list[float] | None:
    """A `confidence` interval for the share of slices that are `hits`, when the slices come in groups of
    near-duplicates and adjacent slices of one patient, which are about one case each, not many. `hits` are
    booleans, or each slice's share of hits over repeated fits (a cross-fitted operating point's repeats).

    Whole groups are resampled (a cluster bootstrap, percentile interval). Where every slice is a hit, or none is,
    resampling cannot vary the share: then the exact binomial (Clopper-Pearson) interval with each group as one case,
    so that "all 70 found" still says how low the rate could be. None for no slices or a single group.
    """
    hits = np.asarray(hits, dtype=float)
    distinct, group_index = np.unique(np.asarray(groups), return_inverse=True)
    cases = len(distinct)  # each group is about one case
    if cases < 2:
        return None
    if (hits == 1).all() or (hits == 0).all():
        interval = binomtest(cases if hits[0] else 0, cases).proportion_ci(confidence, method="exact")
        return [float(interval.low), float(interval.high)]
    group_hits, group_sizes = np.bincount(group_index, weights=hits), np.bincount(group_index)
    result = bootstrap(
        (group_hits, group_sizes),
        lambda found, sizes, axis: found.sum(axis=axis) / sizes.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(0),  # the same report every time
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def eval_record(logits: torch.Tensor, labels: np.ndarray) -> dict:
    preds = logits.argmax(dim=1).numpy()
    return {
        "eval_loss": F.cross_entropy(logits, torch.from_numpy(labels)).item(),
        "eval_accuracy": float(np.mean(preds == labels)),
        "eval_macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }


def summarize(folds: dict) -> dict:
    """Mean and std (sample, ddof=1; 0 for one fold) over folds, and the pooled out-of-fold confusion matrix."""
    entries = [folds[key] for key in sorted(folds, key=int)]
    summary = {"folds": [entry["fold"] for entry in entries]}
    for name in (*METRICS, "train_images_per_s"):
        values = [entry[name] for entry in entries if entry.get(name) is not None]
        if values:
            summary[name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            }
    for name in ("recall", "roc_auc"):
        per_class = defaultdict(list)
        for entry in entries:
            for class_name, value in entry.get(name, {}).items():
                if value is not None:
                    per_class[class_name].append(value)
        summary[name] = {c: float(np.mean(values)) for c, values in per_class.items()}
    matrices = [np.array(entry["confusion_matrix"]) for entry in entries if "confusion_matrix" in entry]
    if matrices:
        summary["confusion_matrix"] = np.sum(matrices, axis=0).tolist()
    by_source = defaultdict(list)
    for entry in entries:
        for source, matrix in entry.get("confusion_matrix_by_source", {}).items():
            by_source[source].append(np.array(matrix))
    if by_source:  # out of fold: every slice of a source counted once, by the model that did not train on it
        summary["confusion_matrix_by_source"] = {s: np.sum(m, axis=0).tolist() for s, m in sorted(by_source.items())}
    summary["wall_seconds"] = float(sum(entry["wall_seconds"] for entry in entries))
    return summary


def fold_timing(log_path: Path, fold, session_seconds: float, start_epoch: int) -> dict:
    """Throughput (median over epochs: compilation and warm-up fall out) and time, counting resumed sessions."""
    records = epoch_records(log_path).get(fold, {})
    earlier = sum(r["epoch_seconds"] for epoch, r in records.items() if epoch <= start_epoch)
    return {
        "train_images_per_s": float(np.median([r["train_images_per_s"] for r in records.values()])),
        "train_seconds": float(sum(r["train_seconds"] for r in records.values())),
        "wall_seconds": earlier + session_seconds,
    }


def forward_flops(model: torch.nn.Module, image_size: int, num_channels: int) -> int:
    """Forward FLOPs (multiply-adds counted as 2) of one image, on the CPU in float32."""
    model = model.to("cpu", torch.float32).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, num_channels, image_size, image_size))
    return counter.get_total_flops()
