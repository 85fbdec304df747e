"""The app in a real browser: `streamlit run` on a free port, driven by Playwright with Debian's Chromium.

Also the tool that takes the README screenshot:
    python -m tests.test_browser --screenshot docs/review-page.png [--model M.keras] [--image scan.png]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REVIEWER = "Dr Browser"
# The app's first run imports TensorFlow and loads the model; on a busy two-core machine that is slow.
APP_TIMEOUT_MS = 60_000
BARS = "[role='group'][aria-label='Calibrated probability per class']"  # the Review page's probability bars


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None where none is installed."""
    return next((path for path in CHROMIUM_CANDIDATES if os.access(path, os.X_OK)), shutil.which("chromium"))


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def streamlit_server(model_path: Path, history_path: Path | None, log_path: Path, *, database_url: str | None = None,
                     port: int | None = None, command: list[str] | None = None,
                     extra_environment: dict[str, str] | None = None) -> Iterator[str]:
    """Run `streamlit run streamlit_app.py` on a free port until the block ends; yield its base URL.

    The history is the SQLite file `history_path`, or `database_url` when given (a replica of a
    team set-up). The command line is the one deploy/team.py starts replicas with, unless
    `command(port)`'s is given.
    """
    from deploy.team import replica_command, stop_process, wait_until_healthy

    port = port or free_port()
    environment = dict(os.environ, BRAINSCAN_MODEL=str(model_path), TF_CPP_MIN_LOG_LEVEL="3")
    environment.pop("BRAINSCAN_DATABASE_URL", None)
    if database_url:
        environment["BRAINSCAN_DATABASE_URL"] = database_url
    else:
        environment["BRAINSCAN_HISTORY_DB"] = str(history_path)
    environment.update(extra_environment or {})
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command(port) if command else replica_command(port), cwd=ROOT, env=environment,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, server, log_path, timeout=60)
            yield url
        finally:
            stop_process(server)


@contextmanager
def browser_page(executable: str, width: int = 1400, height: int = 1000):
    """A fresh headless Chromium page of the given viewport size."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(APP_TIMEOUT_MS)
            # Charts that Vega cannot draw fail silently on screen but log an error here.
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            # Resources from the internet (unreachable offline) are not the app's errors.
            page.on("console", lambda message: page.errors.append(message.text)
                    if message.type == "error" and "Failed to load resource" not in message.text else None)
            yield page
        finally:
            browser.close()


def wait_until_idle(page) -> None:
    """Wait until the app has finished its current run (Streamlit's 'running' indicator is gone)."""
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
    page.wait_for_timeout(200)


def name_field_shows(page, name: str) -> None:
    """Wait until the sidebar's name field shows `name`: in a new tab or after a reload the restored name can
    reach the field a fraction of a second after the page first falls idle (0.47 s once, under load)."""
    from playwright.sync_api import expect

    expect(page.locator("section[data-testid='stSidebar']").get_by_role("textbox", name="Reviewer name")) \
        .to_have_value(name, timeout=APP_TIMEOUT_MS)


def enter_reviewer(page, name: str) -> None:
    """Type the reviewer name in the sidebar and commit it."""
    field = page.locator("section[data-testid='stSidebar'] input[type='text']").first
    field.fill(name)
    field.press("Enter")
    field.blur()
    wait_until_idle(page)


def upload(page, path: Path) -> None:
    """Put a file into the Review page's uploader."""
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(path))


def choose_verdict(page, name: str) -> None:
    """Pick a verdict in the form and wait for the page to take it (the save button is enabled then)."""
    page.get_by_text(name, exact=True).click()
    wait_until_idle(page)
    page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => b.innerText.includes("
                           "'Save verdict') && !b.disabled)")


