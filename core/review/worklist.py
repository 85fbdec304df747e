"""The worklist's plain logic: what is kept of a classified upload, each scan's status, what comes next.

The Review page keeps a worklist in its session; everything here is a plain function of plain
values, so it is tested without a browser and shared with any other front end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.pipeline import ScanResult
from core.review.records import STATUS_LABELS
from core.scans.preprocess import prepare_image

THUMBNAIL_SIDE = 512
# An item whose archived scan could not be read back just now (the archive is down, or lost it).
UNAVAILABLE = "unavailable"
# A worklist scan's status: rejected at intake or by the gate, its picture unavailable, else from its history;
# each named as History names it (one word per state on every page).
STATUS_NAMES: dict[str, str] = {**{status: STATUS_LABELS[status] for status in ("new", "reviewed", "flagged",
                                                                             "adjudicated", "rejected")},
                                UNAVAILABLE: "Picture unavailable"}


@dataclass(frozen=True)
class ReviewItem:
    """What a worklist keeps of one classified upload: never the file bytes, only a small thumbnail."""

    sha256: str
    file_name: str
    status: str  # "ok" or "rejected", as `ScanResult.status`, or UNAVAILABLE
    message: str
    label: str | None
    probabilities: dict[str, float]
    model_version: str
    thumbnail: np.ndarray | None  # uint8 greyscale, longest side at most THUMBNAIL_SIDE
    tensor: np.ndarray | None  # the model input (S, S, 1) float32, kept for the heat-map
    # What the prediction's event keeps for monitoring (`monitoring_detail`): the scanner, the gate score.
    detail: dict = field(default_factory=dict)
    # A colour upload's picture as shown (RGB uint8, the thumbnail's size); None for greyscale. The model reads
    # the greyscale `thumbnail`'s source, never this.
    colour: np.ndarray | None = None
    # The classes' activation maps from the inference (`ScanResult.class_maps`), for the heat map; None: recompute.
    class_maps: np.ndarray | None = None

    @property
    def confidence(self) -> float:
        """The calibrated probability of the model's class; 0 for a rejected scan."""
        return self.probabilities[self.label] if self.label else 0.0

    @property
    def widget_key(self) -> str:
        """A short, stable suffix for this scan's widget keys (the first 16 hex digits of its sha256)."""
        return self.sha256[:16]


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A uint8 picture (H, W) or (H, W, 3) shrunk (never enlarged) so that its longer side is at most `side` pixels."""
    scale = min(1.0, side / max(image.shape[:2]))
    if scale == 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


PICTURE_UPLOAD = "picture upload"
UNNAMED_SCANNER = "scanner not named"


def monitoring_detail(result: ScanResult) -> dict:
    """What a prediction or refusal event keeps for the Performance page: device attributes and the gate's score.

    `scanner` is the DICOM header's Manufacturer and ManufacturerModelName (the device, never the
    patient), `PICTURE_UPLOAD` for a PNG or JPEG (or its archived capture), `UNNAMED_SCANNER` for
    a DICOM that names none; absent when the file was not decoded. `gate_score` is the gate's
    not-MRI log-odds (3 decimals) when a gate scored the scan.
    """
    detail: dict = {}
    if result.scan is not None:
        if result.scan.source_format == "DICOM":
            named = " ".join(result.scan.metadata.get(label, "").strip() for label in ("Manufacturer", "Scanner model"))
            detail["scanner"] = " ".join(named.split()) or UNNAMED_SCANNER
        else:
            detail["scanner"] = PICTURE_UPLOAD
    if result.not_mri_score is not None and math.isfinite(result.not_mri_score):
        detail["gate_score"] = round(float(result.not_mri_score), 3)
    return detail


def item_from_result(result: ScanResult, model_version: str, image_size: int) -> ReviewItem:
    """Shrink a pipeline result to what a worklist keeps between reruns (a thumbnail, the model input)."""
    small = tensor = colour = None
    if result.scan is not None:
        small = thumbnail(result.scan.image)
        if result.scan.colour is not None:
            colour = thumbnail(result.scan.colour)
        if result.status == "ok":
            tensor = result.tensor if result.tensor is not None else prepare_image(result.scan.image, image_size)
    return ReviewItem(result.sha256, result.filename, result.status, result.message, result.label,
                      dict(result.probabilities), model_version, small, tensor, monitoring_detail(result), colour,
                      result.class_maps if result.status == "ok" else None)


def status_of(item: ReviewItem, states: Mapping[str, Mapping]) -> str:
    """Worklist status: "rejected", UNAVAILABLE, or "new" / "reviewed" / "flagged" from the scan's history."""
    if item.status == UNAVAILABLE:
        return UNAVAILABLE
    if item.status != "ok":
        return "rejected"
    state = states.get(item.sha256)
    return str(state["status"]) if state else "new"


def status_counts(statuses: Mapping[str, str]) -> dict[str, int]:
    """{status: number of scans}, for every status in `STATUS_NAMES` (zeros included)."""
    return {status: sum(value == status for value in statuses.values()) for status in STATUS_NAMES}


def first_unreviewed(order: Sequence[str], statuses: Mapping[str, str]) -> str | None:
    """The first scan (sha256) of the worklist still "new", or None when every scan has a verdict or was refused."""
    return next((digest for digest in order if statuses[digest] == "new"), None)


def next_unreviewed(order: Sequence[str], statuses: Mapping[str, str], current: str | None) -> str | None:
    """The next "new" scan after `current`, wrapping round to the start; None when none is left."""
    start = order.index(current) + 1 if current in order else 0
    return first_unreviewed(list(order[start:]) + list(order[:start]), statuses)
