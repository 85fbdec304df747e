"""The not-a-brain-MRI gate: cheap checks, the Mahalanobis gate, the non-MRI set and its evaluation."""

from __future__ import annotations

import copy
import json
import shutil

import cv2
import numpy as np
import pytest

from core.model.gate import MahalanobisGate, fit_gate
from core.pipeline import NOT_MRI_MESSAGE, analyse_bytes, screen
from core.scans.intake import load_scan
from core.scans.scan import Scan
from core.scans.statistics import image_statistics
from core.training.gate_evaluation import evaluate_gate, outcome_stage
from core.training.nonmri import build_nonmri_set, category_of, is_hard_category
from tests.synthetic import encode, synthetic_slice, write_class_folders


def grey_scan(image: np.ndarray, colourfulness: float = 0.0) -> Scan:
    return Scan(image=image, source_format="PNG", colourfulness=colourfulness)


# ---------------------------------------------------------------- the Mahalanobis gate


def test_distance_is_to_the_nearest_class_mean():
    gate = MahalanobisGate(means=np.array([[0.0, 0.0], [10.0, 0.0]]), precision=np.diag([1.0, 4.0]), threshold=5.0)
    distances = gate.distances(np.array([[1.0, 0.0], [9.0, 1.0], [5.0, 0.0]]))
    assert np.allclose(distances, [1.0, 1.0 + 4.0, 25.0])
    assert gate.is_in_distribution(np.array([[1.0, 0.0], [9.0, 1.0], [5.0, 0.0]])).tolist() == [True, True, False]


def test_fit_gate_sets_the_threshold_from_validation_distances_only():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 200)
    centres = rng.normal(0, 5, (4, 6))
    train = centres[labels] + rng.normal(0, 1, (800, 6))
    validation = centres[np.repeat([0, 1, 2, 3], 50)] + rng.normal(0, 1, (200, 6))
    gate = fit_gate(train, labels, validation, class_count=4, pass_percentile=90.0)
    assert np.allclose(gate.means, centres, atol=0.3)
    assert abs(gate.is_in_distribution(validation).mean() - 0.90) < 0.01
    far = centres[0] + 12.0  # far from every class
    assert not gate.is_in_distribution(far[np.newaxis])[0]


def test_gate_survives_a_save_and_load(tmp_path):
    gate = MahalanobisGate(np.arange(8.0).reshape(2, 4), np.eye(4) * 2.0, threshold=3.5)
    gate.save(tmp_path / "gate.npz")
    loaded = MahalanobisGate.load(tmp_path / "gate.npz")
    assert np.array_equal(loaded.means, gate.means) and np.array_equal(loaded.precision, gate.precision)
    assert loaded.threshold == 3.5


def test_gate_rejects_features_unlike_its_means(tiny_classifier):
    """A hand-made gate around one scan's features passes that scan and flags another."""
    from core.scans.preprocess import prepare_image

    inside, outside = synthetic_slice(1, 96), synthetic_slice(2, 96, lesion_class=3)
    tensors = np.stack([prepare_image(image, tiny_classifier.image_size) for image in (inside, outside)])
    features = tiny_classifier.predict_tensors(tensors).features.astype(np.float64)
    gap = float(np.sum((features[1] - features[0]) ** 2))
    assert gap > 0
    gated = copy.copy(tiny_classifier)
    gated.gate = MahalanobisGate(np.repeat(features[:1], 4, axis=0), np.eye(features.shape[1]), threshold=gap / 2)
    passed = analyse_bytes(gated, encode(inside), "inside.png")
    flagged = analyse_bytes(gated, encode(outside), "outside.png")
    assert passed.status == "ok" and passed.label is not None
    assert flagged.status == "rejected" and flagged.label is None
    assert flagged.message.startswith(NOT_MRI_MESSAGE) and "unlike the training scans" in flagged.message
    assert flagged.ood_distance > gated.gate.threshold
    assert outcome_stage(flagged) == "gate" and outcome_stage(passed) == "passed"