def wait_for_result(page) -> None:
    """Wait until the uploaded scan's probability bars and verdict form are drawn."""
    try:
        page.get_by_text("Calibrated probability").first.wait_for()
    except Exception:  # Say what the page showed instead: a timeout alone tells nothing.
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "brainscan-no-result.png"), full_page=True)
        raise AssertionError("no result was drawn; the page showed:\n" + page.locator("body").inner_text()[-3000:])
    page.locator(BARS).first.wait_for()
    page.get_by_role("button", name="Save verdict").wait_for()
    wait_until_idle(page)


@pytest.fixture
def browser_app(tmp_path, tiny_model_path):
    """(base URL, Chromium page) of the app running the tiny model and a fresh history database."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium: install it with `make browser` (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with streamlit_server(tiny_model_path, tmp_path / "history.sqlite3", tmp_path / "streamlit.log") as url:
        with browser_page(executable) as page:
            yield url, page


def test_upload_review_reload_and_download(browser_app, tmp_path):
    from tests.synthetic import encode, synthetic_slice

    url, page = browser_app
    scan = tmp_path / "browser-scan.png"
    scan.write_bytes(encode(synthetic_slice(21, 160)))
    page.goto(url)
    page.get_by_text("Upload brain MRI slices").wait_for()
    assert "session=" in page.url, "the session id should be kept in the URL so a refresh keeps it"
    enter_reviewer(page, REVIEWER)
    upload(page, scan)
    wait_for_result(page)
    assert page.get_by_text("browser-scan.png").count() >= 1
    # The bars survive the HTML sanitiser: four meters, drawn with a width, that sum to 100%,
    # the longest one being the class and probability the page states.
    meters = page.locator(f"{BARS} [role='meter']")
    assert meters.count() == 4
    values = [float(meters.nth(index).get_attribute("aria-valuenow")) for index in range(4)]
    assert sum(values) == pytest.approx(100.0, abs=0.01)
    assert meters.first.locator("span").bounding_box()["width"] > 0
    stated = page.locator(".brainscan-class-probability").first.inner_text().strip()
    assert stated == f"{max(values):.1f}%"
    assert meters.first.get_attribute("aria-label") == page.locator(".brainscan-class-name").first.inner_text().strip()

    # Nothing is chosen for the reader: the save waits for a verdict.
    assert page.get_by_role("button", name="Save verdict").is_disabled()
    choose_verdict(page, "Confirm")
    page.get_by_role("button", name="Save verdict").click()
    page.get_by_text("Saved: confirmed.").wait_for()

    # A refresh starts a new Streamlit session but keeps the session id: the worklist is still there
    # (without uploading again), and what was saved is read back from the history.
    page.reload()
    page.get_by_text("Saved verdict:").wait_for()
    assert f"by {REVIEWER}" in page.get_by_text("Saved verdict:").inner_text()

    page.get_by_role("link", name="History").click()
    page.get_by_role("button", name="Export CSV").wait_for()
    wait_until_idle(page)
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export CSV").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_bytes().decode("utf-8-sig"))))
    assert len(rows) == 1, rows
    assert rows[0]["file_name"] == "browser-scan.png"
    assert rows[0]["verdict"] == "confirm"
    assert rows[0]["reviewer"] == REVIEWER
    assert rows[0]["final_label"] == rows[0]["predicted_class"]

    page.get_by_role("link", name="Model").click()
    page.get_by_text("Confusion matrix (test)").wait_for()
    wait_until_idle(page)
    page.wait_for_timeout(500)
    assert page.errors == [], f"the browser logged errors: {page.errors}"


def test_earlier_scans_open_on_request_and_stay_open_across_an_upload(browser_app, tmp_path):
    """The "Earlier in this session" table is built only while its expander is open (a lazy expander):
    the browser must open it on a click and keep it open through the next upload's rerun, also when
    that upload takes a scan out of the list (its count changes)."""
    from app.review import EARLIER_TITLE
    from tests.synthetic import encode, synthetic_slice

    url, page = browser_app
    first, second = tmp_path / "earlier-one.png", tmp_path / "earlier-two.png"
    first.write_bytes(encode(synthetic_slice(31, 160)))
    second.write_bytes(encode(synthetic_slice(32, 160)))
    page.goto(url)
    page.get_by_text("Upload brain MRI slices").wait_for()
    enter_reviewer(page, REVIEWER)
    for scan in (first, second):
        upload(page, scan)
        wait_for_result(page)
        page.get_by_role("button", name="Clear worklist").click()
        page.get_by_role("button", name="Yes, clear the worklist").click()
        page.get_by_text("Upload one or more scans to start.").wait_for()
        wait_until_idle(page)
    title = page.get_by_text(EARLIER_TITLE)
    table = page.locator("[data-testid='stExpander'] [data-testid='stDataFrame']")
    assert title.is_visible()
    assert table.count() == 0, "a closed expander's table should not be built"
    title.click()
    page.get_by_text("2 scans of this session").wait_for()
    table.wait_for()
    wait_until_idle(page)
    upload(page, first)  # back in the worklist, so out of the list: 2 -> 1
    wait_for_result(page)
    page.get_by_text("1 scan of this session").wait_for()
    assert table.is_visible(), "the opened expander should stay open through an upload"
    assert page.errors == [], f"the browser logged errors: {page.errors}"


def test_every_page_opened_first_by_its_url_draws_the_sidebar_and_the_page(browser_app):
    # The pages live in pages/, which Streamlit runs the v1 way (that file alone, no sidebar) until
    # st.navigation first runs in the server process: the first request here goes straight to a page.
    url, page = browser_app
    sidebar = page.locator("section[data-testid='stSidebar']")
    # Every link text the page ever shows, from its first paint: Streamlit's own menu once listed the files of
    # pages/ ("streamlit app", "history", ...) for seconds before the app's menu replaced it.
    page.add_init_script("""
        window.linksSeen = new Set();
        new MutationObserver(() => document.querySelectorAll("a").forEach(
            (link) => window.linksSeen.add(link.innerText.trim()))).observe(document, {childList: true, subtree: true});
    """)
    for path, heading in (("history", "History"), ("studies", "Studies"), ("model", "tiny · version"),
                          ("", "Review scans")):
        page.goto(f"{url}/{path}")
        page.get_by_role("heading", name=heading).first.wait_for()
        wait_until_idle(page)
        assert page.url.startswith(f"{url}/{path}?session="), page.url
        # The sidebar may arrive a moment after the page's heading (the pages-folder fallback hands over to
        # st.navigation, which redraws): wait for it, then require exactly one name field.
        sidebar.get_by_role("textbox", name="Reviewer name").first.wait_for()
        assert sidebar.get_by_role("textbox", name="Reviewer name").count() == 1
        assert sidebar.get_by_text("loaded").count() >= 1
        # Local mode's one reviewer holds every role, so the Second reads page is there too.
        assert [" ".join(link.split()[1:]) for link in sidebar.locator(".st-key-page_links a")
                .all_inner_texts()] == ["Review", "Studies", "History", "Performance", "Second reads", "Model"]
        assert page.get_by_text("Page not found").count() == 0
        seen = {" ".join(text.split()) for text in page.evaluate("[...window.linksSeen]")}
        assert not seen & {"streamlit app", "history", "model", "review", "studies", "second reads"}, seen
        if path == "history":
            # The first run was the pages-folder fallback; a name typed now must survive the reruns after it.
            enter_reviewer(page, REVIEWER)
            sidebar.get_by_text("Enter your name to save verdicts").wait_for(state="detached")
            sidebar.get_by_role("link", name="Model").click()
            page.get_by_role("heading", name="tiny · version").first.wait_for()
            wait_until_idle(page)
            name_field_shows(page, REVIEWER)
    assert page.errors == [], f"the browser logged errors: {page.errors}"


def choose_option(page, box: str, option: str) -> None:
    """Open the select box labelled `box` and pick the option whose text contains `option`."""
    wait_until_idle(page)
    field = page.get_by_role("combobox", name=box)
    field.click()
    if field.get_attribute("aria-expanded") != "true":
        field.press("ArrowDown")  # a select box that holds a value opens from the keyboard, not on a click
    page.get_by_role("option").filter(has_text=option).first.click()
    wait_until_idle(page)


def answer_with_reason(page, box: str, option: str, reason_box: str, reason: str, button: str) -> None:
    """Pick `option` in the select box `box`, type `reason` in the text box `reason_box`, and press `button`."""
    choose_option(page, box, option)
    field = page.get_by_role("textbox", name=reason_box)
    field.fill(reason)
    field.blur()
    wait_until_idle(page)
    page.get_by_role("button", name=button).click()


def shows_scan(page, file_name: str) -> bool:
    """Wait until the Review page's scan heading names `file_name`, then whether it is the only scan shown."""
    headings = page.locator("[data-testid='stMarkdownContainer'] h4")
    headings.filter(has_text=re.compile(f"^{re.escape(file_name)}$")).wait_for()
    wait_until_idle(page)
    return [text.strip() for text in headings.all_inner_texts()] == [file_name]


