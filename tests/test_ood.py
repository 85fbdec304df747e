"""The not-a-brain-MRI gate: model-free checks, the modality head, the distance, the non-MRI set and its evaluation."""

from __future__ import annotations

import copy
import json
import shutil

import cv2
import numpy as np
import pytest

from core.model.gate import LOOKS_LIKE, PHYSICAL_FEATURES, MahalanobisGate, ModalityHead, fit_distance
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
    verdicts = gate.assess(np.array([[1.0, 0.0], [9.0, 1.0], [5.0, 0.0]]))
    assert [verdict.passes for verdict in verdicts] == [True, True, False]
    assert all(verdict.not_mri_score is None and verdict.looks_like is None for verdict in verdicts)


def test_fit_gate_sets_the_threshold_from_validation_distances_only():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 200)
    centres = rng.normal(0, 5, (4, 6))
    train = centres[labels] + rng.normal(0, 1, (800, 6))
    validation = centres[np.repeat([0, 1, 2, 3], 50)] + rng.normal(0, 1, (200, 6))
    gate = fit_distance(train, labels, validation, class_count=4, pass_percentile=90.0)
    assert np.allclose(gate.means, centres, atol=0.3)
    assert abs(np.mean([verdict.passes for verdict in gate.assess(validation)]) - 0.90) < 0.01
    far = centres[0] + 12.0  # far from every class
    assert not gate.assess(far[np.newaxis])[0].passes


def _head(dimensions: int, threshold: float = 0.0) -> ModalityHead:
    """A head over brain MRI, head CT and photographs that reads only the first input."""
    weights = np.zeros((dimensions, 3))
    weights[0] = [0.0, 2.0, -2.0]
    return ModalityHead(("head_ct", "mri", "photo_or_dermoscopy"), weights[:, [1, 0, 2]], np.zeros(3), threshold)


def test_gate_survives_a_save_and_load(tmp_path):
    gate = MahalanobisGate(np.arange(8.0).reshape(2, 4), np.eye(4) * 2.0, threshold=3.5,
                           head=_head(4 + len(PHYSICAL_FEATURES), 0.25))
    gate.save(tmp_path / "gate.npz")
    loaded = MahalanobisGate.load(tmp_path / "gate.npz")
    assert np.array_equal(loaded.means, gate.means) and np.array_equal(loaded.precision, gate.precision)
    assert loaded.threshold == 3.5 and loaded.head.kinds == gate.head.kinds and loaded.head.threshold == 0.25
    assert np.array_equal(loaded.head.weights, gate.head.weights)


def test_a_gate_of_an_older_format_is_refused_with_the_command_that_replaces_it(tmp_path):
    from core.errors import ModelContractError

    np.savez(tmp_path / "old.npz", means=np.zeros((4, 2)), precision=np.eye(2), threshold=np.array(1.0))
    with pytest.raises(ModelContractError, match="older format.*calibrate"):
        MahalanobisGate.load(tmp_path / "old.npz")


def test_the_modality_head_scores_log_odds_and_names_what_a_picture_looks_like():
    head = _head(2, threshold=0.0)
    inputs = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 0.0]])
    log_probabilities = head.log_probabilities(inputs)
    assert np.allclose(np.exp(log_probabilities).sum(axis=1), 1.0)
    scores = head.not_mri_scores(inputs)
    probability_mri = np.exp(log_probabilities[:, head.kinds.index("mri")])
    assert np.allclose(scores, np.log((1 - probability_mri) / probability_mri))
    # Input 0 large: head CT dominates; negative: photograph; zero: a three-way tie, nothing named.
    assert head.looks_like(log_probabilities) == [LOOKS_LIKE["head_ct"], LOOKS_LIKE["photo_or_dermoscopy"], None]
    # A clear MRI slice: p(mri) within 1e-12 of 1 still gives a finite, very negative score.
    weights = np.zeros((1, 2))
    weights[0] = [0.0, 40.0]
    clear = ModalityHead(("head_ct", "mri"), weights, np.zeros(2), 0.0).not_mri_scores(np.array([[1.0]]))
    assert np.isfinite(clear[0]) and clear[0] < -30


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
    # The distance cannot say what a picture is: the message is the plain one.
    assert flagged.message == NOT_MRI_MESSAGE and flagged.looks_like is None
    assert flagged.ood_distance > gated.gate.threshold
    assert outcome_stage(flagged) == "gate" and outcome_stage(passed) == "passed"