def test_the_outlier_head_refuses_what_it_was_taught_is_not_mri(tiny_classifier, tmp_path):
    """A gate whose distance admits everything still refuses a scan its outlier head scores over threshold."""
    from core.scans.preprocess import prepare_image
    from core.training.outlier import fit_outlier_head

    mri, other = synthetic_slice(1, 96), synthetic_slice(2, 96, lesion_class=3)
    tensors = np.stack([prepare_image(image, tiny_classifier.image_size) for image in (mri, other)])
    features = tiny_classifier.predict_tensors(tensors).features.astype(np.float64)
    rng = np.random.default_rng(0)
    mri_cloud = features[0] + rng.normal(0, 1e-3, (40, features.shape[1]))
    other_cloud = features[1] + rng.normal(0, 1e-3, (40, features.shape[1]))
    weights, bias, threshold = fit_outlier_head(mri_cloud, other_cloud, mri_cloud[:20])
    gate = MahalanobisGate(np.repeat(features[:1], 4, axis=0), np.eye(features.shape[1]), np.inf,
                           weights, bias, threshold)
    gate.save(tmp_path / "gate.npz")
    gated = copy.copy(tiny_classifier)
    gated.gate = MahalanobisGate.load(tmp_path / "gate.npz")
    assert gated.gate.outlier_threshold == threshold and np.allclose(gated.gate.outlier_weights, weights)
    assert analyse_bytes(gated, encode(mri), "mri.png").status == "ok"
    refused = analyse_bytes(gated, encode(other), "other.png")
    assert refused.status == "rejected" and outcome_stage(refused) == "gate"
    # A gate without an outlier head (every earlier model's) scores nothing as an outlier.
    assert np.all(MahalanobisGate(features, np.eye(features.shape[1]), np.inf).outlier_scores(features) == -np.inf)


def test_real_non_mri_folders_are_counted_per_category_and_other_planes_as_passes(tiny_classifier, tmp_path):
    from core.training.gate_evaluation import non_mri_folder_items

    for category, images in {"head_ct": [synthetic_slice(3, 96)], "xray": [np.zeros((64, 64), np.uint8)],
                             "brain_mri_other_plane": [synthetic_slice(4, 96), synthetic_slice(5, 96)]}.items():
        (tmp_path / category).mkdir()
        for index, image in enumerate(images):
            (tmp_path / category / f"{index}.png").write_bytes(encode(image))
    items = non_mri_folder_items(tmp_path)
    assert [name for name, _ in items][0] == "brain_mri_other_plane/0.png"
    report = evaluate_gate(tiny_classifier, [("a.png", lambda: encode(synthetic_slice(1, 96)))], [], items)
    real = report["real_non_mri"]
    assert real["n"] == 2 and set(real["by_category"]) == {"head_ct", "xray"}
    assert real["by_category"]["xray"]["flagged"] == 1  # blank: the cheap checks stop it
    assert real["other_plane_mri"] == {"categories": ["brain_mri_other_plane"], "n": 2, "passed": 2,
                                       "pass_rate": 1.0}


# ---------------------------------------------------------------- cheap checks


@pytest.mark.parametrize("seed, size", [(0, 96), (1, 128), (2, 256), (3, 64), (4, 180)])
def test_head_like_slices_pass_the_cheap_checks(seed, size):
    assert screen(grey_scan(synthetic_slice(seed, size))) is None


def test_non_square_slice_within_limits_passes():
    image = np.zeros((160, 200), np.uint8)
    image[10:150, 40:160] = synthetic_slice(5, 140)[:, 10:130]
    assert screen(grey_scan(image)) is None


def test_colour_photo_is_flagged():
    assert "in colour" in screen(grey_scan(synthetic_slice(1, 96), colourfulness=25.0))


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_image_is_flagged(level):
    assert "blank" in screen(grey_scan(np.full((96, 96), level, np.uint8)))


def test_wide_image_is_flagged():
    image = np.zeros((100, 200), np.uint8)
    image[10:90, 60:140] = synthetic_slice(2, 80)
    assert "longer than wide" in screen(grey_scan(image))


