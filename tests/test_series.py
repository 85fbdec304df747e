"""A series as a reader reviews it: slice order, the strip chart's rows, the short list, and a series read in the chain."""

from __future__ import annotations

import pytest

from core.classes import CLASS_NAMES, DISPLAY_NAMES
from core.pipeline import ScanResult
from core.review.records import VerdictRejected
from core.review.series import most_suspicious, series_class, series_key, series_slices, strip_rows
from core.review.store import HistoryStore


def result(name: str, no_tumour: float | None, label: str = "glioma") -> ScanResult:
    if no_tumour is None:
        return ScanResult(name, name * 4, "rejected", "it looks like a CT image")
    rest = (1.0 - no_tumour) / 3
    probabilities = {"glioma": rest, "meningioma": rest, "pituitary": rest, "no_tumor": no_tumour}
    return ScanResult(name, name * 4, "ok", "", label if no_tumour < 0.5 else "no_tumor", probabilities)


SERIES = [result("a", 0.9), result("b", 0.2, "meningioma"), result("c", None), result("d", 0.05, "glioma"),
          result("e", 0.6)]


def test_the_short_list_puts_the_most_suspicious_classified_slices_first():
    slices = series_slices(SERIES)
    assert [item.position for item in slices] == [0, 1, 2, 3, 4]
    assert [item.file_name for item in most_suspicious(slices)] == ["d", "b", "e", "a"]  # "c" was refused
    assert series_class(slices) == "glioma"
    assert series_class(series_slices([result("x", None)])) is None


def test_strip_rows_give_four_probabilities_per_classified_slice_and_mark_refused_ones():
    rows = strip_rows(series_slices(SERIES), DISPLAY_NAMES)
    assert len(rows) == 4 * 4 + 1
    [refused] = [row for row in rows if row["refused"]]
    assert refused["slice"] == 3 and refused["class"] == "Refused"
    assert {row["class"] for row in rows if not row["refused"]} == {DISPLAY_NAMES[name] for name in CLASS_NAMES}


def test_a_series_read_is_a_chained_event_naming_the_series_and_its_key_slices(database_url):
    store = HistoryStore(database_url)
    common = dict(session_id="s1", reviewer="Ann", series_name="S2 AX T2", study_uid="1.2.3", series_uid="1.2.3.4",
                  model_version="m 1", predicted_class="glioma", slice_count=5)
    with pytest.raises(VerdictRejected, match="key slices"):
        store.record_series_read(**common, verdict="confirm")
    with pytest.raises(VerdictRejected, match="reason"):
        store.record_series_read(**common, verdict="override", override_label="meningioma", key_slices=["d" * 64])
    store.record_series_read(**common, verdict="confirm", key_slices=["d" * 64, "b" * 64])
    store.record_series_read(**common, verdict="flag", reason="unsure of the enhancement")
    [confirmed, flagged] = store.series_reads("1.2.3.4")
    assert confirmed["kind"] == "series_read" and confirmed["sha256"] == series_key("1.2.3.4")
    assert confirmed["final_label"] == "glioma" and confirmed["verdict"] == "confirm"
    assert confirmed["detail"] == {"study_uid": "1.2.3", "series_uid": "1.2.3.4", "key_slices": ["d" * 64, "b" * 64],
                                   "slices": 5}
    assert flagged["final_label"] is None
    assert store.verify().intact


def test_a_series_read_differently_by_two_readers_awaits_a_second_read_and_its_adjudication_is_verified(database_url):
    from core.review.reads import needs_second_read
    from core.review.results import final_read

    store = HistoryStore(database_url)
    common = dict(session_id="s1", series_name="S3 AX T1 post", study_uid="1.2.9", series_uid="1.2.9.3",
                  model_version="m 1", predicted_class="glioma", slice_count=20)
    store.record_series_read(**common, reviewer="Ann", verdict="confirm", key_slices=["a" * 64])
    case = store.series_case("1.2.9.3", "m 1")
    assert (case["status"], case["final_label"]) == ("reviewed", "glioma")
    assert final_read(case) == {"reviewer": "Ann", "reader": "\nAnn", "final_label": "glioma", "verdict": "confirm",
                                "reason": "", "key_slices": ["a" * 64]}

    store.record_series_read(**common, reviewer="Bob", verdict="override", override_label="meningioma",
                             reason="dural tail on slice 12", key_slices=["c" * 64])
    case = store.series_case("1.2.9.3", "m 1")
    assert (case["status"], case["final_label"]) == ("flagged", None) and final_read(case) is None
    assert [read["reviewer"] for read in case["reads"]] == ["Ann", "Bob"]
    # On the second-read queue with the scans', as a case of its own.
    [queued] = [row for row in store.current_state() if needs_second_read(row["status"])]
    assert (queued["sha256"], queued["kind"], queued["file_name"]) == (series_key("1.2.9.3"), "series_read",
                                                                       "S3 AX T1 post")

    adjudication = dict(session_id="s2", reviewer="Sam", file_name="S3 AX T1 post", sha256=series_key("1.2.9.3"),
                        model_version="m 1", predicted_class="glioma", probabilities={}, reason="consensus")
    with pytest.raises(VerdictRejected, match="one of the classes"):
        store.record_adjudication(**adjudication, final_label="not_brain_mri")
    store.record_adjudication(**adjudication, final_label="meningioma")
    case = store.series_case("1.2.9.3", "m 1")
    assert (case["status"], case["final_label"]) == ("adjudicated", "meningioma")
    assert final_read(case) == {"reviewer": "Sam", "reader": "\nSam", "final_label": "meningioma",
                                "verdict": "adjudicated", "reason": "consensus", "key_slices": ["c" * 64]}
    # A series is no scan: the archive check does not look for a copy of it.
    assert series_key("1.2.9.3") not in store.scans_named()
    assert store.verify().intact
