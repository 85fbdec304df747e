"""The worklist's plain rules (core.review.worklist): what is kept of an upload, statuses, what comes next."""

from __future__ import annotations

import numpy as np

from core.pipeline import ScanResult
from core.review.worklist import (
    THUMBNAIL_SIDE,
    ReviewItem,
    first_unreviewed,
    item_from_result,
    next_unreviewed,
    status_counts,
    status_of,
    thumbnail,
)
from core.scans.scan import Scan


def item(sha256: str, status: str = "ok") -> ReviewItem:
    label = "glioma" if status == "ok" else None
    probabilities = {"glioma": 0.7, "meningioma": 0.1, "pituitary": 0.1, "no_tumor": 0.1} if label else {}
    return ReviewItem(sha256, f"{sha256}.png", status, "", label, probabilities, "1.0", None, None)


def test_a_kept_item_has_a_small_thumbnail_and_the_model_input_but_never_more():
    picture = np.random.default_rng(0).integers(0, 256, (1200, 800), dtype=np.uint8)
    result = ScanResult("big.png", "ab" * 32, "ok", "", "glioma", {"glioma": 0.9, "meningioma": 0.05,
                        "pituitary": 0.03, "no_tumor": 0.02}, scan=Scan(picture, "PNG"))
    kept = item_from_result(result, "1.2.0", 64)
    assert max(kept.thumbnail.shape) == THUMBNAIL_SIDE and kept.thumbnail.shape[0] > kept.thumbnail.shape[1]
    assert kept.tensor.shape == (64, 64, 1) and kept.tensor.dtype == np.float32
    assert kept.model_version == "1.2.0" and kept.confidence == 0.9 and kept.widget_key == "ab" * 8


def test_a_rejected_upload_keeps_its_picture_but_no_model_input():
    picture = np.zeros((100, 100), np.uint8)
    result = ScanResult("photo.png", "cd" * 32, "rejected", "not recognised", None, {}, scan=Scan(picture, "PNG"))
    kept = item_from_result(result, "1.2.0", 64)
    assert kept.tensor is None and kept.thumbnail.shape == (100, 100) and kept.confidence == 0.0
    unreadable = item_from_result(ScanResult("gone.png", "", "rejected", "could not be read"), "1.2.0", 64)
    assert unreadable.thumbnail is None and unreadable.tensor is None


def test_small_pictures_are_never_enlarged():
    picture = np.zeros((40, 60), np.uint8)
    assert thumbnail(picture) is picture


def test_status_comes_from_the_history_unless_the_scan_was_refused():
    states = {"a": {"status": "reviewed"}, "b": {"status": "flagged"}}
    assert status_of(item("a"), states) == "reviewed"
    assert status_of(item("b"), states) == "flagged"
    assert status_of(item("c"), states) == "new"
    assert status_of(item("a", status="rejected"), states) == "rejected"


def test_counts_cover_every_status():
    assert status_counts({"a": "new", "b": "new", "c": "rejected", "d": "unavailable"}) == {
        "new": 2, "reviewed": 0, "flagged": 0, "adjudicated": 0, "rejected": 1, "unavailable": 1}


def test_next_unreviewed_moves_forward_and_wraps_round():
    order = ["a", "b", "c", "d"]
    statuses = {"a": "new", "b": "reviewed", "c": "rejected", "d": "new"}
    assert first_unreviewed(order, statuses) == "a"
    assert next_unreviewed(order, statuses, "a") == "d"
    assert next_unreviewed(order, statuses, "d") == "a"
    assert next_unreviewed(order, statuses, None) == "a"
    assert next_unreviewed(order, {**statuses, "a": "reviewed"}, "d") == "d"  # the current one is the last left
    done = {name: "reviewed" for name in order}
    assert first_unreviewed(order, done) is None and next_unreviewed(order, done, "b") is None


def test_a_prediction_keeps_the_scanner_and_gate_score_for_monitoring_and_nothing_of_the_patient():
    from core.review.worklist import PICTURE_UPLOAD, UNNAMED_SCANNER, monitoring_detail
    from core.scans.intake import load_scan
    from tests.test_dicom import identifying_dicom

    scan = load_scan(identifying_dicom(Manufacturer="SIEMENS ", ManufacturerModelName="Skyra"), "scan.dcm")
    result = ScanResult("scan.dcm", "ef" * 32, "ok", "", "glioma", {"glioma": 1.0}, scan=scan,
                        not_mri_score=-8.123456)
    assert monitoring_detail(result) == {"scanner": "SIEMENS Skyra", "gate_score": -8.123}
    assert item_from_result(result, "2.1.0", 64).detail == monitoring_detail(result)
    unnamed = ScanResult("scan.dcm", "ef" * 32, "rejected", "not MRI", None, {}, scan=load_scan(
        identifying_dicom(), "scan.dcm"), not_mri_score=float("nan"))
    assert monitoring_detail(unnamed) == {"scanner": UNNAMED_SCANNER}
    picture = ScanResult("p.png", "ab" * 32, "ok", "", "glioma", {"glioma": 1.0}, scan=Scan(np.zeros((99, 99),
                         np.uint8), "PNG"))
    assert monitoring_detail(picture) == {"scanner": PICTURE_UPLOAD}
    assert monitoring_detail(ScanResult("bad.png", "", "rejected", "damaged")) == {}