def test_document_with_white_background_is_flagged():
    page = np.full((300, 240), 245, np.uint8)
    for line in range(10):
        cv2.putText(page, "Total 42.7 mg", (10, 25 + line * 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 20, 1)
    assert "no dark background" in screen(grey_scan(page))


def test_noise_is_flagged():
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    assert screen(grey_scan(noise)).startswith(NOT_MRI_MESSAGE)


def test_text_on_black_is_flagged_as_scattered():
    image = np.zeros((200, 200), np.uint8)
    for line in range(5):
        cv2.putText(image, "A B C D", (10, 35 + line * 35), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 255, 2)
    assert "scattered" in screen(grey_scan(image))


def test_cross_shaped_subject_is_flagged_as_not_head_shaped():
    cross = np.zeros((160, 160), np.uint8)
    cv2.rectangle(cross, (65, 10), (95, 150), 150, -1)
    cv2.rectangle(cross, (10, 65), (150, 95), 150, -1)
    assert "not head-shaped" in screen(grey_scan(cross))


def test_head_outline_with_wildly_varying_brightness_is_flagged():
    # Mostly dim with rare very bright points inside one oval, as a star field or a speckle pattern.
    rng = np.random.default_rng(0)
    image, oval = np.zeros((160, 160), np.uint8), np.zeros((160, 160), np.uint8)
    cv2.ellipse(oval, (80, 80), (60, 70), 0, 0, 360, 1, -1)
    image[oval == 1] = np.clip(rng.lognormal(3.6, 1.1, image.shape), 0, 255).astype(np.uint8)[oval == 1]
    assert "varies far more than brain tissue" in screen(grey_scan(image))


def test_image_statistics_measure_what_they_say():
    head = image_statistics(synthetic_slice(1, 128))
    assert head.border_brightness < 0.05 and head.largest_share == 1.0 and 0.2 < head.dark_fraction < 0.8
    assert head.solidity > 0.95 and abs(head.extent - np.pi / 4) < 0.05 and head.inner_variation < 0.7
    square = np.zeros((100, 100), np.uint8)
    square[20:80, 20:80] = 180
    assert image_statistics(square).extent == pytest.approx(1.0, abs=0.05)
    # A flat square varies only at its blurred edge, far less than the noisy head.
    assert image_statistics(square).inner_variation < 0.3
    bright_border = image_statistics(np.full((100, 100), 200, np.uint8))
    assert bright_border.border_brightness == pytest.approx(1.0)
    two_blobs = np.zeros((100, 100), np.uint8)
    two_blobs[10:40, 10:40] = 200
    two_blobs[60:90, 60:90] = 200
    assert image_statistics(two_blobs).largest_share == pytest.approx(0.5, abs=0.05)
    assert image_statistics(np.zeros((50, 150), np.uint8)).aspect_ratio == 3.0


# ---------------------------------------------------------------- the non-MRI set


def test_nonmri_set_is_deterministic_per_seed_and_varies_between_seeds():
    first = build_nonmri_set(0, variants_per_photo=1, drawn_per_kind=1)
    again = build_nonmri_set(0, variants_per_photo=1, drawn_per_kind=1)
    other = build_nonmri_set(1, variants_per_photo=1, drawn_per_kind=1)
    assert [name for name, _ in first] == [name for name, _ in again]
    assert all(a == b for (_, a), (_, b) in zip(first, again))
    assert sum(a != b for (_, a), (_, b) in zip(first, other)) > len(first) // 3


def test_nonmri_set_holds_every_category_as_decodable_files():
    items = build_nonmri_set(0, variants_per_photo=1, drawn_per_kind=2)
    names = [name for name, _ in items]
    assert len(names) == len(set(names))
    categories = {category_of(name) for name in names}
    assert categories == {"photo", "drawn", "medical_lookalike", "head_phantom"}
    assert is_hard_category("medical_lookalike") and not is_hard_category("photo")
    decoded = 0
    for name, data in items:
        assert data[:3] == b"\xff\xd8\xff" or data[:4] == b"\x89PNG"
        decoded += load_scan(data, name).image.ndim == 2
    assert decoded == len(items)


# ---------------------------------------------------------------- the evaluation


def test_evaluate_gate_counts_passes_and_flags_by_stage(tiny_classifier):
    mri = [(f"slice{seed}.png", lambda seed=seed: encode(synthetic_slice(seed, 96))) for seed in range(4)]
    mri.append(("broken.png", lambda: b"not an image"))
    page = np.full((120, 120), 240, np.uint8)
    non_mri = [
        ("drawn/page.png", lambda: encode(page)),
        ("photo/slice-lookalike.png", lambda: encode(synthetic_slice(9, 96))),  # passes: the tiny gate admits all
        ("drawn/empty.png", lambda: b""),
    ]
    report = evaluate_gate(tiny_classifier, mri, non_mri)
    assert report["mri"]["n"] == 5 and report["mri"]["passed"] == 4
    assert report["mri"]["pass_rate"] == pytest.approx(0.8)
    assert report["mri"]["by_stage"] == {"passed": 4, "intake": 1}
    assert report["non_mri"]["flagged"] == 2 and report["non_mri"]["flag_rate"] == pytest.approx(2 / 3)
    assert report["non_mri"]["by_stage"] == {"screen": 1, "passed": 1, "intake": 1}
    assert report["non_mri"]["by_category"]["photo"] == {"n": 1, "flagged": 0, "flag_rate": 0.0}
    assert report["non_mri"]["passed_files"] == ["photo/slice-lookalike.png"]
    assert not report["meets_floors"]
    assert report["mri"]["statistics_percentiles"]["largest_share"]["p50"] == 1.0


def test_ood_eval_command_reports_and_records_in_the_card(tiny_model_path, tmp_path, capsys):
    from core import cli
    from core.model.card import load_card

    model_folder = tmp_path / "model"
    shutil.copytree(tiny_model_path.parent, model_folder)
    model_path = model_folder / tiny_model_path.name
    data = write_class_folders(tmp_path / "mri", per_class=2, size=96)
    out = tmp_path / "ood.json"
    code = cli.main(["ood-eval", "--data", str(data), "--split", "all", "--model", str(model_path),
                     "--seed", "0", "--json", str(out), "--write-card"])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["mri"]["n"] == 8 and report["non_mri"]["n"] > 200
    assert "MRI slices passed" in printed and "non-MRI images (synthetic set) flagged" in printed
    assert code == (0 if report["meets_floors"] else 1)
    card = load_card(model_path)  # still matches its model: the model file was not touched
    evaluation = card.data["ood"]["evaluation"]
    assert evaluation["mri_pass_rate"] == report["mri"]["pass_rate"]
    assert evaluation["non_mri_flag_rate"] == report["non_mri"]["flag_rate"]
    assert evaluation["non_mri_set"] == "core.training.nonmri.build_nonmri_set(seed=0)"
    assert evaluation["command"].startswith("python -m core") and evaluation["measured"]
    assert card.data["ood"]["threshold"] == load_card(tiny_model_path).data["ood"]["threshold"]  # the gate stays


def test_a_pseudo_head_ct_has_a_saturated_ring_around_a_flatter_brain():
    from core.scans.preprocess import prepare_image
    from core.training.outlier import pseudo_head_ct, pseudo_head_cts

    tensor = prepare_image(synthetic_slice(4, 128), 96)
    rng = np.random.default_rng(0)
    ct = pseudo_head_ct(tensor, rng)
    assert ct.shape == tensor.shape and ct.dtype == np.float32 and 0.0 <= ct.min() and ct.max() <= 1.0
    import cv2

    for _ in range(10):
        ct = pseudo_head_ct(tensor, rng)[..., 0]
        head = (ct > 0.05).astype(np.uint8)
        depth = cv2.distanceTransform(head, cv2.DIST_L2, 5)
        bright = ct >= 0.75
        assert bright.any() and depth[bright].mean() < 0.5 * depth[head.astype(bool)].mean()  # a rim, not the brain
        deep = depth > 0.2 * depth.max()
        assert np.percentile(ct[deep], 90) - np.percentile(ct[deep], 10) < 0.4  # a narrow band of grey inside
    assert pseudo_head_ct(np.zeros_like(tensor), rng) is None  # no head, no CT
    assert len(pseudo_head_cts(np.stack([tensor] * 16), every=8)) == 2
