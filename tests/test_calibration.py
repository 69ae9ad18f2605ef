"""Calibrated probabilities and the unfamiliar-image detector: the fitting (brain_resnet.calibration) and what the
model carries and returns (modeling)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification

from brain_resnet.calibration import (
    CROSS_FIT_REPEATS,
    cross_fitted_calls,
    cross_fitted_scores,
    expected_calibration_error,
    fit_familiarity,
    fit_temperature,
    notumor_offset,
    storable_precision,
    unfamiliar_threshold,
)
from brain_resnet.metrics import share_interval
from modeling import BrainResNetConfig, BrainResNetForImageClassification


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 4, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator)[:, 0]

    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.05)


def test_notumor_offset_sets_the_share_of_healthy_slices_called_a_tumor():
    generator = torch.Generator().manual_seed(0)
    logits, labels, notumor = torch.randn(400, 4, generator=generator), np.arange(400) % 4, 2
    logits[labels == notumor, notumor] -= 1.0  # a model that calls many healthy slices a tumor

    def false_alarms(offset: float) -> int:
        shifted = logits.clone()
        shifted[:, notumor] += offset
        return int((shifted[labels == notumor].argmax(dim=1) != notumor).sum())

    assert false_alarms(0.0) > 50  # of 100 healthy slices
    for share in (0.01, 0.015, 0.05, 0.2):  # 1.5 of 100: at most 1, never rounded up to 2
        offset = notumor_offset(logits, labels, notumor, share)
        assert offset > 0 and false_alarms(offset) <= share * 100
        assert false_alarms(offset - 0.002) > share * 100  # the smallest such offset: no sensitivity given away
    logits[labels == notumor, notumor] += 5.0  # a model that calls almost none: the offset lets it find more tumors
    assert notumor_offset(logits, labels, notumor, 0.2) < 0


def test_cross_fitted_scores_score_each_half_with_what_the_other_half_fitted():
    generator = torch.Generator().manual_seed(0)
    labels, notumor = np.arange(2000) % 4, 2
    logits = torch.randn(2000, 4, generator=generator) * 3
    logits[np.arange(2000), labels] += 2.0  # a fair classifier
    distances = np.random.default_rng(0).exponential(size=2000)
    groups = np.arange(2000) // 2  # pairs of near-duplicates

    plain = cross_fitted_scores(logits, distances, labels, groups, notumor)
    # The temperature never changes the top class; each half's threshold flags about 5% of the other half.
    assert plain["accuracy"]["mean"] == pytest.approx(float(np.mean(logits.argmax(dim=1).numpy() == labels)))
    # Refitting on other halves never moves the top class here (std 0), yet 1,000 pairs of slices leave the
    # accuracy uncertain by about ±2 points: the interval says so.
    low, high = plain["accuracy"]["interval"]
    assert low < plain["accuracy"]["mean"] < high and 0.03 < high - low < 0.06 and plain["accuracy"]["std"] < 1e-9
    assert plain["unfamiliar"]["mean"] == pytest.approx(0.05, abs=0.01)
    assert plain["healthy_called_tumor"]["mean"] > 0.1
    shifted = cross_fitted_scores(logits, distances, labels, groups, notumor, false_alarms=0.03)
    calls = [cross_fitted_calls(logits, labels, groups, notumor, 0.03, seed) for seed in range(CROSS_FIT_REPEATS)]
    # the same halves and operating points as the scores': the top class never depends on the temperature
    assert np.mean([np.mean(c == labels) for c in calls]) == pytest.approx(shifted["accuracy"]["mean"])
    assert shifted["healthy_called_tumor"]["mean"] == pytest.approx(0.03, abs=0.015)  # out of sample: near, not <=
    assert shifted["tumors_called_notumor"]["mean"] > plain["tumors_called_notumor"]["mean"]

    groups[labels == notumor] = -1  # one patient's healthy slices: one half has none to set the operating point on
    with pytest.raises(ValueError, match="needs healthy slices in both halves"):
        cross_fitted_scores(logits, distances, labels, groups, notumor, false_alarms=0.03)
    with pytest.raises(ValueError, match="no healthy slices"):
        notumor_offset(logits[labels != notumor], labels[labels != notumor], notumor, 0.03)


def test_cross_fitted_scores_fit_nothing_on_the_slices_they_score():
    """40 patients of 10 near-duplicate slices each: a temperature fitted on a half's own slices would score them
    better than one temperature fitted on every slice can; fitted on the other half, it scores them worse. The
    accuracy's interval counts each patient once: 40 cases say far less than 400 independent slices would."""
    generator = torch.Generator().manual_seed(0)
    cases, per_case = 40, 10
    labels, groups = np.repeat(np.arange(cases) % 4, per_case), np.repeat(np.arange(cases), per_case)
    case_logits = torch.randn(cases, 4, generator=generator) * 3
    case_logits[np.arange(cases), np.arange(cases) % 4] += 2.0
    logits = case_logits.repeat_interleave(per_case, dim=0)  # a patient's slices look alike to the model
    distances = np.random.default_rng(0).exponential(size=len(labels))

    crossed = cross_fitted_scores(logits, distances, labels, groups)

    in_sample = F.cross_entropy(logits / fit_temperature(logits, torch.from_numpy(labels)), torch.from_numpy(labels))
    assert crossed["log_loss"]["mean"] > float(in_sample)
    hits = logits.argmax(dim=1).numpy() == labels  # no operating point: refitting never moves the top class
    assert crossed["accuracy"]["interval"] == share_interval(hits, groups)
    low, high = crossed["accuracy"]["interval"]
    as_if_independent = share_interval(hits, np.arange(len(labels)))
    assert high - low > 2 * (as_if_independent[1] - as_if_independent[0])