def test_a_reader_walks_the_worklist_reads_a_refused_scan_adjudicates_and_finds_it_all_in_a_new_tab(browser_app,
                                                                                                     tmp_path):
    from tests.synthetic import encode, synthetic_slice

    url, page = browser_app
    files = {"walk-a.png": encode(synthetic_slice(51, 160)), "walk-b.png": encode(synthetic_slice(52, 160)),
             "walk-broken.png": b"this is not a picture"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    page.goto(url)
    page.get_by_text("Upload brain MRI slices").wait_for()
    enter_reviewer(page, REVIEWER)
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(
        [str(tmp_path / name) for name in files])
    wait_for_result(page)
    assert shows_scan(page, "walk-a.png")  # the first new scan

    # Save: the page moves on to the next scan and says there what was saved.
    choose_verdict(page, "Confirm")
    page.get_by_role("button", name="Save verdict").click()
    page.get_by_text("Saved walk-a.png: confirmed.").wait_for()
    assert shows_scan(page, "walk-b.png")

    # Next: the refused file gets the read form without a class, and its read is saved with a reason.
    choose_option(page, "Scan", "walk-broken.png")
    assert shows_scan(page, "walk-broken.png")
    page.locator("[data-testid='stAlert']").filter(has_text="this is a text file, not an image").wait_for()
    assert page.get_by_text("Confirm", exact=True).count() == 0
    choose_verdict(page, "Give my read")
    answer_with_reason(page, "Your read", "Non-diagnostic / unreadable", "Reason for your read (required)",
                       "damaged file", "Save verdict")
    page.get_by_text("Saved walk-broken.png: read (no model class).").wait_for()
    assert shows_scan(page, "walk-b.png")

    # A flag for a second read, adjudicated with an answer that is not a class.
    choose_verdict(page, "Flag for second read")
    page.get_by_role("button", name="Save verdict").click()
    page.get_by_text("Saved: flagged for second read.").wait_for()
    page.get_by_role("link", name="Second reads").click()
    page.get_by_role("button", name="Record adjudication").wait_for()
    wait_until_idle(page)
    answer_with_reason(page, "Final label", "Not a brain MRI slice", "Reason (required)", "a knee coil localiser",
                       "Record adjudication")
    page.get_by_text("Nothing awaits a second read.").wait_for()

    # A new tab on the plain address: the reader, the worklist and their reads are all there.
    tab = page.context.new_page()
    tab.set_default_timeout(APP_TIMEOUT_MS)
    tab.goto(url)
    tab.get_by_text("Saved verdict:").wait_for()
    wait_until_idle(tab)
    name_field_shows(tab, REVIEWER)
    tab.get_by_role("combobox", name="Scan").click()
    options = [" ".join(text.split()) for text in tab.get_by_role("option").all_inner_texts()]
    assert options == ["1. walk-a.png (reviewed)", "2. walk-b.png (adjudicated)", "3. walk-broken.png (reviewed)"], \
        options
    tab.keyboard.press("Escape")
    wait_until_idle(tab)

    # History counts what the table holds, and its export keeps the non-class answers as stable values.
    tab.get_by_role("link", name="History").click()
    tab.get_by_role("button", name="Export CSV").wait_for()
    wait_until_idle(tab)
    metrics = {tab.locator("[data-testid='stMetric']").nth(index).locator("[data-testid='stMetricLabel']")
               .inner_text().strip(): tab.locator("[data-testid='stMetric']").nth(index)
               .locator("[data-testid='stMetricValue']").inner_text().strip()
               for index in range(tab.locator("[data-testid='stMetric']").count())}
    assert (metrics["Scans"], metrics["Reviewed"], metrics["Awaiting second read"], metrics["Adjudicated"]) == (
        "3", "2", "0", "1"), metrics
    with tab.expect_download() as download_info:
        tab.get_by_role("button", name="Export CSV").click()
    rows = {row["file_name"]: row for row in csv.DictReader(io.StringIO(
        Path(download_info.value.path()).read_bytes().decode("utf-8-sig")))}
    assert (rows["walk-broken.png"]["status"], rows["walk-broken.png"]["verdict"],
            rows["walk-broken.png"]["final_label"], rows["walk-broken.png"]["predicted_class"]) == (
        "reviewed", "override", "non_diagnostic", "")
    assert (rows["walk-b.png"]["status"], rows["walk-b.png"]["final_label"]) == ("adjudicated", "not_brain_mri")
    assert page.errors == [], f"the browser logged errors: {page.errors}"


def test_a_series_is_pulled_from_the_pacs_read_and_its_verified_report_is_in_the_archive(tmp_path, tiny_model_path,
                                                                                          orthanc_server):
    import pydicom

    from core.archive.dicomweb import DicomWebArchive
    from core.archive.pacs import series_instances, study_series
    from tests.test_pacs import a_study

    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium: install it with `make browser` (apt-get install chromium)")
    archive = DicomWebArchive(orthanc_server.url, orthanc_server.user, orthanc_server.password, 10.0)
    made = a_study(archive)
    with streamlit_server(tiny_model_path, tmp_path / "history.sqlite3", tmp_path / "streamlit.log",
                          extra_environment=orthanc_server.environment()) as url, browser_page(executable) as page:
        page.goto(f"{url}/studies")
        page.get_by_role("button", name="Search").wait_for()
        enter_reviewer(page, REVIEWER)
        page.get_by_role("textbox", name="Patient ID").fill(made["patient"])
        page.get_by_role("textbox", name="Patient ID").press("Enter")
        wait_until_idle(page)
        page.get_by_role("button", name="Search").click()
        page.get_by_role("button", name="Pull and classify this series").wait_for()
        wait_until_idle(page)
        page.get_by_role("button", name="Pull and classify this series").click()
        page.get_by_text("5 instances; 0 refused").wait_for()
        wait_until_idle(page)
        page.get_by_text("Confirmed", exact=True).click()
        wait_until_idle(page)
        page.get_by_role("button", name="Save series read").click()
        page.get_by_text("Saved the series read of Series 2 AX T2.").wait_for()
        page.get_by_text("Series: Reviewed, final class").wait_for()
        wait_until_idle(page)
        page.get_by_role("button", name="Send the read result to the archive (verified)").click()
        page.get_by_text("Sent to the archive: the verified result of the read.").wait_for()
        wait_until_idle(page)
        # The pulled slices are in the reader's worklist on the Review page.
        page.get_by_role("link", name="Review").click()
        page.get_by_role("combobox", name="Scan").wait_for()
        wait_until_idle(page)
        assert "S2-I0001.dcm" in page.get_by_role("combobox", name="Scan").input_value()
        assert page.errors == [], f"the browser logged errors: {page.errors}"
    # The verified report is in the source study, where a PACS viewer finds it.
    [report_series] = [series for series in study_series(archive, made["study"]) if series.number == 9900]
    [instance] = series_instances(archive, made["study"], report_series.series_uid)
    report = pydicom.dcmread(io.BytesIO(archive.retrieve(made["study"], report_series.series_uid,
                                                         instance.instance_uid)))
    assert str(report.VerificationFlag) == "VERIFIED"
    assert str(report.VerifyingObserverSequence[0].VerifyingObserverName) == "Browser^Dr"


def listening_addresses(port: int) -> set[str]:
    """The local addresses on which something listens on TCP `port`."""
    import psutil

    return {connection.laddr.ip for connection in psutil.net_connections(kind="tcp")
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port}


def test_local_mode_listens_on_loopback_only_and_keeps_name_and_worklist_across_a_reload(tmp_path, tiny_model_path):
    from tests.synthetic import encode, synthetic_slice

    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium at /usr/bin/chromium: install it with `make browser` (apt-get install chromium)")
    port = free_port()
    # `make run`'s command line before this issue, with no address: .streamlit/config.toml must keep it on loopback.
    plain_run = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                 "--server.headless", "true"]
    scan = tmp_path / "local-scan.png"
    scan.write_bytes(encode(synthetic_slice(23, 160)))
    with streamlit_server(tiny_model_path, tmp_path / "history.sqlite3", tmp_path / "streamlit.log", port=port,
                          command=lambda _port: plain_run) as url, browser_page(executable) as page:
        assert listening_addresses(port) == {"127.0.0.1"}
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(url)
        page.get_by_text("Single-reviewer local mode").wait_for()
        assert "200MB" not in page.locator("[data-testid='stFileUploader']").inner_text()
        assert "50MB" in page.locator("[data-testid='stFileUploader']").inner_text().replace(" ", "")
        enter_reviewer(page, REVIEWER)
        upload(page, scan)
        wait_for_result(page)
        page.reload()
        page.get_by_role("button", name="Save verdict").wait_for()
        wait_until_idle(page)
        name_field_shows(page, REVIEWER)
        assert page.get_by_text("local-scan.png").count() >= 1
        assert page.locator("[data-testid='stImage'] img").count() >= 1  # the picture, without uploading again
        choose_verdict(page, "Confirm")
        page.get_by_role("button", name="Save verdict").click()
        page.get_by_text("Saved: confirmed.").wait_for()
        # Every request the page made went to the app's own origin (no fonts or icons from outside hosts).
        outside = sorted({request for request in requests if not request.startswith((url, "data:", "blob:"))})
        assert outside == [], outside
        assert page.errors == [], f"the browser logged errors: {page.errors}"


