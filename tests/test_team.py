"""The team set-up end to end on loopback: PostgreSQL, two app replicas and nginx (deploy/), driven by two browsers.

The pieces are the ones `make team` starts (deploy/team.py), the browser helpers those of
tests/test_browser.py. One module-scoped set-up serves the tests that need it; the last test kills
a replica and restarts PostgreSQL, so it runs last. The production site configuration
(deploy/nginx/brainscan.conf) is checked with `nginx -t` against a throw-away certificate.
Skipped, saying why, where Chromium, nginx, PostgreSQL or Playwright is missing (`make services`
and `make browser` install them).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from core.review.store import HistoryStore
from deploy.team import Nginx, free_port
from tests.postgres import fresh_postgres_history
from tests.test_browser import (
    APP_TIMEOUT_MS,
    browser_page,
    choose_verdict,
    chromium_path,
    enter_reviewer,
    streamlit_server,
    upload,
    wait_for_result,
    wait_until_idle,
)

REPLICA_HEADER = "X-BrainScan-Replica"  # set by the demonstration's nginx configuration only
COOKIE = "brainscan_route"


def replica_for(base: str, cookie: str | None = None) -> tuple[str, str | None]:
    """(the replica nginx sent a request to, the routing cookie it set) for a GET / with or without a cookie."""
    request = urllib.request.Request(f"{base}/", headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        set_cookie = response.headers.get("Set-Cookie", "")
        value = set_cookie.split(";")[0].split("=", 1)[1] if set_cookie.startswith(f"{COOKIE}=") else None
        return response.headers[REPLICA_HEADER], value


def listening_pid(port: int) -> int:
    """The process that listens on 127.0.0.1:`port` (a replica)."""
    import psutil

    return next(connection.pid for connection in psutil.net_connections("tcp")
                if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN)


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_model_path, postgres_server):
    """(nginx URL, the history's URL, replica ports, the PostgreSQL server) of a running two-replica set-up."""
    for missing, reason in ((chromium_path() is None, "no Chromium: `make browser` installs it"),
                            (shutil.which("nginx") is None, "no nginx: `make services` installs it")):
        if missing:
            pytest.skip(reason)
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    folder = tmp_path_factory.mktemp("team")
    database_url = fresh_postgres_history(postgres_server)
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        for index, port in enumerate(ports, start=1):
            stack.enter_context(streamlit_server(tiny_model_path, None, folder / f"replica-{index}.log",
                                                 database_url=database_url, port=port))
        nginx = stack.enter_context(Nginx(folder / "nginx", free_port(), ports))
        yield f"http://127.0.0.1:{nginx.port}", database_url, ports, postgres_server


def test_the_production_configuration_is_accepted_by_nginx(tmp_path):
    if shutil.which("nginx") is None or shutil.which("openssl") is None:
        pytest.skip("nginx and openssl are needed to check the production configuration")
    nginx_folder = Path(__file__).resolve().parents[1] / "deploy" / "nginx"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    site = (nginx_folder / "brainscan.conf").read_text()
    for installed, here in (("/etc/nginx/snippets/", f"{nginx_folder}/"),
                            ("/etc/ssl/certs/review.example.org.pem", str(tmp_path / "cert.pem")),
                            ("/etc/ssl/private/review.example.org.key", str(tmp_path / "key.pem"))):
        assert installed in site
        site = site.replace(installed, here)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{ include {tmp_path}/site.conf; }}\n")
    check = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                            "-e", str(tmp_path / "error.log")], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_a_browser_is_given_a_routing_cookie_and_stays_on_its_replica(team):
    base, _, ports, _ = team
    replica, cookie = replica_for(base)
    assert cookie and replica in {f"127.0.0.1:{port}" for port in ports}
    assert {replica_for(base, cookie)[0] for _ in range(6)} == {replica}
    assert {replica_for(base, cookie)[1] for _ in range(2)} == {cookie}  # The same key is handed back.
    # Different browsers (different keys) are spread over both replicas.
    assert len({replica_for(base, f"reviewer-{number}")[0] for number in range(24)}) == 2
    # New browser sessions (no cookie yet, each given a fresh key by nginx) spread over the replicas too:
    # 40 of them land 20 +- 6 on each (a binomial share outside 8..32 has probability under 1e-4).
    landed: dict[str, int] = {}
    for _ in range(40):
        replica, fresh = replica_for(base)
        assert fresh and replica_for(base, fresh)[0] == replica  # and each then stays where it landed
        landed[replica] = landed.get(replica, 0) + 1
    print(f"40 new sessions per replica: {landed}")
    assert len(landed) == 2 and min(landed.values()) >= 8, landed


