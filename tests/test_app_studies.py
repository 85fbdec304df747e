"""The Studies page through AppTest against a real Orthanc: search, pull a series, review it, read it, send results."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from streamlit.testing.v1 import AppTest

from core.archive.dicomweb import DicomWebArchive
from core.archive.objects import ArchiveReference
from core.archive.pacs import study_series
from core.review.store import HistoryStore
from tests.navigate import open_page
from tests.test_pacs import a_study

ROOT = Path(__file__).resolve().parents[1]


def texts(elements) -> str:
    return " | ".join(str(element.value) for element in elements)


def start() -> AppTest:
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=90)
    app.run()
    app.text_input(key="reviewer_name").input("Ann").run()
    return open_page(app, "studies")


def test_without_a_dicomweb_archive_the_page_says_what_to_set(history_path):
    app = start()
    assert not app.exception, app.exception
    assert "BRAINSCAN_DICOMWEB_URL" in texts(app.info)


def test_a_series_is_found_pulled_reviewed_read_and_its_results_sent_back(history_path, dicomweb_env):
    archive = DicomWebArchive(dicomweb_env.url, dicomweb_env.user, dicomweb_env.password)
    made = a_study(archive)
    app = start()
    app.text_input(key="pacs_patient_id").input(made["patient"])
    app.button(key="pacs_search").click().run()
    assert not app.exception, app.exception
    assert app.selectbox(key="pacs_study").value == made["study"]
    assert "Doe, Jane" in app.selectbox(key="pacs_study").format_func(made["study"])  # shown while reading
    app.selectbox(key="pacs_series").set_value(made["mixed"]).run()
    app.button(key="pacs_pull").click().run()
    series_key = lambda name: f"pacs_{name}_{made['mixed'].replace('.', '_')[-24:]}"  # noqa: E731
    assert not app.exception, app.exception
    assert "5 instances; 3 refused" in texts(app.caption)
    app.slider(key=series_key("slice")).set_value(2).run()
    assert "Slice 2 not classified" in texts(app.error) and "CT" in texts(app.error)
    app.slider(key=series_key("slice")).set_value(1).run()
    assert any("Calibrated probability per class" in element.proto.body for element in app.get("html"))
    assert app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")  # the strip chart
    # A series read needs key slices unless it is a flag; here the first suspicious slice is preselected.
    app.radio(key=series_key("verdict")).set_value("confirm").run()
    app.button(key=series_key("save_read")).click().run()
    assert "Saved the series read" in texts(app.success), texts(app.error)
    assert "Series: Reviewed, final class" in texts(app.caption) and "(confirmed by Ann)" in texts(app.caption)
    store = HistoryStore(history_path)
    [read] = store.series_reads(made["mixed"])
    assert read["reviewer"] == "Ann" and read["verdict"] == "confirm" and read["detail"]["key_slices"]
    # The pulled slices are in the reader's worklist, named by series and image number only.
    assert {row["file_name"] for row in store.worklist("local")} >= {"S7-I0001.dcm", "S7-I0002.dcm"}
    app.button(key=series_key("send_model")).click().run()
    assert "Sent to the archive" in texts(app.success), texts(app.error)
    app.button(key=series_key("send_read")).click().run()
    assert "verified result" in texts(app.success), texts(app.error)
    numbers = [series.number for series in study_series(archive, made["study"])]
    assert 9900 in numbers and 9901 in numbers
    roles = [row["note"] for row in store.results_sent(made["mixed"])]
    assert roles == ["model report", "heat map", "reader report"]
    flags = set()
    for row in store.results_sent(made["mixed"]):
        if row["note"] != "heat map":
            dataset = pydicom.dcmread(io.BytesIO(archive.fetch(ArchiveReference.from_detail(row["detail"]))))
            flags.add(str(dataset.VerificationFlag))
    assert flags == {"UNVERIFIED", "VERIFIED"}
    assert store.verify().intact


def test_a_blind_reviewer_sees_only_their_own_series_read_and_verifies_only_a_final_read_of_their_own(
        history_path, dicomweb_env, monkeypatch):
    from app import identity as app_identity
    from tests.test_app_team import ANN, BOB

    archive = DicomWebArchive(dicomweb_env.url, dicomweb_env.user, dicomweb_env.password)
    made = a_study(archive)
    holder = {"claims": ANN}
    monkeypatch.setattr(app_identity, "sign_in_state", lambda: app_identity.SignIn(team=True, claims=holder["claims"]))
    app_identity._workspaces.clear()
    series_key = lambda name: f"pacs_{name}_{made['mixed'].replace('.', '_')[-24:]}"  # noqa: E731

    def pulled_as(claims):
        holder["claims"] = claims
        app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=90)
        app.run()
        open_page(app, "studies")
        app.text_input(key="pacs_patient_id").input(made["patient"])
        app.button(key="pacs_search").click().run()
        app.selectbox(key="pacs_series").set_value(made["mixed"]).run()
        app.button(key="pacs_pull").click().run()
        assert not app.exception, app.exception
        return app

    ann = pulled_as(ANN)
    ann.radio(key=series_key("verdict")).set_value("confirm").run()
    ann.button(key=series_key("save_read")).click().run()
    assert "(confirmed by Ann Reader)" in texts(ann.caption)

    bob = pulled_as(BOB)  # blind double reading is on by default: Ann's read is not Bob's to see
    assert "Series:" not in texts(bob.caption) and "Ann" not in texts(bob.caption)
    assert not [button for button in bob.button if button.key == series_key("send_read")]
    bob.radio(key=series_key("verdict")).set_value("confirm").run()
    bob.button(key=series_key("save_read")).click().run()
    # Both confirm: the final read is Bob's own latest, so he may verify it, and sees only his own name.
    assert "(confirmed by Bob Reader)" in texts(bob.caption) and "Ann" not in texts(bob.caption)
    assert [button for button in bob.button if button.key == series_key("send_read")]
    app_identity._workspaces.clear()


def test_a_pull_cut_off_halfway_or_of_a_study_gone_says_so_once_and_records_nothing(history_path, dicomweb_env,
                                                                                     monkeypatch):
    from tests.orthanc import cutting_proxy
    from tests.test_pacs import delete_study

    made = a_study(DicomWebArchive(dicomweb_env.url, dicomweb_env.user, dicomweb_env.password))
    with cutting_proxy(dicomweb_env.url, cut_at_retrieve=2) as proxied:
        monkeypatch.setenv("BRAINSCAN_DICOMWEB_URL", proxied)
        app = start()
        app.text_input(key="pacs_patient_id").input(made["patient"])
        app.button(key="pacs_search").click().run()
        app.selectbox(key="pacs_series").set_value(made["axial"]).run()
        app.button(key="pacs_pull").click().run()
        assert not app.exception, app.exception
        [warning] = [text for text in (str(element.value) for element in app.warning) if "Scan archive" in text]
        assert "could not be read whole" in warning and "The series was not pulled" in warning
        assert HistoryStore(history_path).events() == [] and HistoryStore(history_path).worklist("local") == []
        assert not [button for button in app.button if button.key.startswith("pacs_save_read")]

        # The study is deleted from the archive after it was listed: the pull says so, and nothing is recorded.
        delete_study(dicomweb_env, made["study"])
        app.button(key="pacs_pull").click().run()
        assert not app.exception, app.exception
        assert any("no instance of the series" in str(element.value) for element in app.warning), texts(app.warning)
        assert HistoryStore(history_path).events() == []


def test_the_slices_move_from_the_keyboard_and_the_short_list_is_one_key_away(history_path, dicomweb_env):
    made = a_study(DicomWebArchive(dicomweb_env.url, dicomweb_env.user, dicomweb_env.password))
    app = start()
    app.text_input(key="pacs_patient_id").input(made["patient"])
    app.button(key="pacs_search").click().run()
    app.selectbox(key="pacs_series").set_value(made["axial"]).run()
    app.button(key="pacs_pull").click().run()
    key = lambda name: f"pacs_{name}_{made['axial'].replace('.', '_')[-24:]}"  # noqa: E731
    for name, shortcut in (("slice_back", "Alt+Up"), ("slice_forward", "Alt+Down"), ("slice_suspicious", "Alt+S")):
        assert app.button(key=key(name)).proto.shortcut.lower() == shortcut.lower()
    app.button(key=key("slice_back")).click().run()
    assert app.slider(key=key("slice")).value == 1  # never before the first slice
    app.button(key=key("slice_forward")).click().run()
    app.button(key=key("slice_forward")).click().run()
    assert app.slider(key=key("slice")).value == 3
    [short_list] = [element.value for element in app.dataframe if "P(tumour)" in element.value.columns]
    ranked = list(short_list["Slice"])
    app.button(key=key("slice_suspicious")).click().run()
    expected = ranked[(ranked.index(3) + 1) % len(ranked)] if 3 in ranked else ranked[0]
    assert app.slider(key=key("slice")).value == expected
    assert f"Slice {expected}:" in " ".join(str(element.value) for element in app.markdown)


def test_with_the_archive_down_a_search_and_the_command_line_say_so_in_one_line(history_path, monkeypatch, capsys):
    from core.cli import main
    from tests.test_browser import free_port

    monkeypatch.setenv("BRAINSCAN_DICOMWEB_URL", f"http://127.0.0.1:{free_port()}/dicom-web")  # nothing listens
    app = start()
    app.text_input(key="pacs_patient_id").input("PAT-1")
    app.button(key="pacs_search").click().run()
    assert not app.exception, app.exception
    warnings = [str(element.value) for element in app.warning]
    assert len([text for text in warnings if "Scan archive" in text]) == 1, warnings
    assert "cannot be reached" in next(text for text in warnings if "Scan archive" in text)
    assert HistoryStore(history_path).events() == []
    assert main(["pacs", "find", "--patient-id", "PAT-1"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error and error.startswith("error: ")
