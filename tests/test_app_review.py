"""The Review page through Streamlit's AppTest: upload, four probabilities, verdicts, worklist, failures."""

from __future__ import annotations

import hashlib
import html
import os
import re
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.classes import DISPLAY_NAMES
from core.review.store import HistoryStore
from tests.navigate import open_page, shown_class
from tests.synthetic import encode, synthetic_slice

ROOT = Path(__file__).resolve().parents[1]
UPLOADER = "review_uploads_0"



def start(session: str | None = None, reviewer: str | None = "Ann") -> AppTest:
    """The app on its Review page, optionally reopened with a session id in the URL and a reviewer named."""
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    if session:
        app.query_params["session"] = session
    app.run()
    if reviewer:
        app.text_input(key="reviewer_name").input(reviewer).run()
    assert not app.exception, app.exception
    return app


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def chart_probabilities(app: AppTest) -> dict[str, float]:
    """The probability bars' values, read from the meters of the HTML the page sent: {display name: probability}."""
    [bars] = [element for element in app.get("html") if "Calibrated probability per class" in element.proto.body]
    meters = re.findall(r'role="meter" aria-label="([^"]*)"[^>]*aria-valuenow="([0-9.]+)"', bars.proto.body)
    return {html.unescape(name): float(value) / 100.0 for name, value in meters}


def table_with(app: AppTest, column: str):
    """The one data frame on the page that has `column` (data frames are elements, not keyed widgets)."""
    [frame] = [element.value for element in app.dataframe if column in element.value.columns]
    return frame


def earlier_table(app: AppTest):
    """The "Earlier in this session" table, with its expander opened by the reviewer (it is built only while open)."""
    from app.review import EARLIER_OPEN

    if not (EARLIER_OPEN in app.session_state and app.session_state[EARLIER_OPEN]):
        app.session_state[EARLIER_OPEN] = True
        app.run()
    return table_with(app, "Verdict")


def texts(elements) -> str:
    return " | ".join(str(element.value) for element in elements)


