"""Team mode in a real browser against a real OpenID Connect provider on loopback (oidc-provider-mock).

Four people sign in through Streamlit's own `st.login`, each in a browser context of their own:
Ann and Bob (reviewers), Sam (second reader) and Nora (signed in, no role). Checks: identity comes
from the ID token, reads are private and blind, a copied URL grants nothing, exports hold only
the exporter's rows, the second reader adjudicates, the history records every event under the
right identity, and a user without a role sees nothing.

Then the team set-up as a hospital runs it: two replicas on one PostgreSQL history and one Orthanc
archive. A scan uploaded and flagged on replica 1 is adjudicated on replica 2 with its picture and
heat map; replica 1 is killed with SIGKILL and restarted, and the reviewer's worklist is still
there; Orthanc holds the scan without any of the upload's identifying tags.
"""

from __future__ import annotations

import csv
import io
import secrets
from pathlib import Path

import pytest

from tests.test_monitor import clock  # noqa: F401  (fixture)
from tests.test_browser import (
    APP_TIMEOUT_MS,
    CHROMIUM_ARGS,
    choose_verdict,
    chromium_path,
    free_port,
    streamlit_server,
    upload,
    wait_for_result,
    wait_until_idle,
)

ROLES = {"ann": ["reviewer"], "bob": ["reviewer"], "sam": ["second_reader"], "nora": [], "ada": ["admin"]}
NAMES = {"ann": "Ann Reader", "bob": "Bob Reader", "sam": "Sam Second", "nora": "Nora Nobody", "ada": "Ada Admin"}


@pytest.fixture
def provider():
    """An OpenID Connect provider on loopback whose users carry a `roles` claim; yields its base URL."""
    mock = pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock is not installed")
    users = [mock.User(sub=sub, claims={"email": f"{sub}@example.org", "email_verified": True, "name": NAMES[sub],
                                        "roles": roles}) for sub, roles in ROLES.items()]
    with mock.run_server_in_thread(port=0, user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture
def team_app(tmp_path, tiny_model_path, provider):
    """(app URL, history path, provider URL, Chromium browser) of the app in team mode."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium: install it with `make browser` (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    port = free_port()
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{secrets.token_hex(32)}"\n'
        'client_id = "brainscan-test"\n'
        'client_secret = "not-a-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
    history = tmp_path / "history.sqlite3"

    def command(port_: int) -> list[str]:
        from deploy.team import replica_command

        return [*replica_command(port_), "--secrets.files", str(secrets_file)]

    with streamlit_server(tiny_model_path, history, tmp_path / "streamlit.log", port=port, command=command) as url:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
            try:
                yield url, history, provider, browser
            finally:
                browser.close()


def sign_in(browser, url: str, subject: str):
    """A fresh browser context signed in as `subject` through the provider's authorisation page; returns the page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(APP_TIMEOUT_MS)
    page.requests = []
    page.on("request", lambda request: page.requests.append(
        (request.url, request.frame.url, request.is_navigation_request())))
    page.goto(url)
    page.get_by_role("button", name="Sign in").wait_for()
    wait_until_idle(page)
    # The sign-in page shows nothing of the app: no page links, no model, no uploader.
    assert page.locator(".st-key-page_links a, [data-testid='stSidebarNav'] a").count() == 0
    assert page.locator("[data-testid='stFileUploader']").count() == 0
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name=subject, exact=True).click()  # the provider's one-click user
    page.wait_for_url(f"{url}/**")
    wait_until_idle(page)
    return page