def test_cross_fitted_unfamiliar_share_uses_the_other_halfs_threshold():
    """Four slices, one of each class in each half: only the fold's largest distance lies above the other half's
    95th percentile, however they are halved (a half's own threshold would flag its own largest: two of four)."""
    labels, groups = np.array([0, 0, 1, 1]), np.arange(4)
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.0], [0.0, 1.5], [1.0, 0.0]])

    crossed = cross_fitted_scores(logits, np.array([1.0, 2.0, 3.0, 4.0]), labels, groups)

    assert crossed["unfamiliar"]["mean"] == pytest.approx(0.25)


def test_cross_fitted_log_loss_and_calibration_error_are_those_of_the_fitted_temperature():
    """Labels drawn at temperature 2.5: each half's fitted temperature makes the other half's probabilities honest,
    so the cross-fitted log-loss is that of the true temperature and the calibration error is small."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 4, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator)[:, 0].numpy()
    scores = cross_fitted_scores(logits, np.zeros(4000), labels, np.arange(4000) // 2, repeats=2)

    true_log_loss = float(F.cross_entropy(logits / 2.5, torch.from_numpy(labels)))
    assert scores["log_loss"]["mean"] == pytest.approx(true_log_loss, abs=0.02)
    assert scores["calibration_error"]["mean"] < 0.03


def test_cross_fitted_probabilities_are_those_of_the_shifted_logits_a_release_outputs():
    """A release divides its logits by the temperature after the operating point has shifted them, so the
    temperature is fitted on the shifted logits: a model that only differs by a constant bias against notumor (which
    the operating point undoes) then scores the same log-loss and calibration error."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 4, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator)[:, 0].numpy()
    notumor, groups = 2, np.arange(4000) // 2
    biased = logits.clone()
    biased[:, notumor] -= 6.0

    fair = cross_fitted_scores(logits, np.zeros(4000), labels, groups, notumor, false_alarms=0.05, repeats=2)
    shifted = cross_fitted_scores(biased, np.zeros(4000), labels, groups, notumor, false_alarms=0.05, repeats=2)

    for name in ("log_loss", "calibration_error", "accuracy"):
        assert shifted[name]["mean"] == pytest.approx(fair[name]["mean"], abs=2e-3), name


def test_cross_fitted_shares_of_wrong_calls_count_healthy_and_tumor_slices_apart():
    """Without an operating point the calls are the logits' top classes (no temperature moves them): the shares of
    healthy slices called a tumor and of tumor slices called notumor are theirs."""
    generator = torch.Generator().manual_seed(1)
    labels, notumor = np.arange(400) % 4, 2
    logits = torch.randn(400, 4, generator=generator)
    logits[np.arange(400), labels] += 1.0
    calls = logits.argmax(dim=1).numpy()
    scores = cross_fitted_scores(logits, np.zeros(400), labels, np.arange(400), notumor, repeats=2)

    healthy = labels == notumor
    assert scores["healthy_called_tumor"]["mean"] == pytest.approx(np.mean(calls[healthy] != notumor))
    assert scores["tumors_called_notumor"]["mean"] == pytest.approx(np.mean(calls[~healthy] == notumor))


def test_a_precision_beyond_float16_is_scaled_so_that_the_release_stores_it_and_unfamiliarity_is_unchanged():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 8, generator=generator) * 1e-3  # a barely trained model: features that vary little
    precision = torch.linalg.inv(torch.cov(features.T))
    assert not torch.isfinite(precision.half()).all()  # as it was, float16 storage turned it into inf

    stored = storable_precision(precision)
    assert torch.isfinite(stored.half()).all()
    assert math.log2(float(precision[0, 0] / stored[0, 0])).is_integer()  # a power of two: no digit lost

    def unfamiliarity(matrix: torch.Tensor) -> torch.Tensor:
        distances = ((features @ matrix) * features).sum(dim=1)
        return distances / torch.quantile(distances, 0.95)

    assert torch.allclose(unfamiliarity(stored.half().float()), unfamiliarity(precision), rtol=1e-2)
    small = torch.eye(8) * 3
    assert storable_precision(small) is small  # what float16 holds is left as it is


