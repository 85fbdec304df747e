"""Which dataset labels are likely wrong: cleanlab's confident learning on out-of-fold probabilities.

The probabilities for each slice come from a classifier that never saw that slice's label: a
logistic regression on features of a network that never saw these labels either (the ImageNet
backbone of `python -m core import-weights`), fitted in k folds that keep every group of
near-duplicates (the split manifest's `group`) inside one fold, so a mislabelled copy cannot be
"confirmed" by its own twin. cleanlab then flags the slices whose given label is unlikely under
those probabilities and suggests the likelier class.

A flag is a reason for a person to look, not a verdict: hard but correctly labelled slices get
flagged too. Training may down-weight or drop flagged training slices; test figures stay reported
on the full test split, with the flagged test slices left out only as a second, labelled figure.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.classes import CLASS_NAMES
from core.errors import DatasetError

FOLDS = 5
AUDIT_COLUMNS = ("path", "sha256", "split", "group", "given", "suggested", "given_probability",
                 "suggested_probability", "rank")


@dataclass(frozen=True)
class LabelIssue:
    """One slice whose given label looks wrong; `rank` 1 is the least likely given label."""

    index: int
    given: str
    suggested: str
    given_probability: float
    suggested_probability: float
    rank: int


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                              folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """(N, C) probabilities, each row from a logistic regression fitted without that row's group of near-duplicates.

    `features` (N, D) float, `labels` (N,) class indices, `groups` (N,) group ids.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probabilities = np.zeros((len(labels), len(CLASS_NAMES)), np.float64)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, held_rows in splitter.split(features, labels, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        model.fit(features[fit_rows], labels[fit_rows])
        probabilities[np.ix_(held_rows, model[-1].classes_)] = model.predict_proba(features[held_rows])
    return probabilities


def find_issues(labels: np.ndarray, probabilities: np.ndarray) -> list[LabelIssue]:
    """Slices cleanlab's confident learning flags, least likely given label first."""
    from cleanlab.filter import find_label_issues

    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    issues = []
    for rank, index in enumerate(ranked, start=1):
        suggested = int(np.argmax(probabilities[index]))
        issues.append(LabelIssue(int(index), CLASS_NAMES[labels[index]], CLASS_NAMES[suggested],
                                 float(probabilities[index, labels[index]]), float(probabilities[index, suggested]),
                                 rank))
    return issues


def write_audit(path: Path, issues: list[LabelIssue], rows: list) -> None:
    """The audit CSV: one row per flagged slice with its manifest row (path, sha256, split, group)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(AUDIT_COLUMNS)
        for issue in issues:
            row = rows[issue.index]
            writer.writerow([row.path, row.sha256, row.split, row.group, issue.given, issue.suggested,
                             f"{issue.given_probability:.4f}", f"{issue.suggested_probability:.4f}", issue.rank])


def read_flagged(path: Path) -> set[str]:
    """sha256 digests of the slices an audit CSV flags; raises `DatasetError` for a file that is not one."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "sha256" not in (reader.fieldnames or []):
            raise DatasetError(f"{path} is not a label audit (no sha256 column)")
        return {row["sha256"] for row in reader}


def summarise(issues: list[LabelIssue], rows: list) -> dict:
    """Counts of flagged slices per split and per (given -> suggested) pair."""
    per_split: dict[str, int] = {}
    pairs: dict[str, int] = {}
    for issue in issues:
        split = rows[issue.index].split
        per_split[split] = per_split.get(split, 0) + 1
        key = f"{issue.given} -> {issue.suggested}"
        pairs[key] = pairs.get(key, 0) + 1
    return {"flagged": len(issues), "per_split": per_split,
            "pairs": dict(sorted(pairs.items(), key=lambda item: -item[1]))}
