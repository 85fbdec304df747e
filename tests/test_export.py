"""CSV export: every row and column comes back, and no typed text can run as a spreadsheet formula."""

from __future__ import annotations

import csv
import io

import pytest

from core.review.export import CASE_COLUMNS, EVENT_COLUMNS, csv_bytes, neutralise
from core.review.store import HistoryStore

DANGEROUS = ["=1+1", "+SUM(A1)", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "\n=1", "＝1+1",
             '=HYPERLINK("http://evil.example","click")', "=cmd|' /C calc'!A0"]


def parse(data: bytes) -> list[dict]:
    assert data.startswith(b"\xef\xbb\xbf"), "a byte-order mark lets Excel read UTF-8"
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


@pytest.mark.parametrize("text", DANGEROUS)
def test_text_starting_a_formula_is_prefixed_with_a_quote(text):
    assert neutralise(text) == "'" + text


@pytest.mark.parametrize("value", ["glioma", "scan 1.png", "a=b", " -not at the start", "", 0.25, -0.5, None, 3])
def test_other_values_are_left_alone(value):
    assert neutralise(value) == value


def test_every_user_typed_field_is_neutralised_in_the_csv(database_url):
    store = HistoryStore(database_url)  # On SQLite and on PostgreSQL: what comes back is what was typed.
    for number, text in enumerate(DANGEROUS):
        store.record_verdict(
            session_id="a" * 32, reviewer=f"@{number}reviewer", file_name=f"={number}.png", sha256=f"{number:064x}",
            model_version="tiny 1", predicted_class="glioma",
            probabilities={"glioma": 0.4, "meningioma": 0.3, "pituitary": 0.2, "no_tumor": 0.1},
            verdict="override", override_label="meningioma", reason=f"-{number} reason", note=f"x{text}" if number % 2
            else text,
        )
    events = store.events()
    rows = parse(csv_bytes(events))
    assert len(rows) == len(DANGEROUS)
    for row, event in zip(rows, events):
        for column in ("reviewer", "file_name", "reason", "note"):
            cell = row[column]
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n", "＝")), (column, cell)
            # The quote is the only change: stripping it gives back exactly what was typed.
            assert cell.removeprefix("'") == event[column].strip()
        assert float(row["p_glioma"]) == 0.4  # Numbers stay numbers.


def test_columns_are_in_order_and_missing_values_are_empty():
    row = {"time": "2026-01-01T00:00:00.000+00:00", "reviewer": "Ann", "file_name": "a, \"quoted\"\nname.png",
           "sha256": "f" * 64, "model_version": "m 1", "kind": "prediction", "predicted_class": "glioma",
           "p_glioma": 0.123456789, "verdict": None, "note": "line one\nline two", "status": "new"}
    [parsed] = parse(csv_bytes([row], CASE_COLUMNS))
    assert list(parsed) == list(CASE_COLUMNS)
    assert parsed["file_name"] == row["file_name"] and parsed["note"] == row["note"]
    assert parsed["p_glioma"] == "0.123456789" and parsed["verdict"] == "" and parsed["p_no_tumor"] == ""
    assert parsed["status"] == "new"
    assert list(parse(csv_bytes([]))) == [] and csv_bytes([]).decode("utf-8-sig").strip() == ",".join(EVENT_COLUMNS)


def test_an_export_or_archive_event_has_an_empty_model_version_not_a_quoted_dash(database_url):
    store = HistoryStore(database_url)
    store.record_export(session_id="s" * 32, reviewer="Ann", file_name="history.csv", sha256="e" * 64,
                        description="history (CSV)")
    [export] = store.events()
    assert export["model_version"] == "-"  # what the history keeps, unchanged
    [row] = parse(csv_bytes(store.events()))
    assert row["kind"] == "export" and row["model_version"] == ""


def test_low_confidence_is_its_own_column_derived_from_the_probabilities(monkeypatch):
    monkeypatch.setenv("BRAINSCAN_LOW_CONFIDENCE", "0.8")
    rows = [{"kind": "prediction", "p_glioma": 0.5, "p_meningioma": 0.3, "p_pituitary": 0.1, "p_no_tumor": 0.1},
            {"kind": "prediction", "p_glioma": 0.9, "p_meningioma": 0.05, "p_pituitary": 0.03, "p_no_tumor": 0.02},
            {"kind": "refusal"}]
    assert [row["low_confidence"] for row in parse(csv_bytes(rows))] == ["yes", "no", ""]
