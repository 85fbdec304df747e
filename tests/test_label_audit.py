"""The label audit (core.training.label_audit): flipped labels are found, near-duplicates never vouch for each other."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cleanlab")

from core.classes import CLASS_NAMES  # noqa: E402
from core.training.label_audit import find_issues, out_of_fold_probabilities, read_flagged, summarise, write_audit  # noqa: E402
from core.training.split import ManifestRow  # noqa: E402


def clusters(per_class: int = 60, seed: int = 0):
    """Four well-separated feature clusters, one per class, with each slice its own group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASS_NAMES), 16)) * 4
    labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
    features = centres[labels] + rng.normal(size=(len(labels), 16))
    return features, labels


def test_flipped_labels_are_flagged_with_the_right_suggestion():
    features, truth = clusters()
    given = truth.copy()
    flipped = [3, 70, 130, 200]
    for index in flipped:
        given[index] = (truth[index] + 1) % len(CLASS_NAMES)
    probabilities = out_of_fold_probabilities(features, given, np.arange(len(given)))
    issues = find_issues(given, probabilities)
    found = {issue.index: issue for issue in issues}
    assert set(flipped) <= set(found)
    assert len(issues) <= len(flipped) + 4  # a clean cluster is not flagged wholesale
    for index in flipped:
        assert found[index].suggested == CLASS_NAMES[truth[index]]
        assert found[index].given == CLASS_NAMES[given[index]]


def test_a_mislabelled_near_duplicate_is_not_vouched_for_by_its_twin():
    features, truth = clusters()
    # Slice 5 has a twin (an exact copy of its features) that carries the same wrong label.
    features = np.vstack([features, features[5:6]])
    given = np.append(truth, truth[5])
    wrong = (truth[5] + 2) % len(CLASS_NAMES)
    given[5] = given[-1] = wrong
    groups = np.arange(len(given))
    groups[-1] = groups[5]  # one group: the twins are always in the same fold
    issues = find_issues(given, out_of_fold_probabilities(features, given, groups))
    assert {5, len(given) - 1} <= {issue.index for issue in issues}


def test_the_audit_csv_lists_each_flagged_slice_with_its_manifest_row(tmp_path):
    features, given = clusters(per_class=30)
    given[0] = 1
    rows = [ManifestRow(f"set/{index}.png", f"{index:064x}", CLASS_NAMES[label], index,
                        "test" if index % 3 == 0 else "train") for index, label in enumerate(given)]
    issues = find_issues(given, out_of_fold_probabilities(features, given, np.arange(len(given))))
    write_audit(tmp_path / "audit.csv", issues, rows)
    assert f"{0:064x}" in read_flagged(tmp_path / "audit.csv")
    summary = summarise(issues, rows)
    assert summary["flagged"] == len(issues) and summary["per_split"].get("test", 0) >= 1
    assert summary["pairs"]["meningioma -> glioma"] >= 1
