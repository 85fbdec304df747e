"""Finding head CT filed as MRI: the audit ranks what looks like the examples first, and draws its contact sheet."""

import csv

import cv2
import numpy as np

from core.training.dataset import find_labelled_files
from core.training.modality_audit import audit, write_audit
from tests.synthetic import encode, synthetic_slice


def ct_like(seed: int, size: int = 96) -> np.ndarray:
    """A bone-bright ring around a flat grey disc, as a brain-window head CT shows."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    radius = int(size * rng.uniform(0.36, 0.44))
    cv2.circle(image, (size // 2, size // 2), radius, 250, -1)
    cv2.circle(image, (size // 2, size // 2), radius - max(3, size // 20), int(rng.integers(90, 120)), -1)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def test_the_audit_ranks_ct_filed_as_mri_first_and_writes_a_ranking_and_a_contact_sheet(tiny_classifier, tmp_path):
    mri = tmp_path / "collection"
    for index, name in enumerate(("glioma", "meningioma", "pituitary", "notumor")):
        (mri / name).mkdir(parents=True)
        for item in range(8):
            (mri / name / f"{name}_{item}.png").write_bytes(encode(synthetic_slice(100 * index + item, 96, index)))
    for item in range(3):
        (mri / "notumor" / f"ct_{item}.png").write_bytes(encode(ct_like(50 + item)))
    examples = tmp_path / "non-mri-train" / "head_ct"
    examples.mkdir(parents=True)
    for item in range(12):
        (examples / f"src_{item}.png").write_bytes(encode(ct_like(item)))
    rows = audit(tiny_classifier, find_labelled_files(mri), tmp_path / "non-mri-train")
    assert {row["path"].rsplit("/", 1)[-1] for row in rows[:3]} == {"ct_0.png", "ct_1.png", "ct_2.png"}
    assert all(row["listed"] == "no" for row in rows)
    write_audit(rows, tmp_path / "ranking.csv", tmp_path / "sheet.png")
    written = list(csv.DictReader((tmp_path / "ranking.csv").open()))
    assert [row["path"] for row in written] == [row["path"] for row in rows]
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape[1] == 16 * 96 and sheet.shape[0] == 96 * -(-len(rows) // 16)