@pytest.mark.parametrize("largest", [2.0**15 + 1, 65_000.0, 262_140.0, 1e12])
def test_a_precision_of_any_size_is_scaled_into_float16s_range(largest):
    precision = torch.diag(torch.tensor([largest, 1.0, 0.5]))
    stored = storable_precision(precision)
    assert stored.abs().max() <= torch.finfo(torch.float16).max and torch.isfinite(stored.half()).all()
    assert math.log2(float(precision[0, 0] / stored[0, 0])).is_integer()  # a power of two: no digit lost


def test_calibration_error_of_known_cases():
    overconfident = np.tile([0.9, 0.05, 0.05], (100, 1))  # says 90%, right half the time
    labels = np.array([0, 1] * 50)
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.4)
    assert expected_calibration_error(overconfident, np.zeros(100, dtype=int)) == pytest.approx(0.1)
    honest = np.tile([0.5, 0.5, 0.0], (100, 1))  # says 50% (argmax class 0), right half the time
    assert expected_calibration_error(honest, labels) == pytest.approx(0.0)


def test_familiarity_fit_gives_class_means_and_the_shared_precision():
    rng = np.random.default_rng(0)
    covariance = np.array([[2.0, 0.5], [0.5, 1.0]])
    labels = np.repeat([0, 1, 2], 3000)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    features = centres[labels] + rng.multivariate_normal([0, 0], covariance, size=len(labels))

    means, precision = fit_familiarity(features, labels, num_labels=3)

    assert means.numpy() == pytest.approx(centres, abs=0.1)
    assert precision.numpy() == pytest.approx(np.linalg.inv(covariance), abs=0.05)
    assert unfamiliar_threshold(np.arange(101.0)) == pytest.approx(95.0)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A random model made honest: temperature 2, class means and precision of 512 features, threshold 50."""
    torch.manual_seed(0)
    model = BrainResNetForImageClassification(BrainResNetConfig()).eval()
    means, precision = torch.randn(4, 512), torch.eye(512) * 0.5
    model.set_familiarity(means, precision, threshold=50.0)
    model.config.calibration_temperature = 2.0
    folder = tmp_path_factory.mktemp("calibrated")
    model.save_pretrained(folder)
    return model, folder


def test_model_divides_logits_by_its_temperature_and_scores_unfamiliarity(calibrated):
    model, _ = calibrated
    pixel_values = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        outputs = model(pixel_values)
        pooled = model.brain_resnet(pixel_values).pooler_output.flatten(1)
        raw_logits = model.classifier(pooled)

    assert torch.allclose(outputs.logits, raw_logits / 2.0, atol=1e-5)
    nearest = torch.stack([((pooled - mean) ** 2).sum(dim=1) * 0.5 for mean in model.familiarity_means]).amin(dim=0)
    assert torch.allclose(outputs.unfamiliarity, nearest / 50.0, rtol=1e-4)


def test_calibration_and_detector_travel_with_the_saved_model(calibrated):
    model, folder = calibrated
    loaded = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    pixel_values = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected, got = model(pixel_values), loaded(pixel_values)

    assert loaded.config.calibration_temperature == 2.0 and loaded.config.familiarity_threshold == 50.0
    assert torch.allclose(got.logits, expected.logits, atol=1e-5)
    assert torch.allclose(got.unfamiliarity, expected.unfamiliarity, rtol=1e-4)


def test_a_model_without_detector_returns_no_unfamiliarity_and_bad_settings_are_refused():
    model = BrainResNetForImageClassification(BrainResNetConfig()).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 1, 64, 64))

    assert outputs.unfamiliarity is None and not hasattr(model, "familiarity_means")
    with pytest.raises(ValueError, match="calibration_temperature must be positive"):
        BrainResNetConfig(calibration_temperature=0)
    for threshold in (-1.0, 0.0):  # unfamiliarity divides by it: 0 would make every slice infinitely unfamiliar
        with pytest.raises(ValueError, match="familiarity_threshold must be positive"):
            BrainResNetConfig(familiarity_threshold=threshold)


def test_the_loss_is_the_log_loss_of_the_calibrated_logits(calibrated):
    """With labels (Trainer.evaluate), the logits are the calibrated ones and the loss is their cross-entropy."""
    model, _ = calibrated
    pixel_values, labels = torch.randn(3, 1, 64, 64), torch.tensor([0, 2, 3])
    with torch.no_grad():
        plain, labelled = model(pixel_values), model(pixel_values, labels=labels)

    torch.testing.assert_close(labelled.logits, plain.logits)
    torch.testing.assert_close(labelled.loss, F.cross_entropy(plain.logits, labels))