def test_an_upload_shows_four_probabilities_and_a_saved_verdict_is_on_disk(history_path):
    scan = encode(synthetic_slice(7, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("scan-7.png", scan, "image/png")).run()
    assert not app.exception, app.exception
    probabilities = chart_probabilities(app)
    assert set(probabilities) == set(DISPLAY_NAMES.values())
    assert sum(probabilities.values()) == pytest.approx(1.0)
    best = max(probabilities, key=probabilities.get)
    assert shown_class(app) == (best, f"{probabilities[best]:.1%}")
    assert "Low confidence" in texts(app.warning)  # An untrained model is never confident.

    app.text_area(key=f"review_note_{key_of(scan)}").input("clear margins").run()
    # Nothing is chosen for the reader: the save is disabled until a verdict is.
    assert app.radio(key=f"review_verdict_{key_of(scan)}").value is None
    assert app.button(key=f"review_save_{key_of(scan)}").disabled
    assert "Choose a verdict" in texts(app.caption)
    app.radio(key=f"review_verdict_{key_of(scan)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(scan)}").click().run()
    assert "Saved: confirmed." in texts(app.success)
    [archived, prediction, verdict] = HistoryStore(history_path).events()
    assert archived["kind"] == "archive" and archived["sha256"] == hashlib.sha256(scan).hexdigest()
    assert (prediction["kind"], verdict["kind"], verdict["verdict"]) == ("prediction", "verdict", "confirm")
    assert verdict["reviewer"] == "Ann" and verdict["note"] == "clear margins"
    assert verdict["file_name"] == "scan-7.png" and verdict["sha256"] == hashlib.sha256(scan).hexdigest()
    assert "Saved verdict: **Confirmed**" in texts(app.info)


def test_reruns_and_page_switches_never_infer_again_or_duplicate_rows(history_path, monkeypatch):
    from core.review import uploads  # The page takes an upload through this module, so patch the name it calls.

    calls = []
    original = uploads.analyse_bytes
    monkeypatch.setattr(uploads, "analyse_bytes", lambda *arguments: calls.append(1) or original(*arguments))
    scan = encode(synthetic_slice(8, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("scan-8.png", scan, "image/png")).run()
    app.radio(key=f"review_verdict_{key_of(scan)}").set_value("flag").run()
    app.text_area(key=f"review_note_{key_of(scan)}").input("draft").run()
    open_page(app, "history")
    open_page(app, "review")
    assert not app.exception, app.exception
    assert len(calls) == 1
    assert [event["kind"] for event in HistoryStore(history_path).events()] == ["archive", "prediction"]
    assert shown_class(app)[0] in DISPLAY_NAMES.values()  # The worklist outlives the page switch.


def test_no_verdict_without_a_reviewer_name(history_path):
    scan = encode(synthetic_slice(9, 96))
    app = start(reviewer=None)
    app.file_uploader(key=UPLOADER).set_value(("scan-9.png", scan, "image/png")).run()
    assert app.button(key=f"review_save_{key_of(scan)}").disabled
    assert "Enter your name" in texts(app.caption)


def test_an_override_needs_a_reason_and_a_change_of_verdict_is_appended(history_path):
    scan = encode(synthetic_slice(10, 96))
    key = key_of(scan)
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("scan-10.png", scan, "image/png")).run()
    app.radio(key=f"review_verdict_{key}").set_value("override").run()
    predicted = next(name for name, shown in DISPLAY_NAMES.items() if shown == shown_class(app)[0])
    override = app.selectbox(key=f"review_override_{key}")
    assert predicted not in override.options
    assert override.value is None  # no class is pre-selected: the reader must choose one
    app.button(key=f"review_save_{key}").click().run()
    assert "choose the class you override the prediction with" in texts(app.error)
    app.selectbox(key=f"review_override_{key}").select_index(0).run()
    app.button(key=f"review_save_{key}").click().run()
    assert "needs a reason" in texts(app.error)
    assert [event["kind"] for event in HistoryStore(history_path).events()] == ["archive", "prediction"]

    app.text_input(key=f"review_reason_{key}").input("=mass effect").run()
    app.button(key=f"review_save_{key}").click().run()
    app.radio(key=f"review_verdict_{key}").set_value("flag").run()
    app.button(key=f"review_save_{key}").click().run()
    events = HistoryStore(history_path).events()
    assert [event["verdict"] for event in events] == [None, None, "override", "flag"]
    assert events[2]["reason"] == "=mass effect" and events[2]["final_label"] != predicted
    [state] = HistoryStore(history_path).current_state()
    assert state["status"] == "flagged"


def test_a_batch_is_a_worklist_with_status_and_next_unreviewed(history_path):
    first, second = encode(synthetic_slice(11, 96)), encode(synthetic_slice(12, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value([
        ("first.png", first, "image/png"), ("second.png", second, "image/png"),
        ("copy-of-first.png", first, "image/png"), ("broken.png", b"not an image", "image/png"),
    ]).run()
    assert not app.exception, app.exception
    worklist = table_with(app, "Probability")
    assert list(worklist["File"]) == ["first.png", "second.png", "broken.png"]  # The copy is the same scan.
    assert list(worklist["Status"]) == ["New", "New", "Refused"]
    assert app.selectbox(key="review_current").value == hashlib.sha256(first).hexdigest()

    assert list(worklist["Model's class"])[2].startswith("Refused: ")  # the reason, not "-"

    app.radio(key=f"review_verdict_{key_of(first)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(first)}").click().run()
    assert list(table_with(app, "Probability")["Status"]) == ["Reviewed", "New", "Refused"]
    # Saving moves on to the next unreviewed scan, and the selector shows the saved one's new status.
    selector = app.selectbox(key="review_current")
    assert selector.value == hashlib.sha256(second).hexdigest()
    assert "1. first.png (reviewed)" in selector.options
    # ... and says so on the scan it lands on, once.
    assert "Saved first.png: confirmed." in texts(app.success).replace("\\", "")
    app.button(key="review_next").click().run()
    assert "Saved first.png" not in texts(app.success)
    assert app.selectbox(key="review_current").value == hashlib.sha256(second).hexdigest()
    app.selectbox(key="review_current").set_value(next(
        option for option in app.selectbox(key="review_current").options if "broken.png" in option)).run()
    assert "Refused" in texts(app.error)
    # Two archived scans and their predictions, the refused file (name, sha256, reason, who uploaded it; no
    # picture, so nothing archived) and one verdict.
    events = HistoryStore(history_path).events()
    assert [event["kind"] for event in events] == ["archive", "prediction", "archive", "prediction", "refusal",
                                                   "verdict"]
    refusal = events[4]
    assert (refusal["file_name"], refusal["reviewer"]) == ("broken.png", "Ann")
    assert refusal["sha256"] == hashlib.sha256(b"not an image").hexdigest() and refusal["reason"]


def test_a_refused_scan_is_read_like_any_other_and_its_refusal_stays_beside_the_read(history_path):
    from core.review.export import CASE_COLUMNS, csv_bytes

    scan = encode(synthetic_slice(13, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value([("scan.png", scan, "image/png"),
                                               ("broken.png", b"not an image", "image/png")]).run()
    broken = key_of(b"not an image")
    app.selectbox(key="review_current").set_value(hashlib.sha256(b"not an image").hexdigest()).run()
    assert "Refused" in texts(app.error)
    # The read form, without a class to confirm: the reader's own read or a flag, nothing chosen.
    verdict = app.radio(key=f"review_verdict_{broken}")
    assert list(verdict.options) == ["Give my read", "Flag for second read"] and verdict.value is None
    verdict.set_value("override").run()
    answers = app.selectbox(key=f"review_override_{broken}")
    assert answers.value is None
    assert list(answers.options)[-2:] == ["Not a brain MRI slice", "Non-diagnostic / unreadable"]
    assert len(answers.options) == 6  # the four classes too
    answers.set_value("non_diagnostic").run()
    app.button(key=f"review_save_{broken}").click().run()
    assert "a read of a scan the model refused needs a reason" in texts(app.error)
    app.text_input(key=f"review_reason_{broken}").input("the file is damaged; ask for a re-export").run()
    app.button(key=f"review_save_{broken}").click().run()
    assert not app.exception, app.exception
    assert "Saved broken.png: read (no model class)." in texts(app.success).replace("\\", "")
    assert dict(zip(table_with(app, "Probability")["File"], table_with(app, "Probability")["Status"])) == {
        "scan.png": "New", "broken.png": "Reviewed"}

    store = HistoryStore(history_path)
    events = store.events()
    assert [event["kind"] for event in events] == ["archive", "prediction", "refusal", "verdict"]
    read = events[-1]
    assert (read["verdict"], read["predicted_class"], read["final_label"]) == ("override", None, "non_diagnostic")
    [case] = [row for row in store.current_state() if row["sha256"] == read["sha256"]]
    assert (case["status"], case["final_label"]) == ("reviewed", "non_diagnostic")
    assert "refusal" in [event["kind"] for event in store.scan_events(read["sha256"], read["model_version"])]
    exported = csv_bytes(store.current_state(), CASE_COLUMNS).decode("utf-8-sig").splitlines()
    [line] = [line for line in exported if "broken.png" in line]
    assert ",override,non_diagnostic,the file is damaged" in line

    # Back on the refused scan, the saved read is shown as the reader's own, and the refusal beside it.
    app.selectbox(key="review_current").set_value(hashlib.sha256(b"not an image").hexdigest()).run()
    assert "Refused" in texts(app.error)
    assert "Read (no model class)" in texts(app.info) and "Non-diagnostic / unreadable" in texts(app.info)
    open_page(app, "history")
    [frame] = [element.value for element in app.dataframe if "Verdict" in element.value.columns]
    row = frame[frame["File"] == "broken.png"].iloc[0]
    assert (row["Verdict"], row["Final label"], row["Status"]) == ("Read (no model class)",
                                                                  "Non-diagnostic / unreadable", "Reviewed")


def test_a_passed_scan_can_be_overridden_as_not_a_brain_mri_slice(history_path):
    scan = encode(synthetic_slice(14, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("knee.png", scan, "image/png")).run()
    key = key_of(scan)
    app.radio(key=f"review_verdict_{key}").set_value("override").run()
    choices = app.selectbox(key=f"review_override_{key}")
    assert "Not a brain MRI slice" in choices.options and len(choices.options) == 5  # three other classes + two
    choices.set_value("not_brain_mri").run()
    app.text_input(key=f"review_reason_{key}").input("a knee, not a head").run()
    app.button(key=f"review_save_{key}").click().run()
    assert "Saved: overridden." in texts(app.success)
    [case] = HistoryStore(history_path).current_state()
    assert (case["status"], case["final_label"]) == ("reviewed", "not_brain_mri")


def test_a_colour_upload_is_shown_in_colour_and_the_original_opens_alone_at_full_size(history_path):
    import cv2
    import numpy as np

    grey = cv2.resize(synthetic_slice(17, 96), (600, 720), interpolation=cv2.INTER_LINEAR)  # wider than kept
    colour = np.stack([grey, (grey * 0.6).astype(np.uint8), (grey * 0.3).astype(np.uint8)], axis=2)  # BGR
    scan = encode(colour)
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("photo.png", scan, "image/png")).run()
    assert not app.exception, app.exception
    [item] = [value for value in app.session_state["review_items"].values()]
    assert item.colour is not None and item.colour.shape == (*item.thumbnail.shape, 3)
    assert max(item.thumbnail.shape) == 512  # the worklist keeps a smaller copy
    assert (item.colour[:, :, 0] != item.colour[:, :, 2]).any()  # still colour, in RGB order
    [image] = app.get("image")
    assert image.proto.imgs[0].caption.endswith("(shown in colour; the model reads it in greyscale)")
    # Sent losslessly: a PNG, never Streamlit's default JPEG for a picture without transparency.
    assert image.proto.imgs[0].url.endswith(".png"), image.proto.imgs[0].url
    app.button(key=f"review_original_{key_of(scan)}").click().run()
    assert not app.exception, app.exception
    captions = [image.proto.imgs[0].caption for image in app.get("image")]
    assert any("photo.png: 600 x 720 pixels, as stored, without the heat map" in caption for caption in captions), captions


def test_a_new_tab_or_a_bookmark_keeps_the_reader_their_worklist_and_their_reads(history_path):
    first, second = encode(synthetic_slice(15, 96)), encode(synthetic_slice(16, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value([("first.png", first, "image/png"),
                                               ("second.png", second, "image/png")]).run()
    app.radio(key=f"review_verdict_{key_of(first)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(first)}").click().run()

    tab = start(reviewer=None)  # the plain address: no session in the URL, nothing typed
    assert tab.session_state["session_id"] != app.session_state["session_id"]
    assert tab.text_input(key="reviewer_name").value == "Ann"
    assert dict(zip(table_with(tab, "Status")["File"], table_with(tab, "Status")["Status"])) == {
        "first.png": "Reviewed", "second.png": "New"}  # never "New" to the reader who read it
    open_page(tab, "history")
    assert not tab.exception, tab.exception
    [frame] = [element.value for element in tab.dataframe if "Verdict" in element.value.columns]
    assert dict(zip(frame["File"], frame["Verdict"])) == {"first.png": "Confirmed", "second.png": ""}


def test_a_refresh_reads_the_saved_verdict_back_from_the_database(history_path):
    scan = encode(synthetic_slice(13, 96))
    app = start()
    session = app.session_state["session_id"]
    app.file_uploader(key=UPLOADER).set_value(("scan-13.png", scan, "image/png")).run()
    app.radio(key=f"review_verdict_{key_of(scan)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(scan)}").click().run()

    refreshed = start(session=session, reviewer=None)  # A new Streamlit session, the same URL.
    # The name and the worklist (picture included) survive the reload, without uploading again.
    assert refreshed.text_input(key="reviewer_name").value == "Ann"
    assert "Enter your name" not in texts(refreshed.caption)  # No hint to type a name beside the filled name.
    assert "Saved verdict: **Confirmed**" in texts(refreshed.info)
    assert refreshed.get("image") or refreshed.get("imgs"), "the scan's picture should be shown again"
    refreshed.file_uploader(key=UPLOADER).set_value(("scan-13.png", scan, "image/png")).run()
    assert "Saved verdict: **Confirmed**" in texts(refreshed.info)
    assert len(HistoryStore(history_path).events()) == 3  # Re-uploading in the same session adds nothing.

    cleared = start(session=session, reviewer=None)
    # Clearing asks first, in a popover that says the history keeps everything.
    assert "The history keeps every prediction and read" in " ".join(str(element.value) for element in cleared.markdown)
    cleared.button(key="review_clear").click().run()
    earlier = earlier_table(cleared)
    assert list(earlier["File"]) == ["scan-13.png"] and list(earlier["Verdict"]) == ["Confirmed"]


def restart_server() -> None:
    """What a restarted app process has in memory: nothing (its cached model, archive and views go too)."""
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()


def test_after_a_restart_the_worklist_and_the_pictures_come_back_from_the_history_and_the_scan_folder(history_path):
    first, second = encode(synthetic_slice(31, 96)), encode(synthetic_slice(32, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value([("first.png", first, "image/png"),
                                               ("second.png", second, "image/png")]).run()
    probabilities = chart_probabilities(app)
    assert len(list(Path(os.environ["BRAINSCAN_SCAN_DIR"]).rglob("*.dcm"))) == 2
    restart_server()

    again = start(reviewer=None)  # A new process, a new tab, no session in the URL, nothing uploaded.
    assert not again.exception, again.exception
    assert list(table_with(again, "Probability")["File"]) == ["first.png", "second.png"]
    assert again.get("image"), "the scan's picture should be shown again"
    assert chart_probabilities(again) == pytest.approx(probabilities)  # Read back byte for byte, classified alike.
    again.button(key="review_clear").click().run()
    restart_server()
    assert not start(reviewer=None).dataframe or "Probability" not in str(start(reviewer=None).dataframe)


def test_a_scan_the_archive_lost_is_listed_as_unavailable_not_a_crash(history_path):
    scan = encode(synthetic_slice(33, 96))
    start().file_uploader(key=UPLOADER).set_value(("lost.png", scan, "image/png")).run()
    for path in Path(os.environ["BRAINSCAN_SCAN_DIR"]).rglob("*.dcm"):
        path.unlink()
    restart_server()
    again = start(reviewer=None)
    assert not again.exception, again.exception
    shown = (texts(again.warning) + texts(again.error) + texts(again.info)).replace("\\", "")
    assert "the picture cannot be shown just now" in shown and "does not hold the scan" in shown


def test_an_upload_the_archive_cannot_take_is_not_in_the_worklist_and_says_why(history_path, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BRAINSCAN_SCAN_DIR", str(blocker / "scans"))
    restart_server()
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("nowhere.png", encode(synthetic_slice(34, 96)), "image/png")).run()
    assert not app.exception, app.exception
    assert "nowhere.png was not added to the worklist" in texts(app.warning).replace("\\", "")
    assert HistoryStore(history_path).events() == []


def test_earlier_scans_stay_in_a_closed_expander_with_or_without_a_worklist(history_path):
    # The page must not open and shut the expander itself between reruns (that animation was about
    # half of the browser's work per upload); the reviewer opens it, and only then is its table built.
    from app.review import EARLIER_OPEN, EARLIER_TITLE

    first, second = encode(synthetic_slice(21, 96)), encode(synthetic_slice(22, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("scan-21.png", first, "image/png")).run()
    assert not app.expander
    app.button(key="review_clear").click().run()
    app.file_uploader(key="review_uploads_1").set_value(("scan-22.png", second, "image/png")).run()
    app.button(key="review_clear").click().run()
    (expander,) = app.expander
    assert (expander.label, expander.proto.expanded) == (EARLIER_TITLE, False)
    # Closed, the table is neither built nor sent (after 120 uploads it was a sixth of the page script's work).
    assert not [element for element in app.dataframe if "Verdict" in element.value.columns]
    app.session_state[EARLIER_OPEN] = True  # the reviewer opens it, once
    app.run()
    assert sorted(table_with(app, "Verdict")["File"]) == ["scan-21.png", "scan-22.png"]
    assert "2 scans of this session" in texts(app.caption)

    # Uploading one of them again takes it out of the list: the count changes, the expander stays open.
    app.file_uploader(key="review_uploads_2").set_value(("scan-22.png", second, "image/png")).run()
    (expander,) = app.expander
    assert expander.label == EARLIER_TITLE
    assert list(table_with(app, "Verdict")["File"]) == ["scan-21.png"]
    assert "1 scan of this session" in texts(app.caption)


def test_earlier_scans_are_read_again_only_when_the_history_has_changed(history_path, monkeypatch):
    first = encode(synthetic_slice(23, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("scan-23.png", first, "image/png")).run()
    app.radio(key=f"review_verdict_{key_of(first)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(first)}").click().run()
    app.button(key="review_clear").click().run()
    assert list(earlier_table(app)["Verdict"]) == ["Confirmed"]
    reads = []
    original = HistoryStore.current_state
    monkeypatch.setattr(HistoryStore, "current_state",
                        lambda self, *args, **kwargs: reads.append(kwargs) or original(self, *args, **kwargs))
    app.run()
    app.run()
    assert not [call for call in reads if call.get("session_id")]  # nothing new: the rows are the kept ones
    # Another replica records a read in this session: the next rerun shows it.
    [case] = HistoryStore(history_path).current_state()
    HistoryStore(history_path).record_verdict(
        session_id=case["session_id"], reviewer="Ann", file_name="scan-23.png", sha256=case["sha256"],
        model_version=case["model_version"], predicted_class=case["predicted_class"], probabilities={},
        verdict="flag", note="second thoughts")
    app.run()
    assert list(table_with(app, "Verdict")["Verdict"]) == ["Flagged for second read"]
    # Only the scan with a new event is read again, not the whole session's cases.
    assert [call.get("sha256s") for call in reads if call.get("session_id")] == [[case["sha256"]]]


def test_earlier_scans_kept_between_reruns_follow_new_cases_in_order(history_path):
    scans = [encode(synthetic_slice(seed, 96)) for seed in (24, 25, 26)]
    app = start()
    for index, scan in enumerate(scans):
        key = UPLOADER if index == 0 else f"review_uploads_{index}"
        app.file_uploader(key=key).set_value((f"scan-{24 + index}.png", scan, "image/png")).run()
        app.button(key="review_clear").click().run()
        assert list(earlier_table(app)["File"]) == [f"scan-{24 + seen}.png" for seen in range(index + 1)]
    # The same as a fresh read of the history in a page reopened on this session.
    [session] = {event["session_id"] for event in HistoryStore(history_path).events()}
    assert list(earlier_table(start(session))["File"]) == ["scan-24.png", "scan-25.png", "scan-26.png"]


def test_a_missing_model_gives_a_clear_page_and_uploads_are_refused_cleanly(history_path, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSCAN_MODEL", str(tmp_path / "absent.keras"))
    app = start()
    assert not app.exception
    assert "absent.keras does not exist" in texts(app.error)
    app.file_uploader(key=UPLOADER).set_value(("scan.png", encode(synthetic_slice(1, 96)), "image/png")).run()
    assert not app.exception
    assert "not classified - no model is loaded" in texts(app.warning)


def test_file_names_are_shown_as_text_and_stored_as_given(history_path):
    name = "**bold** [link](javascript:alert(1)) :red[x] $x$ <b>.png"
    scan = encode(synthetic_slice(14, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value((name, scan, "image/png")).run()
    heading = next(element.value for element in app.markdown if element.value.startswith("#### "))
    for markup in ("**", "[link]", ":red[", "$x$", "<b>"):
        assert markup not in heading
    assert heading.replace("\\", "") == "#### " + name
    assert HistoryStore(history_path).events()[1]["file_name"] == name


def test_no_patient_tag_of_a_dicom_upload_reaches_the_history(history_path):
    pydicom = pytest.importorskip("pydicom")
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    image = synthetic_slice(15, 96)
    dataset.update({"SOPClassUID": MRImageStorage, "SOPInstanceUID": meta.MediaStorageSOPInstanceUID,
                    "Modality": "MR", "PatientName": "Doe^Jane", "PatientID": "PID-99172",
                    "PatientBirthDate": "19700101", "InstitutionName": "St Example Hospital",
                    "Rows": image.shape[0], "Columns": image.shape[1], "SamplesPerPixel": 1,
                    "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 8, "BitsStored": 8,
                    "HighBit": 7, "PixelRepresentation": 0, "PixelData": image.tobytes()})
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    data = buffer.getvalue()
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("slice.dcm", data, "application/dicom")).run()
    assert not app.exception, app.exception
    app.radio(key=f"review_verdict_{key_of(data)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(data)}").click().run()
    assert [event["kind"] for event in HistoryStore(history_path).events()] == ["archive", "prediction", "verdict"]
    with sqlite3.connect(history_path) as connection:
        dump = "\n".join(connection.iterdump())
    stored = dump.encode() + b"".join(path.read_bytes() for path in history_path.parent.glob("history.sqlite3*"))
    archived = [path.read_bytes() for path in Path(os.environ["BRAINSCAN_SCAN_DIR"]).rglob("*.dcm")]
    assert len(archived) == 1  # the scan is archived, de-identified
    stored += archived[0]
    for secret in (b"Doe^Jane", b"Doe", b"PID-99172", b"19700101", b"St Example Hospital"):
        assert secret not in stored


def test_while_the_history_is_down_verdicts_are_refused_and_it_comes_back_without_a_restart(
        postgres_server, tiny_model_path, monkeypatch):
    from tests.postgres import fresh_postgres_history

    url = fresh_postgres_history(postgres_server)
    monkeypatch.setenv("BRAINSCAN_MODEL", str(tiny_model_path))
    monkeypatch.setenv("BRAINSCAN_DATABASE_URL", url)
    scan = encode(synthetic_slice(41, 96))
    app = start()
    app.file_uploader(key=UPLOADER).set_value(("scan-41.png", scan, "image/png")).run()
    app.radio(key=f"review_verdict_{key_of(scan)}").set_value("confirm").run()
    postgres_server.stop()
    try:
        app.button(key=f"review_save_{key_of(scan)}").click().run()
        assert not app.exception, app.exception
        assert "Not saved: the history is unavailable" in texts(app.error)
        assert "Saved:" not in texts(app.success)
        assert "The history is unavailable" in texts(app.error)  # The page's own read of saved verdicts.
        open_page(app, "history")
        assert not app.exception, app.exception
        assert "The history is unavailable" in texts(app.error)
    finally:
        postgres_server.start()
    open_page(app, "review")  # The same server process, no restart: its pool reconnects.
    assert "unavailable" not in texts(app.error)
    app.radio(key=f"review_verdict_{key_of(scan)}").set_value("confirm").run()
    app.button(key=f"review_save_{key_of(scan)}").click().run()
    assert "Saved: confirmed." in texts(app.success)
    assert [event["kind"] for event in HistoryStore(url).events()] == ["archive", "prediction", "verdict"]


def test_make_teams_replicas_say_they_are_a_demonstration_without_sign_in_not_local_mode(history_path, monkeypatch):
    monkeypatch.setenv("BRAINSCAN_TEAM_DEMO", "1")
    captions = texts(start().caption)
    assert "Team set-up without sign-in, for a demonstration" in captions
    assert "Single-reviewer local mode" not in captions


def test_after_an_upload_the_page_shows_the_first_new_scan(history_path):
    first, second, third = (encode(synthetic_slice(seed, 96)) for seed in (35, 36, 37))
    app = start()
    app.file_uploader(key=UPLOADER).set_value([("first.png", first, "image/png"),
                                               ("second.png", second, "image/png")]).run()
    assert app.selectbox(key="review_current").value == hashlib.sha256(first).hexdigest()
    app.file_uploader(key=UPLOADER).set_value([("first.png", first, "image/png"), ("second.png", second, "image/png"),
                                               ("third.png", third, "image/png")]).run()
    assert app.selectbox(key="review_current").value == hashlib.sha256(third).hexdigest()
    app.selectbox(key="review_current").set_value(hashlib.sha256(first).hexdigest()).run()
    assert app.selectbox(key="review_current").value == hashlib.sha256(first).hexdigest()  # Later runs: the choice.


def test_the_worklist_moves_and_confirms_from_the_keyboard(history_path):
    from app.review import NEXT_KEY, NEXT_UNREVIEWED_KEY, PREVIOUS_KEY, SAVE_KEY

    scans = [encode(synthetic_slice(seed, 96)) for seed in (38, 39, 40)]
    app = start()
    app.file_uploader(key=UPLOADER).set_value([(f"k{number}.png", scan, "image/png")
                                               for number, scan in enumerate(scans)]).run()
    shortcuts = {key: app.button(key=key).proto.shortcut for key in ("review_previous", "review_following",
                                                                      "review_next", f"review_save_{key_of(scans[0])}")}
    wanted = {"review_previous": PREVIOUS_KEY, "review_following": NEXT_KEY, "review_next": NEXT_UNREVIEWED_KEY,
              f"review_save_{key_of(scans[0])}": SAVE_KEY}
    assert shortcuts == {key: shortcut.lower().replace("mod+", "ctrl+") for key, shortcut in wanted.items()}
    assert all("+" in shortcut for shortcut in shortcuts.values())  # A modifier: typing a note moves nothing.
    app.button(key="review_following").click().run()
    assert app.selectbox(key="review_current").value == hashlib.sha256(scans[1]).hexdigest()
    app.button(key="review_previous").click().run()
    app.button(key="review_previous").click().run()  # From the first scan round to the last.
    assert app.selectbox(key="review_current").value == hashlib.sha256(scans[2]).hexdigest()


def test_the_shown_picture_is_sent_losslessly_in_its_own_colours():
    import cv2
    import numpy as np

    from app.review import png_bytes

    rng = np.random.default_rng(1)
    for picture in ((rng.random((40, 60)) * 255).astype(np.uint8), (rng.random((40, 60, 3)) * 255).astype(np.uint8)):
        data = png_bytes(picture)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(back if back.ndim == 2 else back[:, :, ::-1], picture)  # RGB, not BGR
