"""The History page through AppTest: a saved verdict appears, scope, filters, summary and the exported CSV."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.review import store as store_module
from core.review.store import HistoryStore
from tests.navigate import open_page
from tests.synthetic import encode, synthetic_slice

ROOT = Path(__file__).resolve().parents[1]
OURS, THEIRS = "1" * 32, "2" * 32
TODAY = datetime.now(timezone.utc).date()  # History dates are UTC dates.
TEN_DAYS_AGO = TODAY - timedelta(days=10)
PROBABILITIES = {"glioma": 0.6, "meningioma": 0.2, "pituitary": 0.1, "no_tumor": 0.1}



@pytest.fixture
def downloads(monkeypatch) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every file handed to a download button, in order."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    captured: list[tuple[str, bytes]] = []
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        captured.append((filename, path_or_data))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return captured


def exported_rows(downloads) -> list[dict]:
    filename, data = downloads[-1]
    assert filename.endswith(".csv")
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def history_page(session: str, all_sessions: bool = False) -> AppTest:
    """History in local mode with `session` in the URL, narrowed to that session unless `all_sessions`."""
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    app.query_params["session"] = session
    app.run()
    open_page(app, "history")
    assert not app.exception, app.exception
    if not all_sessions and app.toggle(key="history_all_sessions").value:
        app.toggle(key="history_all_sessions").set_value(False).run()
    return app


def metric(app: AppTest, label: str) -> str:
    return next(element.value for element in app.metric if element.label == label)


def the_table(app: AppTest):
    [frame] = [element.value for element in app.dataframe if "Final label" in element.value.columns]
    return frame


def seed(path: Path) -> None:
    """Our session: scan 1 confirmed then overridden, scan 2 new. Another session: scan 3 flagged by Bob."""
    store = HistoryStore(path)
    common = {"model_version": "tiny 0.0.1-test", "probabilities": PROBABILITIES, "predicted_class": "glioma"}
    for number, session in ((1, OURS), (2, OURS), (3, THEIRS)):
        store.record_prediction(session_id=session, reviewer="", file_name=f"scan-{number}.png",
                                sha256=f"{number:064x}", **common)
    scan_1 = {"session_id": OURS, "reviewer": "Ann", "file_name": "scan-1.png", "sha256": f"{1:064x}", **common}
    store.record_verdict(verdict="confirm", **scan_1)
    store.record_verdict(verdict="override", override_label="meningioma", reason="dural tail", **scan_1)
    store.record_verdict(session_id=THEIRS, reviewer="Bob", file_name="scan-3.png", sha256=f"{3:064x}",
                         verdict="flag", note="@second opinion", **common)
    # An old prediction, as if made ten days ago: the store stamps the time itself, so its clock is set back.
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(store_module, "utc_now", lambda: f"{TEN_DAYS_AGO.isoformat()}T09:00:00.000+00:00")
        store.record_prediction(session_id=THEIRS, reviewer="", file_name="old.png", sha256=f"{4:064x}",
                                model_version="tiny 0.0.1-test", predicted_class="pituitary", probabilities={})


def test_a_verdict_saved_on_review_appears_in_history_and_in_the_csv(history_path, downloads):
    scan = encode(synthetic_slice(31, 96))
    key = hashlib.sha256(scan).hexdigest()[:16]
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    app.text_input(key="reviewer_name").input("@Ann").run()
    app.file_uploader(key="review_uploads_0").set_value(("=1+1.png", scan, "image/png")).run()
    app.text_area(key=f"review_note_{key}").input("=HYPERLINK(\"http://x\")").run()
    app.radio(key=f"review_verdict_{key}").set_value("confirm").run()
    app.button(key=f"review_save_{key}").click().run()
    open_page(app, "history")
    assert not app.exception, app.exception

    table = the_table(app)
    assert list(table["File"]) == ["=1+1.png"] and list(table["Verdict"]) == ["Confirmed"]
    assert table["sha256"][0] == hashlib.sha256(scan).hexdigest()[:12]
    # Probabilities in percent with one decimal, as on Review; together they make 100.
    shown = [table[column][0] for column in table.columns if column.startswith("P(")]
    assert len(shown) == 4 and all(round(value, 1) == value for value in shown)
    assert sum(shown) == pytest.approx(100, abs=0.2)
    assert [button.label for button in app.download_button] == ["Export CSV"]
    [row] = exported_rows(downloads)
    assert row["verdict"] == "confirm" and row["status"] == "reviewed" and row["final_label"] == row["predicted_class"]
    assert row["sha256"] == hashlib.sha256(scan).hexdigest()
    assert (row["file_name"], row["reviewer"], row["note"]) == ("'=1+1.png", "'@Ann", "'=HYPERLINK(\"http://x\")")
    assert sum(float(row[f"p_{name}"]) for name in ("glioma", "meningioma", "pituitary", "no_tumor")) == \
        pytest.approx(1.0)


def test_local_mode_shows_the_whole_machine_by_default_and_one_session_on_request(history_path, downloads):
    seed(history_path)
    # Local mode is one reviewer's machine: a new tab shows everything it recorded.
    everything = history_page(OURS, all_sessions=True)
    assert everything.toggle(key="history_all_sessions").value is True
    assert sorted(the_table(everything)["File"]) == ["old.png", "scan-1.png", "scan-2.png", "scan-3.png"]
    app = history_page(OURS)
    assert sorted(the_table(app)["File"]) == ["scan-1.png", "scan-2.png"]
    assert (metric(app, "Scans"), metric(app, "Reviewed"), metric(app, "Awaiting second read"),
            metric(app, "Adjudicated")) == ("2", "1", "0", "0")
    assert metric(app, "Model-reviewer agreement") == "0%"  # The one decided scan was overridden.
    assert len(exported_rows(downloads)) == 2

    app.toggle(key="history_all_sessions").set_value(True).run()
    assert sorted(the_table(app)["File"]) == ["old.png", "scan-1.png", "scan-2.png", "scan-3.png"]
    app.multiselect(key="history_verdicts").set_value(["flag"]).run()
    assert list(the_table(app)["Reviewer"]) == ["Bob"]
    assert [row["note"] for row in exported_rows(downloads)] == ["'@second opinion"]
    app.multiselect(key="history_verdicts").set_value([]).run()
    app.multiselect(key="history_classes").set_value(["meningioma"]).run()
    assert list(the_table(app)["File"]) == ["scan-1.png"]
    app.multiselect(key="history_classes").set_value([]).run()
    app.date_input(key="history_dates").set_value((TEN_DAYS_AGO, TEN_DAYS_AGO + timedelta(days=1))).run()
    assert list(the_table(app)["File"]) == ["old.png"]
    app.date_input(key="history_dates").set_value((TODAY, TODAY)).run()
    assert "old.png" not in list(the_table(app)["File"])


def test_the_scans_figure_counts_the_same_scans_as_the_table_refused_ones_included(history_path):
    seed(history_path)
    HistoryStore(history_path).record_refusal(session_id=OURS, reviewer="Ann", file_name="ct.png",
                                              sha256=f"{9:064x}", model_version="tiny 0.0.1-test",
                                              reason="not recognised as a brain MRI slice")
    app = history_page(OURS)
    assert len(the_table(app)) == 3
    assert metric(app, "Scans") == "3"  # Not 2 beside "3 of 3 scans".
    # What a reader looks for comes first, not off-screen to the right after times and hashes.
    assert list(the_table(app).columns[:5]) == ["File", "Model's class", "Status", "Verdict", "Final label"]
    assert any(header.value.startswith("3 of 3 scans") for header in app.subheader)


def test_the_event_view_shows_every_change_of_verdict(history_path, downloads):
    seed(history_path)
    app = history_page(OURS)
    app.segmented_control(key="history_view").set_value("events").run()
    table = the_table(app)
    assert list(table["Event"]) == ["prediction", "prediction", "verdict", "verdict"]
    assert list(table["Verdict"]) == ["", "", "Confirmed", "Overridden"]
    rows = exported_rows(downloads)
    assert [row["kind"] for row in rows] == ["prediction", "prediction", "verdict", "verdict"]
    assert rows[-1]["reason"] == "dural tail" and rows[-1]["final_label"] == "meningioma"


def test_an_empty_history_says_so(history_path):
    app = history_page(OURS)
    assert "Nothing recorded yet" in " ".join(element.value for element in app.info)
    assert not app.download_button


def test_the_tamper_check_shows_the_last_verification_and_runs_one_on_request(history_path):
    seed(history_path)
    app = history_page(OURS)
    assert "has not been verified yet" in " ".join(element.value for element in app.caption)
    app.button(key="history_verify").click().run()
    assert not app.exception, app.exception
    assert "Chain intact when verified at" in app.success[-1].value and "7 events" in app.success[-1].value

    import sqlite3  # Someone with the file edits a note behind the app's back.

    with sqlite3.connect(history_path) as connection:
        connection.execute("DROP TRIGGER events_are_not_updated")
        connection.execute("UPDATE events SET note = 'edited' WHERE id = 5")
    connection.close()
    app.button(key="history_verify").click().run()
    assert "Chain broken" in app.error[-1].value and "event 5" in app.error[-1].value
