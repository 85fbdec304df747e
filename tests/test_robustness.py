"""The robustness report: each perturbation does what it says, and the clean figure is evaluate's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.training import robustness
from core.training.evaluate import evaluate_files, files_for
from tests.synthetic import synthetic_slice, write_class_folders


@pytest.fixture
def image() -> np.ndarray:
    return synthetic_slice(3, 120)


def test_gamma_maps_grey_levels_through_the_curve_and_keeps_black_and_white(image):
    brighter = robustness.gamma(0.6)(image, np.random.default_rng(0))
    assert brighter.dtype == np.uint8 and brighter.shape == image.shape
    assert (brighter >= image).all() and (brighter > image).any()
    levels = np.array([[0, 64, 255]], np.uint8)
    np.testing.assert_array_equal(robustness.gamma(2.0)(levels, None), [[0, 16, 255]])


def test_resolution_loses_detail_but_keeps_the_size_and_leaves_small_images_alone(image):
    coarse = robustness.resolution(30)(image, np.random.default_rng(0))
    assert coarse.shape == image.shape and coarse.dtype == np.uint8
    assert np.abs(np.diff(coarse.astype(int), axis=1)).mean() < np.abs(np.diff(image.astype(int), axis=1)).mean()
    assert robustness.resolution(500)(image, None) is image


def test_noise_is_reproducible_from_the_seed_and_the_other_perturbations_keep_a_greyscale_image(image):
    first = robustness.noise(8.0)(image, np.random.default_rng(5))
    again = robustness.noise(8.0)(image, np.random.default_rng(5))
    np.testing.assert_array_equal(first, again)
    assert 4 < np.abs(first.astype(int) - image).mean() < 10
    for name, perturb in robustness.PERTURBATIONS.items():
        changed = perturb(image, np.random.default_rng(0))
        assert changed.ndim == 2 and changed.dtype == np.uint8, name
    assert robustness.enlarged(2.5)(image, None).shape == (300, 300)


def test_the_clean_figure_is_evaluates_and_an_identity_perturbation_changes_nothing(tiny_classifier, tmp_path,
                                                                                   monkeypatch):
    files = files_for([write_class_folders(tmp_path / "data", per_class=4, size=80)])
    (tmp_path / "data" / "glioma" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files = files_for([tmp_path / "data"])
    monkeypatch.setattr(robustness, "PERTURBATIONS", {"identity": lambda image, rng: image,
                                                      "black": lambda image, rng: np.zeros_like(image)})
    report = robustness.robustness_report(tiny_classifier, files)

    assert report["n"] == 16 and [item["file"] for item in report["rejected"]] == [str(tmp_path / "data" / "glioma" / "broken.png")]
    evaluated = evaluate_files(tiny_classifier, files)
    assert report["clean"]["accuracy"] == pytest.approx(evaluated["accuracy"])
    assert report["clean"]["macro_f1"] == pytest.approx(evaluated["macro_f1"])
    assert report["perturbations"]["identity"] == report["clean"]
    # A blank slice gives the same answer for every file: the accuracy of one class, a quarter here.
    assert report["perturbations"]["black"]["accuracy"] == pytest.approx(0.25)
    assert report["mean_perturbed_accuracy"] == pytest.approx(
        np.mean([report["clean"]["accuracy"], 0.25]))
    assert "identity" in robustness.format_robustness(report)


def test_the_command_prints_the_table_and_writes_the_json(tiny_model_path, tmp_path, capsys):
    from core.cli import main

    write_class_folders(tmp_path / "data", per_class=2, size=80)
    out = tmp_path / "robustness.json"
    assert main(["robustness", "--data", str(tmp_path / "data"), "--model", str(tiny_model_path),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 8 and set(report["perturbations"]) == set(robustness.PERTURBATIONS)
    assert "mean accuracy over the perturbations" in capsys.readouterr().out
