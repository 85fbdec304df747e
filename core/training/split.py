"""Leakage-free train/validation/test split: near-duplicate images share a group, groups never straddle.

Two images fall in one group when the correlation of their 16x16 thumbnails (taken after the
shared preprocessing, so framing and size differences are removed) exceeds a threshold, or when
their bytes are identical; groups are the connected components of that relation. Groups are then
dealt to splits, largest first, so that each class's share in each split tracks its target.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SIMILARITY_THRESHOLD = 0.95
SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS = {"train": 0.75, "validation": 0.10, "test": 0.15}
MANIFEST_COLUMNS = ("path", "sha256", "label", "group", "split")


def thumbnail_vectors(images: np.ndarray, thumbnail_size: int = 16) -> np.ndarray:
    """Images (N, H, W[, 1]) of any numeric type -> zero-mean unit-norm thumbnails (N, thumbnail_size**2)."""
    vectors = np.stack(
        [
            cv2.resize(np.asarray(image, dtype=np.float32).squeeze(), (thumbnail_size, thumbnail_size),
                       interpolation=cv2.INTER_AREA).ravel()
            for image in images
        ]
    )
    vectors -= vectors.mean(axis=1, keepdims=True)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-6
    return vectors


def group_near_duplicates(
    vectors: np.ndarray, digests: list[str], threshold: float = SIMILARITY_THRESHOLD, chunk: int = 2048
) -> np.ndarray:
    """Group ids (N,) int: connected components of 'correlation > threshold or same sha256'."""
    count = len(vectors)
    parent = np.arange(count)

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def union(first: int, second: int) -> None:
        root_first, root_second = find(first), find(second)
        if root_first != root_second:
            parent[max(root_first, root_second)] = min(root_first, root_second)

    for start in range(0, count, chunk):
        similarity = vectors[start : start + chunk] @ vectors.T
        rows, columns = np.nonzero(similarity > threshold)
        for row, column in zip(rows + start, columns):
            if column > row:
                union(int(row), int(column))
    first_with_digest: dict[str, int] = {}
    for index, digest in enumerate(digests):
        if digest in first_with_digest:
            union(first_with_digest[digest], index)
        else:
            first_with_digest[digest] = index
    roots = np.array([find(index) for index in range(count)])
    _, group_ids = np.unique(roots, return_inverse=True)
    return group_ids


def assign_splits(
    group_ids: np.ndarray,
    labels: list[str],
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
    seed: int = 1234,
) -> list[str]:
    """Split name per item; whole groups go to one split, stratified by each group's majority label."""
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for index, group in enumerate(group_ids):
        members.setdefault(int(group), []).append(index)
    groups = list(members)
    rng.shuffle(groups)
    # Largest groups first (stable after the seeded shuffle), so the small ones even out the counts.
    groups.sort(key=lambda group: -len(members[group]))
    label_totals = Counter(labels)
    assigned: dict[str, Counter] = {name: Counter() for name in SPLIT_NAMES}
    splits = [""] * len(labels)
    for group in groups:
        majority = Counter(labels[index] for index in members[group]).most_common(1)[0][0]
        size = len(members[group])
        # Give the group to the split that is furthest below its target for this label.
        def deficit(name: str) -> float:
            target = fractions[name] * label_totals[majority]
            return (target - assigned[name][majority]) / max(target, 1.0)

        chosen = max(SPLIT_NAMES, key=deficit)
        for index in members[group]:
            splits[index] = chosen
        assigned[chosen][majority] += size
    return splits


@dataclass(frozen=True)
class ManifestRow:
    """One file of the split manifest; `path` is relative to the dataset parent folder."""

    path: str
    sha256: str
    label: str
    group: int
    split: str


def write_manifest(rows: list[ManifestRow], path: Path) -> str:
    """Write the manifest CSV and return its sha256 hex digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            writer.writerow([row.path, row.sha256, row.label, row.group, row.split])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read a manifest CSV written by `write_manifest`."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            ManifestRow(row["path"], row["sha256"], row["label"], int(row["group"]), row["split"])
            for row in csv.DictReader(handle)
        ]
