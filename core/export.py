"""CSV export of the review history, safe to open in a spreadsheet.

A cell whose text starts with `=`, `+`, `-`, `@`, a tab, a carriage return or a line feed (or
the full-width forms of the first four, which some spreadsheet locales also evaluate) is read
as a formula by Excel, LibreOffice and Google Sheets. Such cells get a leading single quote,
which spreadsheets display as text and never evaluate (OWASP "CSV injection"). Every text cell
is treated this way - notes, reasons, reviewer and file names are typed by people, and even
fields the app fills in never need to start with those characters. Numbers stay numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

from core.classes import CLASS_NAMES

FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# One row per event of the append-only log.
EVENT_COLUMNS: tuple[str, ...] = (
    "time", "reviewer", "file_name", "sha256", "model_version", "kind", "predicted_class",
    *(f"p_{name}" for name in CLASS_NAMES), "verdict", "final_label", "reason", "note", "session_id",
)
# One row per scan and model version: its latest verdict, or its prediction while unreviewed.
CASE_COLUMNS: tuple[str, ...] = ("status", *EVENT_COLUMNS, "first_time", "event_count")


def neutralise(value: object) -> object:
    """A text cell with a formula-starting character prefixed by `'`; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_bytes(rows: Iterable[Mapping], columns: Sequence[str] = EVENT_COLUMNS) -> bytes:
    """Rows as CSV bytes: UTF-8 with a byte-order mark (so Excel reads accents), CRLF line ends, a header.

    Missing keys and None become empty cells; floats keep full precision; every text cell is
    neutralised.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(column) is None else neutralise(row.get(column)) for column in columns])
    return buffer.getvalue().encode("utf-8-sig")
