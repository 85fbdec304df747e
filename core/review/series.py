"""A series as a reader reviews it: its slices in order, what the model says along them, the slices to look at first.

A PACS series is many slices (`core.review.uploads.take_pulled` classifies them as one batch).
`series_slices` lines them up by position; `strip_rows` gives the four probabilities along the
slice index for a chart, refused slices marked; `most_suspicious` orders the classified slices by
how likely the model thinks a tumour is (1 - P(no tumour)). The model's class for the series is the
class of its most suspicious slice: one slice with a tumour makes a series with a tumour.
`series_key` is what the history files a series read under: the sha256 of its series UID, so a
series read sits beside slice reads without ever sharing a slice's key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

NO_TUMOUR = "no_tumor"
SHORT_LIST = 5


@dataclass(frozen=True)
class SeriesSlice:
    """One slice of a series: its position (0-based), file name, sha256, status, class, probabilities and message."""

    position: int
    file_name: str
    sha256: str
    status: str
    label: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def suspicion(self) -> float | None:
        """1 - P(no tumour) for a classified slice; None for a refused one."""
        if self.status != "ok" or NO_TUMOUR not in self.probabilities:
            return None
        return 1.0 - float(self.probabilities[NO_TUMOUR])


def series_key(series_uid: str) -> str:
    """The history key of a series read: sha256 of "series:" and the series UID, 64 hex digits."""
    return hashlib.sha256(f"series:{series_uid}".encode()).hexdigest()


def series_slices(results) -> list[SeriesSlice]:
    """`core.pipeline.ScanResult`s in slice order -> `SeriesSlice`s (positions 0..N-1)."""
    return [SeriesSlice(position, result.filename, result.sha256, result.status, result.label,
                        dict(result.probabilities) if result.status == "ok" else {}, result.message)
            for position, result in enumerate(results)]


def most_suspicious(slices: list[SeriesSlice], count: int = SHORT_LIST) -> list[SeriesSlice]:
    """The classified slices the model thinks most likely show a tumour, most likely first (ties: slice order)."""
    classified = [item for item in slices if item.suspicion is not None]
    return sorted(classified, key=lambda item: (-item.suspicion, item.position))[:count]


def series_class(slices: list[SeriesSlice]) -> str | None:
    """The model's class for the series: its most suspicious slice's class; None when no slice was classified."""
    top = most_suspicious(slices, 1)
    return top[0].label if top else None


def strip_rows(slices: list[SeriesSlice], display_names: dict[str, str]) -> list[dict]:
    """Long-form rows for the strip chart: one per classified slice and class, one "refused" row per refused slice."""
    rows = []
    for item in slices:
        if item.status == "ok":
            rows += [{"slice": item.position + 1, "class": display_names.get(name, name), "probability": value,
                      "refused": False} for name, value in item.probabilities.items()]
        else:
            rows.append({"slice": item.position + 1, "class": "Refused", "probability": 0.0, "refused": True})
    return rows