def test_the_modality_head_refuses_what_it_learnt_is_not_mri_and_says_what_it_looks_like(tiny_classifier, tmp_path):
    """A gate whose distance admits everything still refuses a scan its head scores over threshold, naming it."""
    from core.scans.preprocess import prepare_image
    from core.training.gate_fit import standardised_fit, with_threshold

    mri, other = synthetic_slice(1, 96), synthetic_slice(2, 96, lesion_class=3)
    tensors = np.stack([prepare_image(image, tiny_classifier.image_size) for image in (mri, other)])
    features = tiny_classifier.predict_tensors(tensors).features.astype(np.float64)
    physical = np.array([_physical(image) for image in (mri, other)])
    inputs = np.hstack([features, physical])
    rng = np.random.default_rng(0)
    mri_cloud = inputs[0] + rng.normal(0, 1e-3, (40, inputs.shape[1]))
    other_cloud = inputs[1] + rng.normal(0, 1e-3, (40, inputs.shape[1]))
    head = standardised_fit(np.vstack([mri_cloud, other_cloud]), np.array(["mri"] * 40 + ["head_ct"] * 40))
    head = with_threshold(head, mri_cloud[:20], 0.99)
    gate = MahalanobisGate(np.repeat(features[:1], 4, axis=0), np.eye(features.shape[1]), np.inf, head)
    gate.save(tmp_path / "gate.npz")
    gated = copy.copy(tiny_classifier)
    gated.gate = MahalanobisGate.load(tmp_path / "gate.npz")
    passed = analyse_bytes(gated, encode(mri), "mri.png")
    assert passed.status == "ok" and passed.not_mri_score <= head.threshold
    refused = analyse_bytes(gated, encode(other), "other.png")
    assert refused.status == "rejected" and outcome_stage(refused) == "gate" and refused.label is None
    assert refused.looks_like == "a CT image"
    assert refused.message == f"{NOT_MRI_MESSAGE} (it looks like a CT image)"


def _physical(image: np.ndarray) -> np.ndarray:
    from core.model.gate import physical_inputs

    return physical_inputs(image_statistics(image), 0.0)


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


# ---------------------------------------------------------------- model-free checks


@pytest.mark.parametrize("seed, size", [(0, 96), (1, 128), (2, 256), (3, 64), (4, 180)])
def test_head_like_slices_pass_the_model_free_checks(seed, size):
    assert screen(grey_scan(synthetic_slice(seed, size))) is None


def test_colour_photo_is_flagged():
    assert "in colour" in screen(grey_scan(synthetic_slice(1, 96), colourfulness=25.0))


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_image_is_flagged(level):
    assert "blank" in screen(grey_scan(np.full((96, 96), level, np.uint8)))


def test_shape_is_left_to_the_gate():
    """The shape checks that the modality head made redundant are gone: a wide or text-like image is the gate's."""
    image = np.zeros((100, 200), np.uint8)
    image[10:90, 60:140] = synthetic_slice(2, 80)
    assert screen(grey_scan(image)) is None


def test_the_bright_rim_of_a_ct_head_and_the_dark_skull_of_an_mri_head_are_measured():
    """A CT-like head (a bone-bright ring around flat grey) against an MRI-like one (dark skull, varied brain)."""
    ct = np.zeros((200, 200), np.uint8)
    cv2.circle(ct, (100, 100), 80, 250, -1)
    cv2.circle(ct, (100, 100), 72, 110, -1)
    ct = np.clip(ct + np.random.default_rng(0).normal(0, 3, ct.shape), 0, 255).astype(np.uint8)
    mri = np.zeros((200, 200), np.uint8)
    cv2.circle(mri, (100, 100), 80, 150, -1)  # scalp
    cv2.circle(mri, (100, 100), 74, 20, -1)  # dark skull
    cv2.circle(mri, (100, 100), 70, 120, -1)
    mri = np.clip(mri + np.random.default_rng(1).normal(0, 25, mri.shape), 0, 255).astype(np.uint8)
    cv2.circle(mri, (80, 90), 15, 230, -1)  # a bright lesion inside
    ct_statistics, mri_statistics = image_statistics(ct), image_statistics(mri)
    assert ct_statistics.rim_bright_share >= 0.24 > 0.21 >= mri_statistics.rim_bright_share
    assert ct_statistics.tissue_spread < mri_statistics.tissue_spread
    assert ct_statistics.tissue_flatness > mri_statistics.tissue_flatness
    assert 0.0 <= mri_statistics.entropy <= 1.0


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
    assert report["non_mri"]["by_category"]["photo"] == {"n": 1, "flagged": 0, "flag_rate": 0.0, "named": {}}
    assert report["non_mri"]["passed_files"] == ["photo/slice-lookalike.png"]
    assert not report["meets_floors"]
    assert report["mri"]["statistics_percentiles"]["largest_share"]["p50"] == 1.0


def test_evaluate_gate_counts_listed_not_mri_files_apart(tiny_classifier):
    """A head CT filed as MRI that the manifest lists is not an MRI slice missed: it is reported by kind."""
    import hashlib

    from core.training.dataset import NotMriFile

    ct = encode(synthetic_slice(11, 96))
    listed = {hashlib.sha256(ct).hexdigest(): NotMriFile("c/notumor/ct.png", hashlib.sha256(ct).hexdigest(), "head_ct")}
    mri = [("slice.png", lambda: encode(synthetic_slice(1, 96))), ("ct.png", lambda: ct)]
    report = evaluate_gate(tiny_classifier, mri, [], not_mri=listed)
    assert report["mri"]["n"] == 1
    assert report["filed_as_mri"]["by_kind"] == {"head_ct": {"n": 1, "refused": 0}}  # the tiny gate admits all
    assert report["filed_as_mri"]["passed_files"] == ["ct.png"]


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
