import hashlib
from collections import defaultdict

import cv2
import numpy as np

from core.training.split import (
    ManifestRow,
    assign_splits,
    group_near_duplicates,
    read_manifest,
    thumbnail_vectors,
    write_manifest,
)


def _dataset_with_duplicates(count: int = 120):
    """Distinct slices plus near-duplicates of some (resized, re-encoded, brightened copies)."""
    rng = np.random.default_rng(3)
    images, labels, origin = [], [], []
    for index in range(count):
        base = rng.integers(0, 255, (24, 24)).astype(np.uint8)
        base = cv2.resize(base, (96, 96), interpolation=cv2.INTER_CUBIC)
        label = ("glioma", "meningioma", "pituitary", "no_tumor")[index % 4]
        images.append(base)
        labels.append(label)
        origin.append(index)
        if index % 3 == 0:  # a resized and re-encoded copy, as the public collections contain
            copy = cv2.resize(cv2.resize(base, (150, 150)), (96, 96))
            _, encoded = cv2.imencode(".jpg", copy, [cv2.IMWRITE_JPEG_QUALITY, 80])
            images.append(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE))
            labels.append(label)
            origin.append(index)
        if index % 5 == 0:  # a byte-identical copy
            images.append(base.copy())
            labels.append(label)
            origin.append(index)
    return np.stack(images), labels, origin


def test_near_duplicates_share_a_group_and_distinct_images_do_not():
    images, labels, origin = _dataset_with_duplicates()
    digests = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    groups = group_near_duplicates(thumbnail_vectors(images), digests)
    by_origin = defaultdict(set)
    for group, source in zip(groups, origin):
        by_origin[source].add(int(group))
    assert all(len(found) == 1 for found in by_origin.values()), "copies of one image were split apart"
    assert len(set(groups)) == len(by_origin), "distinct images were merged"


def test_duplicates_never_straddle_splits_and_splits_are_stratified():
    images, labels, origin = _dataset_with_duplicates(400)
    digests = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    groups = group_near_duplicates(thumbnail_vectors(images), digests)
    splits = assign_splits(groups, labels, seed=7)
    split_of_group = defaultdict(set)
    for group, split in zip(groups, splits):
        split_of_group[int(group)].add(split)
    assert all(len(found) == 1 for found in split_of_group.values())
    for label in set(labels):
        in_test = sum(1 for item, split in zip(labels, splits) if item == label and split == "test")
        total = labels.count(label)
        assert 0.08 < in_test / total < 0.25, (label, in_test, total)


def test_split_is_reproducible_with_a_fixed_seed():
    images, labels, _ = _dataset_with_duplicates(200)
    digests = [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    groups = group_near_duplicates(thumbnail_vectors(images), digests)
    assert assign_splits(groups, labels, seed=11) == assign_splits(groups, labels, seed=11)
    assert assign_splits(groups, labels, seed=11) != assign_splits(groups, labels, seed=12)


def test_manifest_round_trips_and_its_digest_changes_with_content(tmp_path):
    rows = [ManifestRow("set/glioma/a.png", "ab" * 32, "glioma", 0, "train"),
            ManifestRow("set/glioma/b.png", "cd" * 32, "glioma", 1, "test")]
    first = write_manifest(rows, tmp_path / "split.csv")
    assert read_manifest(tmp_path / "split.csv") == rows
    second = write_manifest(rows[:1], tmp_path / "other.csv")
    assert first != second

