"""Fit a trained model's honest outputs on slices it did not train on: a calibration temperature and the
familiarity detector that the model then carries (see modeling.BrainResNetConfig).

- Temperature scaling (Guo et al., 2017): one scalar divides the logits so that the held-out negative
  log-likelihood is lowest. The argmax, hence accuracy, is unchanged; a network trained from scratch on a few
  thousand slices is usually over-confident, and a temperature above 1 says by how much.
- Familiarity (Lee et al., 2018): class means of the training slices' pooled features and one shared covariance,
  shrunk by Ledoit-Wolf (512 features from a few thousand slices); a slice's score is its squared Mahalanobis
  distance to the nearest class mean. The threshold is a quantile of held-out slices' scores, so that at most
  1 - quantile of slices like the training data raise the "unfamiliar" warning.
- Operating point: one offset added to the notumor logit so that a chosen share of held-out healthy slices is
  called a tumor (false alarms). A model trained with pasted lesions finds more tumors of unseen sources at equal
  false alarms but calls more healthy slices a tumor at its top class; the offset sets where it stands.

All three are fitted on the very slices the release is then scored on, which flatters those scores;
`cross_fitted_scores` measures them on slices they were not fitted on.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from .metrics import share_interval

UNFAMILIAR_QUANTILE = 0.95  # at most 5% of held-out slices like the training data are called unfamiliar
# Largest entry of a precision matrix that float16 storage is given: below its largest value (65504).
FLOAT16_STORABLE = 2.0**15
CROSS_FIT_REPEATS = 5  # random halvings of the held-out fold that cross_fitted_scores averages over


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising the negative log-likelihood of held-out logits (LBFGS on its logarithm)."""
    logits, labels = logits.detach().float(), labels.long()
    log_temperature = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by each bin's share of slices."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return float(
        sum(
            np.mean(which == b) * abs(correct[which == b].mean() - confidence[which == b].mean())
            for b in range(bins)
            if np.any(which == b)
        )
    )


