"""CSV export of the review history, safe to open in a spreadsheet.

A cell whose text starts with `=`, `+`, `-`, `@`, a tab, a carriage return or a line feed (or
the full-width forms of the first four, which some spreadsheet locales also evaluate) is read
as a formula by Excel, LibreOffice and Google Sheets. Such cells get a leading single quote,
which spreadsheets display as text and never evaluate (OWASP "CSV injection"). Every text cell
is treated this way - notes, reasons, reviewer and file names are typed by people, and even
fields the app fills in never need to start with those characters. Numbers stay numbers.

Machine values, stable across versions (the pages show the same states in words):
`kind` is one of core.review.records.EVENT_KINDS; `status` (cases) one of core.review.reads'
statuses; `low_confidence` is `yes` when the model's highest probability is under
BRAINSCAN_LOW_CONFIDENCE (the page's "Low confidence" mark), `no` when it is not, and empty for
rows without probabilities (refusals, reads of a refused scan).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

from core.classes import CLASS_NAMES

# The model_version the history stores on events no model acted in (exports, archive copies); empty in a CSV.
NO_MODEL_VERSION = "-"
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# One row per event of the append-only log.
EVENT_COLUMNS: tuple[str, ...] = (
    "time", "reviewer", "file_name", "sha256", "model_version", "kind", "predicted_class",
    *(f"p_{name}" for name in CLASS_NAMES), "low_confidence", "verdict", "final_label", "reason", "note", "session_id",
    # Who acted, as the sign-in provider named them (empty in local mode): issuer + subject identify.
    "actor_issuer", "actor_subject", "actor_email", "actor_name", "actor_role",
)
# One row per scan and model version: its latest verdict (or its prediction while unreviewed), with the
# case's status and final label from all its reads (core.review.reads).
CASE_COLUMNS: tuple[str, ...] = ("status", *EVENT_COLUMNS, "first_time", "event_count")


def neutralise(value: object) -> object:
    """A text cell with a formula-starting character prefixed by `'`; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class SafeCsvWriter:
    """Writes rows (mappings) as spreadsheet-safe CSV to a text handle: the one CSV writer of the app and the CLI.

    Missing keys and None become empty cells; floats keep full precision; every text cell is
    neutralised. Lines end in CRLF (RFC 4180).
    """

    def __init__(self, handle: TextIO, columns: Sequence[str]):
        """Write the header row of `columns` to `handle`."""
        self.columns = tuple(columns)
        self._writer = csv.writer(handle, lineterminator="\r\n")
        self._writer.writerow(self.columns)

    def writerow(self, row: Mapping) -> None:
        """Write one row; keys outside `columns` are ignored."""
        self._writer.writerow(["" if row.get(column) is None else neutralise(row.get(column))
                               for column in self.columns])


def low_confidence_mark(probabilities: Iterable[float | None], threshold: float | None = None) -> str:
    """`yes` when the highest probability is under the low-confidence threshold, `no` when not, "" without any."""
    from core.config import low_confidence_threshold

    values = [float(value) for value in probabilities if value is not None and value == value]
    if not values:
        return ""
    return "yes" if max(values) < (low_confidence_threshold() if threshold is None else threshold) else "no"


def csv_bytes(rows: Iterable[Mapping], columns: Sequence[str] = EVENT_COLUMNS) -> bytes:
    """Rows as CSV bytes for a download: UTF-8 with a byte-order mark (so Excel reads accents), CRLF, a header.

    A `low_confidence` column the rows do not fill is derived from their `p_*` cells.
    """
    from core.config import low_confidence_threshold

    buffer = io.StringIO()
    writer = SafeCsvWriter(buffer, columns)
    threshold = low_confidence_threshold()
    for row in rows:
        if row.get("model_version") == NO_MODEL_VERSION:  # an export or archive event: no model acted
            row = {**row, "model_version": ""}
        if "low_confidence" in columns and row.get("low_confidence") is None:
            row = {**row, "low_confidence": low_confidence_mark(
                (row.get(f"p_{name}") for name in CLASS_NAMES), threshold)}
        writer.writerow(row)
    return buffer.getvalue().encode("utf-8-sig")