def test_uploads_over_the_apps_limit_stop_at_nginx(team):
    base, *_ = team
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    connection.putrequest("POST", "/")
    connection.putheader("Content-Length", str(51 * 1024 * 1024))  # BRAINSCAN_MAX_UPLOAD_MB is 50.
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()


def test_two_reviewers_on_two_replicas_share_one_history_through_a_kill_and_a_database_restart(team, tmp_path):
    from tests.synthetic import encode, synthetic_slice

    base, database_url, _, server = team
    cookies = {}
    for number in range(50):  # One routing key per replica, as two browsers would draw them.
        cookies.setdefault(replica_for(base, f"browser-{number}")[0], f"browser-{number}")
        if len(cookies) == 2:
            break
    (replica_a, cookie_a), (replica_b, cookie_b) = cookies.items()
    scan = tmp_path / "team-scan.png"
    scan.write_bytes(encode(synthetic_slice(51, 128)))
    executable = chromium_path()
    with browser_page(executable) as page_a:
        # A second reviewer: another context of the same browser, so no cookie or storage is shared.
        page_b = page_a.context.browser.new_context(viewport=page_a.viewport_size).new_page()
        page_b.set_default_timeout(APP_TIMEOUT_MS)
        for page, cookie in ((page_a, cookie_a), (page_b, cookie_b)):
            page.context.add_cookies([{"name": COOKIE, "value": cookie, "url": base}])
        assert page_b.goto(f"{base}/history").headers[REPLICA_HEADER.lower()] == replica_b
        # Without sign-in each replica is in local mode, where History opens on everything recorded.
        page_b.get_by_text("Nothing has been recorded yet.").wait_for()
        assert page_b.get_by_test_id("stCheckbox").filter(has_text="All sessions").locator("input").is_checked()

        assert page_a.goto(base).headers[REPLICA_HEADER.lower()] == replica_a
        enter_reviewer(page_a, "Dr A")
        upload(page_a, scan)
        wait_for_result(page_a)
        choose_verdict(page_a, "Confirm")  # nothing is chosen for the reader
        page_a.get_by_role("button", name="Save verdict").click()
        page_a.get_by_text("Saved: confirmed.").wait_for()

        # B's next rerun, on the other replica, reads A's verdict from the shared history.
        page_b.get_by_text("Every event").click()
        page_b.get_by_text("3 of 3 events").wait_for()  # The scan archived, its prediction, A's verdict.

        # Saves, then SIGKILL of A's replica while one is in flight: every save A saw confirmed is kept.
        note = page_a.get_by_label("Note (optional)")
        confirmed = []
        for number in range(4):
            note.fill(f"save {number}")
            note.blur()
            wait_until_idle(page_a)
            page_a.get_by_role("button", name="Save verdict").click()
            if number == 3:
                os.kill(listening_pid(int(replica_a.rsplit(":", 1)[1])), signal.SIGKILL)
                break
            page_a.get_by_text("Saved: confirmed.").wait_for()
            confirmed.append(f"save {number}")
        notes = [event["note"] for event in HistoryStore(database_url).events()]
        assert set(confirmed) <= set(notes), notes
        # A reloads: nginx sends the page to the surviving replica, which reads A's worklist back from
        # the shared history and the picture from the shared scan archive. Streamlit's own reconnect
        # does not always rerun the page on the new replica, so a reload is what a reviewer may have to do.
        answered_by = page_a.reload().headers[REPLICA_HEADER.lower()]  # "A, B" while nginx still tries A first
        assert answered_by.split(", ")[-1] == replica_b, answered_by
        page_a.get_by_role("heading", name="team-scan.png").wait_for()
        page_a.locator("[data-testid='stImage'] img").first.wait_for()

        # The database goes down: B's page says so instead of failing, and comes back by itself.
        server.stop()
        try:
            page_b.get_by_text("Cases (latest state)").click()
            page_b.get_by_text("The history is unavailable").first.wait_for()
            assert page_b.locator("[data-testid='stException']").count() == 0  # No traceback on the page.
        finally:
            server.start()
        # Nobody touches B's page: it notices the database is back and redraws itself.
        page_b.get_by_text("The history is unavailable").first.wait_for(state="detached", timeout=30_000)
        page_b.get_by_text("1 of 1 scans").wait_for()

    report = HistoryStore(database_url).verify()
    assert report.intact and report.event_count >= 3 + len(confirmed)
