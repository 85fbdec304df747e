"""Team mode through AppTest: the sign-in gate, roles, private and blind reads, second reads, worklists per user.

Identity enters the app in one place, `app_identity.sign_in_state()`; these tests replace that
function (AppTest runs the app in this process), which a browser cannot do. The real OpenID
Connect round trip is tests/test_browser_team.py's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import identity as app_identity
from core.review.store import HistoryStore
from tests.navigate import open_page
from tests.synthetic import encode, synthetic_slice

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://id.example.org"
ANN = {"iss": ISSUER, "sub": "ann-1", "email": "ann@example.org", "name": "Ann Reader", "roles": ["reviewer"],
       "exp": 4_000_000_000}
BOB = {**ANN, "sub": "bob-2", "email": "bob@example.org", "name": "Bob Reader"}
SAM = {**ANN, "sub": "sam-3", "email": "sam@example.org", "name": "Sam Second", "roles": ["second_reader"]}
ADA = {**ANN, "sub": "ada-4", "email": "ada@example.org", "name": "Ada Admin", "roles": ["admin"]}
NOBODY = {**ANN, "sub": "no-5", "email": "nobody@example.org", "name": "No Role", "roles": []}


@pytest.fixture
def signed_in(monkeypatch, history_path):
    """Team mode; `signed_in["claims"] = {...}` (or None) says who the next AppTest run is signed in as."""
    holder: dict = {"claims": None}
    monkeypatch.setattr(app_identity, "sign_in_state",
                        lambda: app_identity.SignIn(team=True, claims=holder["claims"]))
    app_identity._workspaces.clear()
    yield holder
    app_identity._workspaces.clear()


def as_user(holder: dict, claims: dict | None, query: dict | None = None) -> AppTest:
    holder["claims"] = claims
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    for name, value in (query or {}).items():
        app.query_params[name] = value
    app.run()
    assert not app.exception, app.exception
    return app


def texts(elements) -> str:
    return " | ".join(str(element.value) for element in elements)


def everything(app: AppTest) -> str:
    return " | ".join(texts(kind) for kind in (app.markdown, app.info, app.caption, app.error, app.success,
                                              app.warning, app.title, app.subheader))


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def upload(app: AppTest, name: str, data: bytes) -> None:
    uploader = next(widget for widget in app.get("file_uploader") if widget.key.startswith("review_uploads_"))
    uploader.set_value((name, data, "image/png")).run()
    assert not app.exception, app.exception


def test_nobody_signed_in_sees_the_sign_in_page_and_no_data(signed_in):
    app = as_user(signed_in, None)
    assert [title.value for title in app.title] == ["BrainScan Review"]
    assert app.button(key="sign_in").label == "Sign in"
    assert not app.get("file_uploader") and not app.text_input and not app.dataframe
    assert "Model" not in everything(app)


def test_a_user_without_a_role_sees_no_access_and_nothing_else(signed_in):
    app = as_user(signed_in, NOBODY)
    assert [title.value for title in app.title] == ["No access"]
    assert "nobody@example\\.org" in texts(app.error)  # escaped for Markdown
    assert app.button(key="no_access_sign_out").label == "Sign out"
    assert not app.get("file_uploader") and not app.dataframe
    # A page's own URL passes the same gate (the front door's): still nothing.
    signed_in["claims"] = NOBODY
    history = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    history._page_hash = __import__("streamlit.util", fromlist=["calc_hash"]).calc_hash("history")
    history.run()
    assert [title.value for title in history.title] == ["No access"] and not history.dataframe


def test_reads_are_private_blind_and_recorded_under_the_signed_in_identity(signed_in, history_path):
    scan = encode(synthetic_slice(31, 96))
    key = key_of(scan)
    ann = as_user(signed_in, ANN, query={"session": "f" * 32})
    assert "session" not in ann.query_params  # no session id in the URL in team mode
    assert "Ann Reader" in everything(ann) and not ann.text_input  # identity shown, cannot be typed
    upload(ann, "case.png", scan)
    ann.radio(key=f"review_verdict_{key}").set_value("flag").run()
    ann.text_area(key=f"review_note_{key}").input("Ann's private note").run()
    ann.button(key=f"review_save_{key}").click().run()
    assert "Saved: flagged for second read." in texts(ann.success)

    bob = as_user(signed_in, BOB)
    assert not any(element.value for element in bob.get("file_uploader"))
    upload(bob, "case.png", scan)
    # A blank form: not Ann's note, not Ann's verdict; that it was read before, not by whom or what.
    assert bob.text_area(key=f"review_note_{key}").value == ""
    assert "Saved verdict" not in texts(bob.info)
    page = everything(bob)
    assert "Ann" not in page and "private note" not in page
    assert "read before (1 read)" in page
    bob.radio(key=f"review_verdict_{key}").set_value("confirm").run()
    bob.button(key=f"review_save_{key}").click().run()
    [case] = HistoryStore(history_path).current_state()
    assert case["status"] == "flagged"
    reads = {read["actor_subject"]: read for read in case["reads"]}
    assert reads["ann-1"]["note"] == "Ann's private note" and reads["bob-2"]["note"] == ""
    assert (reads["bob-2"]["actor_issuer"], reads["bob-2"]["actor_email"], reads["bob-2"]["actor_role"]) == (
        ISSUER, "bob@example.org", "reviewer")

    # Bob's "earlier" list shows his own read of the scan, not the latest read by anyone.
    bob.button(key="review_clear").click().run()
    from app.review import EARLIER_OPEN

    bob.session_state[EARLIER_OPEN] = True  # Bob opens it: its table is built only while open
    bob.run()
    [earlier] = [element.value for element in bob.dataframe if "Verdict" in element.value.columns]
    assert list(earlier["Reviewer"]) == ["Bob Reader"] and list(earlier["Verdict"]) == ["Confirmed"]

    # Bob's History holds his own read only; no tamper check, no "All sessions".
    open_page(bob, "history")
    assert not bob.exception, bob.exception
    assert "private note" not in " ".join(str(frame.value.to_dict()) for frame in bob.dataframe)
    assert not [toggle for toggle in bob.toggle if toggle.key == "history_all_sessions"]
    assert "Tamper check" not in everything(bob)
    # A reviewer has no Second reads page.
    open_page(bob, "review")
    assert "second-reads" not in str(bob._tree)

    # Ann's worklist survives her reload, without a session id in the URL.
    again = as_user(signed_in, ANN)
    assert "#### case\\.png" in everything(again)  # escaped for Markdown
    assert "Saved verdict" in texts(again.info)


def disputed_reads(signed_in, scan: bytes) -> None:
    """Ann confirms the scan and Bob flags it, each with a note naming them: a case for the second reader."""
    key = key_of(scan)
    for claims, verdict in ((ANN, "confirm"), (BOB, "flag")):
        app = as_user(signed_in, claims)
        upload(app, "disputed.png", scan)
        app.radio(key=f"review_verdict_{key}").set_value(verdict).run()
        app.text_area(key=f"review_note_{key}").input(f"note by {claims['name']}").run()
        app.button(key=f"review_save_{key}").click().run()


def test_a_second_reader_sees_every_read_and_adjudicates(signed_in, history_path):
    scan = encode(synthetic_slice(32, 96))
    key = key_of(scan)
    disputed_reads(signed_in, scan)

    sam = as_user(signed_in, SAM)
    open_page(sam, "second-reads")
    assert not sam.exception, sam.exception
    page = everything(sam)
    assert "Ann Reader" in page and "Bob Reader" in page and "note by Ann Reader" in page
    sam.button(key=f"second_save_{key}").click().run()
    assert "choose the final label" in texts(sam.error)
    sam.selectbox(key=f"second_class_{key}").set_value("pituitary").run()
    sam.text_input(key=f"second_reason_{key}").input("consensus at review meeting").run()
    sam.button(key=f"second_save_{key}").click().run()
    assert "Adjudicated" in texts(sam.success)
    assert "Nothing awaits a second read" in texts(sam.info)
    [case] = HistoryStore(history_path).current_state()
    assert (case["status"], case["final_label"]) == ("adjudicated", "pituitary")
    assert case["adjudication"]["actor_subject"] == "sam-3"

    # The admin's History shows the status and the chain of reads, everyone's.
    ada = as_user(signed_in, ADA)
    open_page(ada, "history")
    ada.toggle(key="history_all_sessions").set_value(True).run()
    [frame] = [element.value for element in ada.dataframe if "Reads" in element.value.columns]
    assert list(frame["Status"]) == ["Adjudicated"]
    assert "Ann Reader: confirmed" in frame["Reads"][0] and "adjudicated by Sam Second" in frame["Reads"][0]
    assert "Tamper check" in everything(ada)


def test_a_refused_scan_flagged_by_its_reader_is_adjudicated_with_a_non_class_answer(signed_in, history_path):
    broken = b"not an image at all"
    key = key_of(broken)
    ann = as_user(signed_in, ANN)
    upload(ann, "refused.png", broken)
    assert "Refused" in texts(ann.error)
    ann.radio(key=f"review_verdict_{key}").set_value("flag").run()
    ann.button(key=f"review_save_{key}").click().run()
    assert "Saved: flagged for second read." in texts(ann.success)

    sam = as_user(signed_in, SAM)
    open_page(sam, "second-reads")
    assert not sam.exception, sam.exception
    page = everything(sam)
    assert "no class" in page and "Refused" in page  # the refusal stays beside the read
    final = sam.selectbox(key=f"second_class_{key}")
    assert "Not a brain MRI slice" in final.options and "Non-diagnostic / unreadable" in final.options
    final.set_value("non_diagnostic").run()
    sam.text_input(key=f"second_reason_{key}").input("damaged file; the PACS copy is read instead").run()
    sam.button(key=f"second_save_{key}").click().run()
    assert "Adjudicated" in texts(sam.success)
    [case] = HistoryStore(history_path).current_state()
    assert (case["status"], case["final_label"], case["predicted_class"]) == ("adjudicated", "non_diagnostic", None)
    assert [event["kind"] for event in HistoryStore(history_path).events()] == ["refusal", "verdict", "adjudication"]


def test_a_series_read_differently_by_two_readers_is_adjudicated_on_second_reads(signed_in, history_path,
                                                                                  tiny_classifier):
    from core.review.series import series_key

    store = HistoryStore(history_path)
    common = dict(session_id="s" * 32, series_name="S3 AX T1 post", study_uid="1.2.9", series_uid="1.2.9.3",
                  model_version=tiny_classifier.version, predicted_class="glioma", slice_count=20)
    store.record_series_read(**common, reviewer="Ann Reader", verdict="confirm", key_slices=["a" * 64])
    store.record_series_read(**common, reviewer="Bob Reader", verdict="override", override_label="meningioma",
                             reason="dural tail on slice 12", key_slices=["c" * 64])
    key = series_key("1.2.9.3")[:16]

    sam = as_user(signed_in, SAM)
    open_page(sam, "second-reads")
    assert not sam.exception, sam.exception
    assert sam.selectbox(key="second_current").format_func(sam.selectbox(key="second_current").value) \
        .startswith("Series S3 AX T1 post")
    page = everything(sam)
    assert "20 slices" in page and "dural tail on slice 12" in page and "Glioma" in page
    final = sam.selectbox(key=f"second_class_{key}")
    assert "Not a brain MRI slice" not in final.options  # a series' final label is a class
    final.set_value("meningioma").run()
    sam.text_input(key=f"second_reason_{key}").input("consensus").run()
    sam.button(key=f"second_save_{key}").click().run()
    assert "Adjudicated" in texts(sam.success), texts(sam.error)
    case = store.series_case("1.2.9.3", tiny_classifier.version)
    assert (case["status"], case["final_label"], case["adjudication"]["actor_subject"]) == (
        "adjudicated", "meningioma", "sam-3")


def test_after_an_adjudication_a_first_reader_who_sees_reads_is_told_the_final_label(signed_in, history_path,
                                                                                      monkeypatch):
    from core.classes import DISPLAY_NAMES

    monkeypatch.setenv("BRAINSCAN_BLIND_READS", "0")
    scan = encode(synthetic_slice(33, 96))
    key = key_of(scan)
    disputed_reads(signed_in, scan)
    sam = as_user(signed_in, SAM)
    open_page(sam, "second-reads")
    sam.selectbox(key=f"second_class_{key}").set_value("pituitary").run()
    sam.text_input(key=f"second_reason_{key}").input("consensus at review meeting").run()
    sam.button(key=f"second_save_{key}").click().run()

    bob = as_user(signed_in, BOB)  # His worklist comes back from the history: no upload needed.
    assert not bob.exception, bob.exception
    saved = texts(bob.info)
    assert f"final label **{DISPLAY_NAMES['pituitary']}** (adjudicated)" in saved, saved
    assert "none yet" not in saved and "awaiting" not in saved
    assert any(expander.label == "Other reads of this scan (1) and its adjudication" for expander in bob.expander)
    # In his worklist the scan he flagged is adjudicated now, not still "flagged".
    upload(bob, "another.png", encode(synthetic_slice(34, 96)))
    [frame] = [element.value for element in bob.dataframe if "Status" in element.value.columns]
    assert dict(zip(frame["File"], frame["Status"])) == {"disputed.png": "Adjudicated", "another.png": "New"}


def test_an_expired_id_token_signs_the_user_out_whatever_streamlits_cookie_says(signed_in, monkeypatch):
    import streamlit

    calls = []
    monkeypatch.setattr(streamlit, "logout", lambda: calls.append("logout"))
    app = as_user(signed_in, {**ANN, "exp": 1_000})
    assert calls == ["logout"]
    assert not app.get("file_uploader") and not app.dataframe


def test_the_uploaders_limit_is_the_apps_own_and_local_mode_listens_on_loopback():
    import tomllib

    from core import config

    settings = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["maxUploadSize"] * 1024 * 1024 == config.max_upload_bytes()
    assert settings["server"]["address"] == "127.0.0.1"


def test_with_blind_reading_off_a_reviewer_sees_earlier_reads_with_their_notes(signed_in, monkeypatch):
    monkeypatch.setenv("BRAINSCAN_BLIND_READS", "0")
    scan = encode(synthetic_slice(33, 96))
    key = key_of(scan)
    ann = as_user(signed_in, ANN)
    upload(ann, "open.png", scan)
    ann.text_area(key=f"review_note_{key}").input("visible note").run()
    ann.radio(key=f"review_verdict_{key}").set_value("confirm").run()
    ann.button(key=f"review_save_{key}").click().run()
    bob = as_user(signed_in, BOB)
    upload(bob, "open.png", scan)
    assert "Ann Reader" in everything(bob) and "visible note" in everything(bob)
    assert bob.text_area(key=f"review_note_{key}").value == ""  # still his own, blank form


def test_make_run_listens_on_loopback_unless_told_otherwise_and_then_warns():
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plain = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "--server.address 127.0.0.1" in plain
    opened = subprocess.run(["make", "-n", "run", "BRAINSCAN_LISTEN=0.0.0.0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60).stdout
    assert "--server.address 0.0.0.0" in opened and "WARNING: listening on 0.0.0.0" in opened


def test_a_secrets_file_that_does_not_parse_fails_closed(monkeypatch, tmp_path):
    """A broken [auth] configuration must not drop a team's deployment into local mode with typed names."""
    import streamlit as st

    from app import identity as app_identity

    broken = tmp_path / "secrets.toml"
    broken.write_text("[auth\nclient_id = ")
    monkeypatch.delenv("BRAINSCAN_MODE", raising=False)
    monkeypatch.setattr(app_identity, "_secrets_files", lambda: [broken])
    monkeypatch.setattr(st.secrets, "load_if_toml_exists", lambda: False)  # Streamlit's answer to a parse error
    assert app_identity._auth_configured() is True  # team mode: sign-in required, nothing shown without it
    assert "cannot be read" in app_identity._secrets_problem()