def take_screenshot(output: Path, model_path: Path, image_path: Path, history_path: Path) -> None:
    """Save a screenshot of the Review page showing `image_path` classified, its bars and the verdict form."""
    executable = chromium_path()
    if executable is None:
        raise SystemExit("no Chromium found: install it with `make browser`")
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "streamlit.log"
        with streamlit_server(model_path, history_path, log_path) as url, browser_page(executable, 1400, 1160) as page:
            page.goto(url)
            page.get_by_text("Upload brain MRI slices").wait_for()
            enter_reviewer(page, "Reviewer A")
            upload(page, image_path)
            wait_for_result(page)
            page.wait_for_timeout(1500)  # Let the charts finish their entry animation.
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output), full_page=True)


def main() -> None:
    from core import config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, required=True, help="where to write the PNG")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: the configured model)")
    parser.add_argument("--image", type=Path, default=None, help="scan to show (default: a synthetic slice)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        image = arguments.image
        if image is None:
            from tests.synthetic import encode, synthetic_slice

            image = Path(scratch) / "synthetic-slice.png"
            image.write_bytes(encode(synthetic_slice(3, 256)))
        take_screenshot(arguments.screenshot, arguments.model or config.model_path(), image,
                        Path(scratch) / "history.sqlite3")
    print(f"wrote {arguments.screenshot}")


if __name__ == "__main__":
    main()