def fit_familiarity(features: np.ndarray, labels: np.ndarray, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (num_labels, features) and the Ledoit-Wolf precision of the class-centred features."""
    means = np.stack([features[labels == label].mean(axis=0) for label in range(num_labels)])
    precision = LedoitWolf(assume_centered=True).fit(features - means[labels]).precision_
    return torch.from_numpy(means).float(), torch.from_numpy(precision).float()


def storable_precision(precision: torch.Tensor) -> torch.Tensor:
    """The precision matrix divided by a power of two until float16, the release's storage, holds it.

    A barely trained model's features vary little, so their precision can exceed float16's range (inf, then a NaN
    threshold). Unfamiliarity is a ratio of distances (a slice's over the threshold, set from held-out slices'
    distances under the same matrix), so the scale cancels out; a power of two changes no stored digit.
    """
    largest = float(precision.abs().max())
    if largest <= FLOAT16_STORABLE:
        return precision
    return precision / 2.0 ** math.ceil(math.log2(largest / FLOAT16_STORABLE))


def unfamiliar_threshold(held_out_distances: np.ndarray, quantile: float = UNFAMILIAR_QUANTILE) -> float:
    """The distance above which a slice counts as unfamiliar: the held-out distances' `quantile`."""
    return float(np.quantile(held_out_distances, quantile))


def notumor_offset(logits: torch.Tensor, labels: np.ndarray, notumor: int, false_alarms: float) -> float:
    """The smallest offset to the notumor logit after which at most `false_alarms` of the held-out healthy slices
    (labels == notumor) are called a tumor (a tumor class has the top logit); negative where the model already
    calls fewer, so that it then finds more tumors."""
    healthy = logits[torch.from_numpy(labels == notumor)].float()
    if len(healthy) == 0:
        raise ValueError("no healthy slices to set the operating point on")
    tumor = torch.cat([healthy[:, :notumor], healthy[:, notumor + 1 :]], dim=1).max(dim=1).values
    margins = np.sort((tumor - healthy[:, notumor]).numpy())[::-1]  # a slice is a false alarm while margin > offset
    allowed = int(np.floor(false_alarms * len(margins)))  # false_alarms < 1: at least one healthy slice stays healthy
    # Just above the first margin that must not raise an alarm, clear of float rounding (a tie goes to the tumor).
    return float(margins[allowed]) + 1e-3


def cross_fit_halves(labels: np.ndarray, groups: np.ndarray, seed: int):
    """The two (fit, scored) index pairs of one cross-fitting: halves stratified by class with near-duplicate
    `groups` kept whole, drawn by `seed`."""
    from sklearn.model_selection import StratifiedGroupKFold

    halves = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
    return halves.split(np.zeros(len(labels)), labels, groups)


def cross_fitted_calls(
    logits: torch.Tensor, labels: np.ndarray, groups: np.ndarray, notumor: int, false_alarms: float, seed: int
) -> np.ndarray:
    """Each slice's top class at the operating point (`notumor_offset` with `false_alarms`) fitted on the other half
    of the slices (`cross_fit_halves`, as cross_fitted_scores splits them)."""
    calls = np.zeros(len(labels), int)
    for fit, scored in cross_fit_halves(labels, groups, seed):
        shifted = logits[scored].clone()
        shifted[:, notumor] += notumor_offset(logits[fit], labels[fit], notumor, false_alarms)
        calls[scored] = shifted.argmax(dim=1).numpy()
    return calls


def cross_fitted_scores(
    logits: torch.Tensor,
    distances: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    notumor: int | None = None,
    false_alarms: float | None = None,
    repeats: int = CROSS_FIT_REPEATS,
) -> dict[str, dict[str, float]]:
    """Scores of the fitted outputs on held-out slices they were not fitted on: {metric: {"mean", "std"}}.

    The held-out slices' logits (as trained) and familiarity distances are split into two halves, stratified by
    class with near-duplicate `groups` kept whole; the operating point (with `false_alarms`), the temperature and
    the unfamiliarity threshold are fitted on one half and score the other, then the other way round, so that
    every slice is scored once by outputs fitted without it. Mean and std over `repeats` random halvings of:
    accuracy, log-loss, calibration error, the share called unfamiliar and, with `notumor`, the shares of healthy
    slices called a tumor and of tumor slices called notumor. The accuracy also has a 95% `interval` over the
    slices' near-duplicate groups (metrics.share_interval; each slice counts its share of right calls over the
    repeats): what other patients could score, where the std shows only what the fitting varies.
    """
    logits, labels = logits.detach().float(), np.asarray(labels)
    runs, right = [], np.zeros(len(labels))
    for seed in range(repeats):
        probs, unfamiliar = np.zeros(tuple(logits.shape), np.float32), np.zeros(len(labels), bool)
        for fit, scored in cross_fit_halves(labels, groups, seed):
            shifted = logits.clone()
            if false_alarms is not None:
                if not (labels[fit] == notumor).any():
                    raise ValueError(
                        "cross-fitting the operating point needs healthy slices in both halves; those here are "
                        f"{int(np.sum(labels == notumor))} slice(s) of too few near-duplicate groups to split"
                    )
                shifted[:, notumor] += notumor_offset(logits[fit], labels[fit], notumor, false_alarms)
            temperature = fit_temperature(shifted[fit], torch.from_numpy(labels[fit]))
            probs[scored] = torch.softmax(shifted[scored] / temperature, dim=1).numpy()
            unfamiliar[scored] = distances[scored] > unfamiliar_threshold(distances[fit])
        called = probs.argmax(axis=1)
        right += (called == labels) / repeats
        scores = {
            "accuracy": float(np.mean(called == labels)),
            "log_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)))),
            "calibration_error": expected_calibration_error(probs, labels),
            "unfamiliar": float(np.mean(unfamiliar)),
        }
        if notumor is not None:
            healthy = labels == notumor
            scores["healthy_called_tumor"] = float(np.mean(called[healthy] != notumor))
            scores["tumors_called_notumor"] = float(np.mean(called[~healthy] == notumor))
        runs.append(scores)
    over_runs = {
        key: {"mean": float(np.mean([run[key] for run in runs])), "std": float(np.std([run[key] for run in runs]))}
        for key in runs[0]
    }
    over_runs["accuracy"]["interval"] = share_interval(right, groups)
    return over_runs