def test_a_declared_team_deployment_without_sign_in_settings_serves_nothing(monkeypatch):
    from app import identity as app_identity

    monkeypatch.setattr(app_identity, "_secrets_files", lambda: [])
    monkeypatch.delenv("BRAINSCAN_MODE", raising=False)
    assert app_identity._auth_configured() is False  # nothing declared, no secrets: local mode
    monkeypatch.setenv("BRAINSCAN_MODE", "team")
    assert app_identity._auth_configured() is True
    assert "BRAINSCAN_MODE=team" in app_identity._secrets_problem()


def test_a_button_pressed_after_the_sign_in_expired_or_the_role_went_records_nothing(monkeypatch):
    """Callbacks run before the page's gate: they check the identity again themselves."""
    import time

    import pytest

    from app import identity as app_identity
    from core.review.records import VerdictRejected

    def signed_in_as(claims):
        monkeypatch.setattr(app_identity, "sign_in_state", lambda: app_identity.SignIn(team=True, claims=claims))

    signed_in_as({**ANN, "exp": time.time() - 60})
    with pytest.raises(VerdictRejected, match="expired"):
        app_identity.acting_identity("reviewer")
    signed_in_as({**NOBODY, "exp": time.time() + 600})
    with pytest.raises(VerdictRejected, match="role"):
        app_identity.acting_identity("reviewer")
    signed_in_as({**ANN, "exp": time.time() + 600})
    assert app_identity.acting_identity("reviewer").subject == "ann-1"
    with pytest.raises(VerdictRejected, match="role"):
        app_identity.acting_identity("second_reader")  # a reviewer cannot adjudicate
    signed_in_as(None)
    with pytest.raises(VerdictRejected, match="not signed in"):
        app_identity.acting_identity()
