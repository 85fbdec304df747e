"""Out-of-distribution gate: is this image something the classifier was trained on (a brain MRI slice)?

The learned part is a class-conditional Mahalanobis distance on the network's pooled penultimate
features (Lee et al., 2018): means per class and one shared covariance, fitted on the training
split. The threshold is a high percentile of the validation split's distances, so it is set on MRI
data alone; non-MRI images are never used to tune it.

Before the network, `core.pipeline.screen` applies cheap model-free checks measured by
`image_statistics` (a dark background, one compact connected head, a near-square frame). `evaluate_gate`
measures both together on held-out MRI slices and on `core.nonmri`'s set of other images; the
`python -m core ood-eval` command prints and records the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_PASS_PERCENTILE = 99.0


@dataclass(frozen=True)
class MahalanobisGate:
    """Fitted gate: class means (C, D), shared precision (D, D), and the distance threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Features (N, D) -> smallest squared Mahalanobis distance to any class mean, (N,) float64."""
        features = np.asarray(features, dtype=np.float64)
        best = np.full(len(features), np.inf)
        for mean in self.means:
            centred = features - mean
            best = np.minimum(best, np.einsum("nd,de,ne->n", centred, self.precision, centred))
        return best

    def is_in_distribution(self, features: np.ndarray) -> np.ndarray:
        """(N,) bool: True where the features look like the training MRI slices."""
        return self.distances(features) <= self.threshold

    def save(self, path: Path) -> None:
        """Store the gate as a small `.npz` file."""
        np.savez(path, means=self.means, precision=self.precision, threshold=np.array(self.threshold))

    @classmethod
    def load(cls, path: Path) -> "MahalanobisGate":
        """Read a gate saved by `save`."""
        with np.load(path) as stored:
            return cls(stored["means"], stored["precision"], float(stored["threshold"]))


def fit_gate(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    class_count: int,
    pass_percentile: float = DEFAULT_PASS_PERCENTILE,
    shrinkage: float = 0.05,
) -> MahalanobisGate:
    """Fit means and a shrunk shared covariance on training features; threshold from validation."""
    train_features = np.asarray(train_features, dtype=np.float64)
    train_labels = np.asarray(train_labels, dtype=int)
    means = np.stack([train_features[train_labels == index].mean(axis=0) for index in range(class_count)])
    centred = train_features - means[train_labels]
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    # Shrinking towards the mean variance keeps the inverse stable for features that barely vary.
    target = np.eye(covariance.shape[0]) * np.trace(covariance) / covariance.shape[0]
    covariance = (1.0 - shrinkage) * covariance + shrinkage * target
    precision = np.linalg.inv(covariance)
    unfitted = MahalanobisGate(means, precision, threshold=np.inf)
    threshold = float(np.percentile(unfitted.distances(validation_features), pass_percentile))
    return MahalanobisGate(means, precision, threshold)


@dataclass(frozen=True)
class ImageStatistics:
    """Cheap, model-free measurements of a greyscale image that separate MRI slices from most other pictures.

    `border_brightness`: median of the outer ring (4% of the short side) relative to the image's
    99th-percentile level; MRI slices sit on a dark background, so it is near 0.
    `dark_fraction`: share of pixels at background level.
    `largest_share`: share of the bright (foreground) pixels that belong to the largest connected
    region; a head is one region, text or a star field is many.
    `solidity`: area of that region over the area of its convex hull; a head is nearly convex, a
    hand or a drawing of lines is not.
    `extent`: area of that region over its bounding box; an ellipse fills about 0.79 of its box,
    a fan-shaped ultrasound sector or a cross much less.
    `inner_variation`: standard deviation over mean of the grey levels inside that region; brain
    tissue varies moderately, a star field or a mostly-dark frame enormously.
    `aspect_ratio`: long side over short side (>= 1).
    `contrast`: standard deviation of the grey levels.
    """

    border_brightness: float
    dark_fraction: float
    largest_share: float
    solidity: float
    extent: float
    inner_variation: float
    aspect_ratio: float
    contrast: float


# Pixels at or under this fraction of the 99th-percentile level count as background, as in
# core.preprocess.content_box.
_BACKGROUND_FRACTION = 0.12
_BORDER_FRACTION = 0.04
_ANALYSIS_SIDE = 256  # statistics are measured on a copy no larger than this, for speed


def image_statistics(grey: np.ndarray) -> ImageStatistics:
    """Measure a 2-D uint8 greyscale image (any size); see `ImageStatistics`."""
    import cv2

    height, width = grey.shape
    contrast = float(grey.std())
    scale = _ANALYSIS_SIDE / max(height, width)
    small = grey if scale >= 1 else cv2.resize(
        grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    values = small.astype(np.float32)
    bright_level = float(np.percentile(values, 99))
    background = max(8.0, _BACKGROUND_FRACTION * bright_level)
    ring = max(2, round(_BORDER_FRACTION * min(small.shape)))
    border = np.concatenate([values[:ring].ravel(), values[-ring:].ravel(),
                             values[:, :ring].ravel(), values[:, -ring:].ravel()])
    border_brightness = float(np.median(border)) / max(bright_level, 1.0)
    dark_fraction = float((values <= background).mean())
    blurred = cv2.GaussianBlur(small, (5, 5), 0)
    mask = (blurred > max(8.0, _BACKGROUND_FRACTION * float(np.percentile(blurred, 99)))).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest_share = solidity = extent = inner_variation = 0.0
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        largest = 1 + int(np.argmax(areas))
        largest_share = float(areas.max() / areas.sum())
        region = (labels == largest).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea)
        area = float(cv2.contourArea(outline))
        solidity = area / max(float(cv2.contourArea(cv2.convexHull(outline))), 1.0)
        extent = area / max(float(stats[largest, cv2.CC_STAT_WIDTH] * stats[largest, cv2.CC_STAT_HEIGHT]), 1.0)
        inside = values[region.astype(bool)]
        inner_variation = float(inside.std() / max(float(inside.mean()), 1.0))
    return ImageStatistics(border_brightness, dark_fraction, largest_share, solidity, extent, inner_variation,
                           max(height, width) / min(height, width), contrast)


FLOORS = {"mri_pass_rate": 0.95, "non_mri_flag_rate": 0.95}
_STATISTIC_PERCENTILES = (0.5, 1.0, 5.0, 50.0, 95.0, 99.0, 99.5)


def outcome_stage(result) -> str:
    """Where a `core.pipeline.ScanResult` stopped: "passed", "intake", "screen" or "gate"."""
    from core.pipeline import GATE_MESSAGE

    if result.status == "ok":
        return "passed"
    if not result.probabilities:
        return "intake"
    return "gate" if result.message == GATE_MESSAGE else "screen"


def evaluate_gate(classifier, mri_items, non_mri_items) -> dict:
    """Run both sets through the serving pipeline; report the MRI pass rate and the non-MRI flag rate.

    Items are (name, reader) pairs, as `core.pipeline.analyse_many` takes. A non-MRI image counts
    as flagged when it ends anywhere but "ok" (rejected at intake, by the cheap checks or by the
    gate); an MRI slice counts as passed only when it ends "ok". The MRI side also reports
    percentiles of `image_statistics`, the numbers the cheap checks' limits are set from.
    """
    from collections import Counter

    from core.nonmri import category_of
    from core.pipeline import analyse_many

    mri_stages, mri_reasons, statistics, stopped = Counter(), Counter(), [], []
    for result in analyse_many(classifier, mri_items, keep_scans=True):
        stage = outcome_stage(result)
        mri_stages[stage] += 1
        if stage != "passed":
            mri_reasons[_reason_key(result.message)] += 1
            stopped.append({"file": result.filename, "stage": stage, "message": result.message})
        if result.scan is not None:
            statistics.append(image_statistics(result.scan.image))
    non_stages, categories, missed = Counter(), {}, []
    for result in analyse_many(classifier, non_mri_items):
        stage = outcome_stage(result)
        non_stages[stage] += 1
        category = categories.setdefault(category_of(result.filename), Counter())
        category["n"] += 1
        category["flagged"] += stage != "passed"
        if stage == "passed":
            missed.append(result.filename)
    mri_total, non_total = sum(mri_stages.values()), sum(non_stages.values())
    report = {
        "model": classifier.version,
        "mri": {
            "n": mri_total,
            "passed": mri_stages["passed"],
            "pass_rate": mri_stages["passed"] / mri_total if mri_total else float("nan"),
            "by_stage": dict(mri_stages),
            "reasons": dict(mri_reasons.most_common()),
            "stopped_files": stopped,
            "statistics_percentiles": _percentiles(statistics),
        },
        "non_mri": {
            "n": non_total,
            "flagged": non_total - non_stages["passed"],
            "flag_rate": (non_total - non_stages["passed"]) / non_total if non_total else float("nan"),
            "by_stage": dict(non_stages),
            "by_category": {name: {"n": counts["n"], "flagged": counts["flagged"],
                                   "flag_rate": counts["flagged"] / counts["n"]}
                            for name, counts in sorted(categories.items())},
            "passed_files": missed,
        },
        "floors": dict(FLOORS),
    }
    report["meets_floors"] = bool(report["mri"]["pass_rate"] >= FLOORS["mri_pass_rate"]
                                  and report["non_mri"]["flag_rate"] >= FLOORS["non_mri_flag_rate"])
    return report


def _reason_key(message: str) -> str:
    from core.pipeline import NOT_MRI_MESSAGE

    if message.startswith(NOT_MRI_MESSAGE) and "(" in message:
        reason = message[message.index("(") + 1: message.rindex(")")] if ")" in message else message
        # Numbers vary per image; the reason's kind is what is counted.
        return re.sub(r"\d+(\.\d+)?", "#", reason)
    return message


def _percentiles(statistics: list[ImageStatistics]) -> dict[str, dict[str, float]]:
    if not statistics:
        return {}
    table = {}
    for name in ImageStatistics.__dataclass_fields__:
        values = np.array([getattr(item, name) for item in statistics])
        table[name] = {f"p{percentile:g}": round(float(np.percentile(values, percentile)), 4)
                       for percentile in _STATISTIC_PERCENTILES}
    return table


def format_gate_report(report: dict) -> str:
    """A plain-text summary of `evaluate_gate`'s report."""
    mri, non = report["mri"], report["non_mri"]
    lines = [
        f"MRI slices passed: {mri['passed']}/{mri['n']} = {mri['pass_rate']:.4f} "
        f"(floor {report['floors']['mri_pass_rate']:.2f}); stopped at {_stages(mri['by_stage'])}",
        f"non-MRI images flagged: {non['flagged']}/{non['n']} = {non['flag_rate']:.4f} "
        f"(floor {report['floors']['non_mri_flag_rate']:.2f}); stopped at {_stages(non['by_stage'])}",
        "",
        f"{'non-MRI category':<20}{'n':>6}{'flagged':>9}{'rate':>8}",
    ]
    for name, row in non["by_category"].items():
        lines.append(f"{name:<20}{row['n']:>6}{row['flagged']:>9}{row['flag_rate']:>8.3f}")
    if mri["reasons"]:
        lines += ["", "why MRI slices were stopped:"] + [f"  {count:>5}  {reason}" for reason, count in mri["reasons"].items()]
    if non["passed_files"]:
        shown = ", ".join(non["passed_files"][:12]) + (" ..." if len(non["passed_files"]) > 12 else "")
        lines += ["", f"non-MRI images that passed: {shown}"]
    lines += ["", "floors met" if report["meets_floors"] else "FLOORS NOT MET"]
    return "\n".join(lines)


def _stages(counts: dict) -> str:
    return ", ".join(f"{stage} {counts.get(stage, 0)}" for stage in ("intake", "screen", "gate", "passed"))