def adjudicate(page, reason: str) -> None:
    """On Second reads: the first class offered as the final one, with a reason; wait until the queue is empty.

    The page must be idle before the list is opened: a click on the box while a rerun redraws it can be
    swallowed, and the options then never appear (CI once waited 60 s for them). One more click if so.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    wait_until_idle(page)
    box = page.get_by_role("combobox", name="Final label")
    box.click()
    try:
        page.get_by_role("option").first.wait_for(timeout=10_000)
    except PlaywrightTimeoutError:
        wait_until_idle(page)
        box.click()
    page.get_by_role("option").first.click()
    page.get_by_role("textbox", name="Reason (required)").fill(reason)
    page.get_by_role("textbox", name="Reason (required)").blur()
    wait_until_idle(page)
    page.get_by_role("button", name="Record adjudication").click()
    page.get_by_text("Nothing awaits a second read.").wait_for()


def test_two_reviewers_a_second_reader_and_a_user_without_a_role(team_app, tmp_path):
    from core.review.store import HistoryStore
    from tests.synthetic import encode, synthetic_slice

    url, history, provider, browser = team_app
    scan = tmp_path / "shared-case.png"
    scan.write_bytes(encode(synthetic_slice(41, 160)))

    ann = sign_in(browser, url, "ann")
    sidebar = ann.locator("section[data-testid='stSidebar']")
    sidebar.get_by_text("Ann Reader").wait_for()
    assert sidebar.get_by_role("textbox", name="Reviewer name").count() == 0  # identity cannot be typed
    assert "session=" not in ann.url
    upload(ann, scan)
    wait_for_result(ann)
    ann.get_by_text("Flag for second read").click()
    ann.get_by_role("textbox", name="Note (optional)").fill("Ann's private note")
    ann.get_by_role("textbox", name="Note (optional)").blur()
    wait_until_idle(ann)
    ann.get_by_role("button", name="Save verdict").click()
    ann.get_by_text("Saved: flagged for second read.").wait_for()
    ann_url = ann.url

    # Bob, with Ann's URL: his own empty worklist, a blank form for the same scan, nothing of Ann's.
    bob = sign_in(browser, url, "bob")
    bob.goto(ann_url)
    bob.get_by_text("Upload one or more scans to start.").wait_for()
    assert bob.get_by_text("shared-case.png").count() == 0
    upload(bob, scan)
    wait_for_result(bob)
    assert bob.get_by_role("textbox", name="Note (optional)").input_value() == ""
    bob.get_by_text("This scan has been read before (1 read)").wait_for()
    assert bob.get_by_text("Ann", exact=False).count() == 0
    assert bob.get_by_text("private note", exact=False).count() == 0
    choose_verdict(bob, "Confirm")
    bob.get_by_role("button", name="Save verdict").click()
    bob.get_by_text("Saved: confirmed.").wait_for()
    bob.locator("section[data-testid='stSidebar']").get_by_role("link", name="History").click()
    bob.get_by_role("button", name="Export CSV").wait_for()
    wait_until_idle(bob)
    assert bob.locator("section[data-testid='stSidebar']").get_by_role("link", name="Second reads").count() == 0
    with bob.expect_download() as download_info:
        bob.get_by_role("button", name="Export CSV").click()
    exported = Path(download_info.value.path()).read_bytes().decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [row["reviewer"] for row in rows] == ["Bob Reader"] and "private note" not in exported

    # Sam, the second reader: sees both reads and Ann's note, adjudicates.
    sam = sign_in(browser, url, "sam")
    sam.locator("section[data-testid='stSidebar']").get_by_role("link", name="Second reads").click()
    sam.get_by_role("heading", name="Second reads").wait_for()
    sam.get_by_text("Ann's private note", exact=False).wait_for()
    adjudicate(sam, "reviewed at the team meeting")

    # Nora, signed in without a role: no access, no data, and she can sign out.
    nora = sign_in(browser, url, "nora")
    nora.get_by_role("heading", name="No access").wait_for()
    assert nora.locator("[data-testid='stFileUploader']").count() == 0
    assert nora.get_by_text("shared-case.png").count() == 0

    store = HistoryStore(history)
    by_kind = {}
    for event in store.events():
        by_kind.setdefault(event["kind"], []).append((event["actor_subject"], event["actor_role"]))
    assert by_kind["verdict"] == [("ann", "reviewer"), ("bob", "reviewer")]
    assert by_kind["adjudication"] == [("sam", "second_reader")]
    assert by_kind["export"] == [("bob", "reviewer")]
    assert all(event["actor_issuer"] == provider for event in store.events())
    [case] = store.current_state()
    assert case["status"] == "adjudicated"

    # Every request the app's page made went to the app's own origin; only the sign-in navigation leaves
    # it, for the provider (whose own page, not the app's, loads what it likes).
    for page in (ann, bob, sam, nora):
        outside = {address for address, frame, navigation in page.requests
                   if frame.startswith(url) and not address.startswith((url, "data:", "blob:"))
                   and not (navigation and address.startswith(provider))}
        assert outside == set(), outside
    # Signing out ends the provider's session too (OpenID Connect RP-initiated logout): the provider asks
    # to confirm, then sends the browser back to the app, which shows the sign-in page again.
    nora.get_by_role("button", name="Sign out").click()
    nora.wait_for_url(f"{provider}/**")
    nora.get_by_role("button", name="End session").click()
    nora.wait_for_url(f"{url}/**")
    nora.get_by_role("button", name="Sign in").wait_for()
    assert nora.get_by_role("heading", name="No access").count() == 0


def test_the_performance_page_shows_an_admin_the_alert_and_chart_and_a_reviewer_only_their_own(team_app, clock):
    from core.classes import CLASS_NAMES
    from core.review.store import HistoryStore
    from tests.test_app_performance import MODEL
    from tests.test_monitor import probabilities

    url, history, provider, browser = team_app
    store = HistoryStore(history)
    number = 0
    for month, reader in (("2026-01", "ann"), ("2026-02", "ann"), ("2026-03", "ann"), ("2026-03", "bob")):
        clock.at(f"{month}-05")  # the store's clock, in this process: the months are the events' own times
        actor = {"issuer": provider, "subject": reader, "email": f"{reader}@example.org", "name": NAMES[reader],
                 "role": "reviewer"}
        for truth in CLASS_NAMES:
            for _ in range(10 if reader == "bob" else 40):
                number += 1  # In March the model calls no meningioma meningioma; the readers override it.
                predicted = "glioma" if truth == "meningioma" and month == "2026-03" else truth
                case = {"session_id": f"{number:032x}", "file_name": f"scan-{number}.png",
                        "sha256": f"{number:064x}", "model_version": MODEL, "predicted_class": predicted,
                        "probabilities": probabilities(predicted)}
                store.record_upload(owner=reader, reviewer=NAMES[reader], actor=actor,
                                    detail={"scanner": "SIEMENS Skyra", "gate_score": -9.0}, **case)
                store.record_verdict(reviewer=NAMES[reader], actor=actor,
                                     verdict="confirm" if predicted == truth else "override",
                                     override_label=None if predicted == truth else truth,
                                     reason="" if predicted == truth else "meningioma on review", **case)

    ada = sign_in(browser, url, "ada")
    sidebar = ada.locator("section[data-testid='stSidebar']")
    sidebar.get_by_text("performance alert", exact=False).wait_for()
    sidebar.get_by_role("link", name="Open Performance").click()
    ada.get_by_role("heading", name="Performance").wait_for()
    wait_until_idle(ada)
    ada.get_by_text("meningioma sensitivity 0.0%", exact=False).first.wait_for()
    ada.locator("[data-testid='stVegaLiteChart']").first.wait_for()
    assert ada.get_by_text("520 cases, 520 with a final label", exact=False).count() == 1

    ann = sign_in(browser, url, "ann")
    assert ann.locator("section[data-testid='stSidebar']").get_by_text("performance alert", exact=False).count() == 0
    ann.locator("section[data-testid='stSidebar']").get_by_role("link", name="Performance").click()
    ann.get_by_text("Your own reads only", exact=False).wait_for()
    wait_until_idle(ann)
    assert ann.get_by_text("meningioma sensitivity", exact=False).count() == 0
    assert ann.locator("[data-testid='stVegaLiteChart']").count() == 0
    table = ann.locator("[data-testid='stDataFrame']")
    table.first.wait_for()
    with ann.expect_download() as download_info:
        ann.get_by_role("button", name="Figures as CSV").click()
    exported = Path(download_info.value.path()).read_bytes().decode("utf-8-sig")
    readers = {row["reader"] for row in csv.DictReader(io.StringIO(exported)) if row["section"] == "readers"}
    assert readers == {"Ann Reader"}, exported[:500]


# ---------------------------------------------------------------- two replicas, PostgreSQL and Orthanc


def _auth_secrets(path: Path, port: int, provider: str, cookie_secret: str) -> Path:
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{cookie_secret}"\n'
        'client_id = "brainscan-test"\n'
        'client_secret = "not-a-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
    return path


def test_a_scan_uploaded_on_one_replica_is_read_on_another_and_outlives_a_killed_replica(
        tmp_path, tiny_model_path, provider, postgres_server, orthanc_server):
    """Ann uploads and flags on replica 1; Sam adjudicates on replica 2 with the picture and heat map from
    Orthanc; replica 1 is SIGKILLed and restarted and Ann's worklist is still there; Orthanc holds the scan
    without any of the upload's identifying tags."""
    import os
    import signal
    import subprocess

    from core.archive.dicomweb import DicomWebArchive
    from core.review.store import HistoryStore
    from deploy.team import replica_command, stop_process, wait_until_healthy
    from tests.postgres import fresh_postgres_history
    from tests.test_archive import CANARIES, _with_canaries, assert_nothing_identifying

    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium: install it with `make browser` (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    database = fresh_postgres_history(postgres_server)
    cookie_secret = secrets.token_hex(32)
    ports = [free_port(), free_port()]
    environment = dict(os.environ, BRAINSCAN_MODEL=str(tiny_model_path), TF_CPP_MIN_LOG_LEVEL="3",
                       BRAINSCAN_DATABASE_URL=database, **orthanc_server.environment())
    environment.pop("BRAINSCAN_SCAN_DIR", None)

    def start_replica(index: int) -> subprocess.Popen:
        port = ports[index]
        secrets_file = _auth_secrets(tmp_path / f"secrets-{index}.toml", port, provider, cookie_secret)
        log_path = tmp_path / f"replica-{index}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([*replica_command(port), "--secrets.files", str(secrets_file)],
                                       cwd=Path(__file__).resolve().parents[1], env=environment, stdout=log,
                                       stderr=subprocess.STDOUT)
        wait_until_healthy(f"http://127.0.0.1:{port}", process, log_path, timeout=90)
        return process

    scan = tmp_path / "canary-case.dcm"
    scan.write_bytes(_with_canaries(42))
    replicas = [start_replica(0), start_replica(1)]
    first, second = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
            try:
                ann = sign_in(browser, first, "ann")
                upload(ann, scan)
                wait_for_result(ann)
                ann.get_by_text("Flag for second read").click()
                wait_until_idle(ann)
                ann.get_by_role("button", name="Save verdict").click()
                ann.get_by_text("Saved: flagged for second read.").wait_for()

                sam = sign_in(browser, second, "sam")
                sam.locator("section[data-testid='stSidebar']").get_by_role("link", name="Second reads").click()
                sam.get_by_role("heading", name="Second reads").wait_for()
                sam.get_by_text("heat-map over the model's crop", exact=False).wait_for()
                picture = sam.locator("[data-testid='stImage'] img").first
                picture.wait_for()
                assert picture.evaluate("image => image.complete && image.naturalWidth > 0")
                assert sam.get_by_text("not held by this server", exact=False).count() == 0
                adjudicate(sam, "agreed with the first read")

                replicas[0].send_signal(signal.SIGKILL)
                replicas[0].wait(timeout=10)
                replicas[0] = start_replica(0)
                ann.goto(first)
                ann.get_by_text("canary-case.dcm").first.wait_for()  # The worklist, from the history.
                ann.locator("[data-testid='stImage'] img").first.wait_for()  # The picture, from Orthanc.
                wait_until_idle(ann)
                assert ann.get_by_text("Upload one or more scans to start.").count() == 0
            finally:
                browser.close()
    finally:
        for process in replicas:
            if process.poll() is None:
                stop_process(process)

    store = HistoryStore(database)
    kinds = [event["kind"] for event in store.events()]
    assert kinds.count("archive") == 1 and "adjudication" in kinds and store.verify().intact
    [archived] = [event for event in store.events() if event["kind"] == "archive"]
    assert all(canary not in str(archived) for canary in CANARIES)
    archive = DicomWebArchive(orthanc_server.url, orthanc_server.user, orthanc_server.password)
    from core.review.uploads import reference_for

    data = archive.fetch(reference_for(store, archived["sha256"]))
    assert_nothing_identifying(data)
