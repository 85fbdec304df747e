import numpy as np
import pytest

from core.model.calibration import fit_temperature, softmax
from core.training.metrics import classification_report, expected_calibration_error

CLASSES = ("glioma", "meningioma", "pituitary", "no_tumor")


def _one_hot_probabilities(predicted):
    probabilities = np.full((len(predicted), 4), 0.0)
    probabilities[np.arange(len(predicted)), predicted] = 1.0
    return probabilities


def test_metrics_on_a_hand_made_confusion():
    # true:      g g g g m m m p p n
    # predicted: g g g m m m g p n n
    true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    predicted = np.array([0, 0, 0, 1, 1, 1, 0, 2, 3, 3])
    report = classification_report(true, _one_hot_probabilities(predicted), CLASSES)
    assert report["n"] == 10
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["confusion_matrix"] == [[3, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
    glioma = report["per_class"]["glioma"]
    assert glioma["precision"] == pytest.approx(3 / 4) and glioma["recall"] == pytest.approx(3 / 4)
    pituitary = report["per_class"]["pituitary"]
    assert pituitary["precision"] == pytest.approx(1.0) and pituitary["recall"] == pytest.approx(0.5)
    assert pituitary["f1"] == pytest.approx(2 / 3)
    no_tumor = report["per_class"]["no_tumor"]
    assert no_tumor["precision"] == pytest.approx(0.5) and no_tumor["f1"] == pytest.approx(2 / 3)
    meningioma_f1 = 2 * (2 / 3) * (2 / 3) / (4 / 3)
    assert report["macro_f1"] == pytest.approx((0.75 + meningioma_f1 + 2 / 3 + 2 / 3) / 4)
    # One-hot predictions: confidence 1, accuracy 0.7 in the single top bin.
    assert report["ece"] == pytest.approx(0.3)


def test_ece_is_zero_when_confidence_matches_accuracy():
    probabilities = np.tile([0.7, 0.1, 0.1, 0.1], (10, 1))
    true = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(probabilities, true) == pytest.approx(0.0)


def test_temperature_scaling_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 4000)
    clean_logits = rng.normal(0, 1, (4000, 4))
    clean_logits[np.arange(4000), true] += 1.5
    # Sample labels from the calibrated model, then make the model 3x overconfident.
    calibrated = softmax(clean_logits)
    labels = np.array([rng.choice(4, p=row) for row in calibrated])
    temperature = fit_temperature(clean_logits * 3.0, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(clean_logits * 3.0), labels)
    after = expected_calibration_error(softmax(clean_logits * 3.0, temperature), labels)
    assert after < before / 2
