"""The app as reviewers meet it: cold start, browser latency, concurrent sessions and server memory.

    python bench/app.py [--model PATH] [--data DIR] [--sessions 8] [--scans 20] [--rounds 3]

It starts `streamlit run streamlit_app.py` on a free loopback port (a fresh history database, the
given model) and drives headless Chromium (Debian's, /usr/bin/chromium) with Playwright:

1. cold start: from launching `streamlit run` to the first scan's probability bars visible in a
   page that opened the app and uploaded it (the browser itself is started beforehand);
2. latency, one session: choose a file -> its probability bars visible, one scan at a time,
   clearing the worklist in between (median and p95);
3. latency, N concurrent sessions: the same in N browser contexts at once, started when all N
   pages are open and idle (N reviewers at work, not N page loads racing the uploads; the raw
   latencies per session go to --json); every answer is checked against `python -m core
   predict` on the same file (class and calibrated probability shown). As a team works: a second
   server in team mode, signed in through a real OpenID Connect provider on loopback
   (oidc-provider-mock), one reviewer per session with a worklist of their own (in local mode the
   worklist is the machine's, so N sessions would clear each other's);
4. memory: the N signed-in sessions each upload S scans at once (a worklist), clear, and do it
   again for R rounds; the server's resident memory is sampled every 100 ms from /proc, and its
   growth from the end of the first round to the end of the last is reported.
Every wait is bounded; the server is stopped at the end. Exit status 1 if any answer was wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = next((path for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.access(path, os.X_OK)), None)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
BARS = "[role='group'][aria-label='Calibrated probability per class']"  # the Review page's probability bars
WAIT_MS = 120_000  # the longest any single step may take before the bench gives up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or models/brainscan-default.keras)")
    parser.add_argument("--data", help="folder of scans (default: synthetic scans)")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions")
    parser.add_argument("--scans", type=int, default=20, help="scans each session uploads in the memory rounds")
    parser.add_argument("--single", type=int, default=15, help="one-at-a-time uploads in the one-session latency run")
    parser.add_argument("--per-session", type=int, default=5, help="one-at-a-time uploads per concurrent session")
    parser.add_argument("--rounds", type=int, default=3, help="memory rounds (upload S scans, clear)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--streamlit-option", action="append", default=[], metavar="NAME=VALUE",
                        help="extra `streamlit run` option, e.g. runner.postScriptGC=false (repeatable); "
                             "the default measures the app as `make run` starts it")
    arguments = parser.parse_args(argv)
    if CHROMIUM is None:
        raise SystemExit("error: no Chromium at /usr/bin/chromium (make browser installs it)")

    from core import config

    model_path = Path(arguments.model) if arguments.model else config.model_path()
    with tempfile.TemporaryDirectory(prefix="brainscan-app-bench-") as scratch:
        scratch = Path(scratch)
        if not model_path.is_file():
            if arguments.model:
                raise SystemExit(f"error: model {model_path} does not exist")
            from bench.inference import _untrained_model

            model_path = _untrained_model(scratch / "model")
        # The cold start's scan, the one-session run's and every session's; a twentieth more, since the
        # CLI's gate refuses about one real slice in seventy and a refused scan shows no bars to wait for.
        count = max(arguments.sessions * arguments.scans,
                    1 + arguments.single + arguments.sessions * arguments.per_session)
        files, data_note = _scans(arguments.data, count + count // 20 + 1, scratch / "scans")
        runtime, load_s = _warm_runtime_cache(model_path)
        expected = _expected(model_path, files, scratch / "expected.csv")
        files = [path for path in files if expected[path.name]["status"] == "ok"]
        if len(files) < count // 2:
            raise SystemExit(f"error: the model classifies only {len(files)} of {count} scans (the others are "
                             "rejected, e.g. synthetic scans by the out-of-distribution gate); pass --data with "
                             "real brain MRI slices")
        print(f"model {model_path}, runtime {runtime}; {len(files)} scans that the CLI classifies ({data_note})",
              flush=True)
        figures = {"machine": _machine(), "model": str(model_path), "runtime": runtime, "data": data_note,
                   "sessions": arguments.sessions, "scans_per_session": arguments.scans,
                   "streamlit_options": arguments.streamlit_option}
        figures.update(asyncio.run(_bench(arguments, model_path, files, expected, scratch)))
    _print(figures)
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 1 if figures["wrong_answers"] else 0


async def _bench(arguments, model_path: Path, files: list[Path], expected: dict, scratch: Path) -> dict:
    from playwright.async_api import async_playwright

    figures: dict = {"wrong_answers": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # 1. Cold start: the clock starts when `streamlit run` is launched.
            context = await browser.new_context(viewport={"width": 1400, "height": 1000})
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            started = time.perf_counter()
            server = _Server(model_path, scratch, arguments.streamlit_option)
            try:
                await asyncio.to_thread(server.wait_healthy)
                healthy = time.perf_counter() - started
                await page.goto(server.url)
                await _wait_idle(page)
                await page.get_by_text("Upload brain MRI slices").wait_for()
                page_ready = time.perf_counter() - started
                first = files[0]
                await _upload(page, [first])
                await _wait_for_bars(page, first.name)
                figures["cold_start"] = {"server_healthy_s": healthy, "page_ready_s": page_ready,
                                         "first_bars_s": time.perf_counter() - started}
                figures["rss_after_first_prediction_mb"] = server.rss_mb()
                figures["wrong_answers"] += await _check_answer(page, first, expected)
                print(f"cold start: {figures['cold_start']['first_bars_s']:.1f} s", flush=True)

                # 2. One session, one scan at a time.
                latencies = []
                cpu_before = _cpu_seconds(server.process.pid)
                for path in files[1:1 + arguments.single]:
                    latency, wrong = await _timed_upload(page, path, expected)
                    latencies.append(latency)
                    figures["wrong_answers"] += wrong
                figures["single_session"] = _summary(latencies)
                figures["single_session"]["cpu_s_per_upload"] = _cpu_per_upload(cpu_before, server, len(latencies))
                await context.close()
                print(f"one session: median {figures['single_session']['median_s']:.2f} s", flush=True)
            finally:
                figures["server_log_tail"] = server.stop()

            # 3. N signed-in reviewers at once, each one scan at a time, on a team-mode server of their own.
            with _provider(arguments.sessions) as provider:
                server = _Server(model_path, scratch / "team", arguments.streamlit_option, provider=provider)
                try:
                    await asyncio.to_thread(server.wait_healthy)
                    await _team_part(browser, server, arguments, files, expected, figures)
                finally:
                    figures["team_server_log_tail"] = server.stop()
        finally:
            await browser.close()
    return figures


async def _team_part(browser, server, arguments, files: list[Path], expected: dict, figures: dict) -> None:
    """Parts 3 and 4 on the team-mode server: N signed-in reviewers' latencies, then the memory rounds."""
    offset = 1 + arguments.single
    chunks = [files[offset + index * arguments.per_session: offset + (index + 1) * arguments.per_session]
              for index in range(arguments.sessions)]
    # The contexts are closed only after the CPU count: a closed context's renderer
    # process is gone, and its CPU seconds with it.
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in chunks]
    pages = await asyncio.gather(*(_open_page(context, server.url, f"reader{index + 1}")
                                   for index, context in enumerate(contexts)))
    cpu_before = _cpu_seconds(server.process.pid)
    results = await asyncio.gather(*(_session_latencies(page, chunk, expected)
                                     for page, chunk in zip(pages, chunks)))
    concurrent = [latency for latencies, _ in results for latency in latencies]
    figures["concurrent_sessions"] = _summary(concurrent)
    figures["concurrent_sessions"]["latencies_s"] = [latencies for latencies, _ in results]
    figures["concurrent_sessions"]["cpu_s_per_upload"] = _cpu_per_upload(cpu_before, server, len(concurrent))
    for context in contexts:
        await context.close()
    figures["wrong_answers"] += [wrong for _, wrongs in results for wrong in wrongs]
    print(f"{arguments.sessions} sessions: p95 {figures['concurrent_sessions']['p95_s']:.2f} s", flush=True)

    # 4. Memory: N sessions x S scans at once, cleared, R rounds; RSS sampled throughout.
    figures["memory"] = await _memory_rounds(browser, server, arguments, files)


async def _open_page(context, url: str, reader: str | None = None):
    """A page of the app, loaded and idle (signed in as `reader` on a team-mode server): the concurrent
    uploads start once every session is open."""
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(url)
    if reader is not None:
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name=reader, exact=True).click()  # the provider's one-click user
        await page.wait_for_url(f"{url}/**")
    await page.get_by_text("Upload brain MRI slices").wait_for()
    await _wait_idle(page)
    return page


class _provider:
    """An OpenID Connect provider on loopback (oidc-provider-mock) whose users reader1..readerN are reviewers."""

    def __init__(self, readers: int):
        self.readers = readers

    def __enter__(self) -> str:
        import oidc_provider_mock as mock

        users = [mock.User(sub=f"reader{index}", claims={"email": f"reader{index}@example.org", "email_verified": True,
                                                          "name": f"Reader {index}", "roles": ["reviewer"]})
                 for index in range(1, self.readers + 1)]
        self._server = mock.run_server_in_thread(port=0, user_claims=users)
        return f"http://localhost:{self._server.__enter__().server_port}"

    def __exit__(self, *exc_info) -> None:
        self._server.__exit__(*exc_info)


async def _session_latencies(page, files: list[Path], expected: dict) -> tuple[list[float], list[str]]:
    latencies, wrongs = [], []
    for path in files:
        latency, wrong = await _timed_upload(page, path, expected)
        latencies.append(latency)
        wrongs += wrong
    return latencies, wrongs


async def _timed_upload(page, path: Path, expected: dict) -> tuple[float, list[str]]:
    """Clear the worklist, then time choosing `path` until its probability bars are visible."""
    await _clear(page)
    started = time.perf_counter()
    await _upload(page, [path])
    await _wait_for_bars(page, path.name)
    latency = time.perf_counter() - started
    return latency, await _check_answer(page, path, expected)


async def _memory_rounds(browser, server, arguments, files: list[Path]) -> dict:
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - started, server.rss_mb()))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(arguments.sessions)]
    baseline = server.rss_mb()
    after_round = []
    try:
        pages = await asyncio.gather(*(_open_page(context, server.url, f"reader{index + 1}")
                                       for index, context in enumerate(contexts)))
        for round_index in range(arguments.rounds):
            batches = [files[(index * arguments.scans) % len(files):][: arguments.scans] for index in range(len(pages))]
            await asyncio.gather(*(_upload_batch(page, batch) for page, batch in zip(pages, batches)))
            await asyncio.sleep(1.0)  # let the server settle before reading its resident memory
            after_round.append(server.rss_mb())
            print(f"memory round {round_index + 1}: {after_round[-1]:.0f} MB", flush=True)
    finally:
        stop.set()
        sampler.join()
        for context in contexts:
            await context.close()
    return {"rss_before_mb": baseline, "rss_after_each_round_mb": after_round,
            "peak_rss_mb": max(value for _, value in samples), "server_vm_hwm_mb": server.high_water_mb(),
            "growth_first_to_last_round_mb": after_round[-1] - after_round[0], "samples": len(samples)}


async def _upload_batch(page, batch: list[Path]) -> None:
    """Clear, upload a worklist of scans at once and wait until all are classified and shown."""
    await _clear(page)
    await _upload(page, batch)
    try:
        await page.get_by_text(f"{len(batch)} new").first.wait_for()  # the worklist's status line
    except Exception:
        # What the page said instead is the finding; the timeout alone says nothing.
        text = await page.locator("section.main").inner_text(timeout=10_000)
        print(f"a worklist of {len(batch)} did not show '{len(batch)} new'; the page said:\n{text[:3000]}",
              file=sys.stderr, flush=True)
        raise
    await page.locator(BARS).first.wait_for()
    await _wait_idle(page)


async def _clear(page) -> None:
    """Press "Clear worklist" (if shown) and wait until the page holds one empty uploader and no bars."""
    clear = page.get_by_role("button", name="Clear worklist")
    if not await clear.count():
        return
    await _wait_idle(page)
    await clear.click()  # opens the confirmation
    # A click that lands while the page is still redrawing (a signed-in reader's restored worklist) is lost with
    # the old widget; while the confirmation is still open, it is pressed again.
    for attempt in range(3):
        await page.get_by_role("button", name="Yes, clear the worklist").click()
        try:
            await page.locator(BARS).first.wait_for(state="detached", timeout=10_000 if attempt < 2 else WAIT_MS)
            break
        except Exception:
            if attempt == 2:
                raise
            if not await page.get_by_role("button", name="Yes, clear the worklist").count():
                await clear.click()
    await page.locator("[data-testid='stFileUploaderFile']").first.wait_for(state="detached")
    deadline = time.monotonic() + WAIT_MS / 1000
    while await page.locator("[data-testid='stFileUploader'] input[type='file']").count() != 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the cleared page did not settle on one uploader")
        await asyncio.sleep(0.05)
    await _wait_idle(page)


async def _upload(page, paths: list[Path]) -> None:
    await page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files([str(path) for path in paths])


async def _wait_for_bars(page, file_name: str) -> None:
    """The scan's heading, its probability bars and the stated probability above them all drawn.

    The class heading comes before the bars on the page, but it can still be empty for a moment
    after the bars show (run 4 of session 3 read one empty metric once); the answer counts as shown
    when the number is there to read.
    """
    await page.get_by_role("heading", name=file_name).wait_for()
    await page.locator(BARS).first.wait_for()
    await page.locator(".brainscan-class-probability", has_text="%").first.wait_for()


async def _wait_idle(page) -> None:
    await page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")


async def _check_answer(page, path: Path, expected: dict) -> list[str]:
    """The page's class and calibrated probability must be the CLI's for the same file."""
    want = expected[path.name]
    shown_class = (await page.locator(".brainscan-class-name").first.inner_text()).strip()
    shown_probability = (await page.locator(".brainscan-class-probability").first.inner_text()).strip()
    try:
        probability = float(shown_probability.rstrip("%")) / 100.0
    except ValueError:
        probability = float("nan")
    if shown_class != want["display_name"] or not abs(probability - want["probability"]) <= 0.0011:
        return [f"{path.name}: page shows {shown_class} {shown_probability}, "
                f"CLI says {want['display_name']} {want['probability']:.1%}"]
    return []


class _Server:
    """`streamlit run streamlit_app.py` on a free loopback port, with a fresh history database."""

    def __init__(self, model_path: Path, scratch: Path, options: list[str] = (), provider: str | None = None):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        scratch.mkdir(parents=True, exist_ok=True)
        self.log_path = scratch / "streamlit.log"
        if provider is not None:  # team mode: sign-in through the provider, as docs/sign-in.md sets it up
            secrets_file = scratch / "secrets.toml"
            secrets_file.write_text(
                f'[auth]\nredirect_uri = "{self.url}/oauth2callback"\ncookie_secret = "{os.urandom(32).hex()}"\n'
                'client_id = "brainscan-bench"\nclient_secret = "not-a-secret"\n'
                f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
            options = [*options, f"secrets.files={secrets_file}"]
        environment = dict(os.environ, BRAINSCAN_MODEL=str(model_path), PYTHONPATH=str(ROOT),
                           BRAINSCAN_HISTORY_DB=str(scratch / "history.sqlite3"), TF_CPP_MIN_LOG_LEVEL="3")
        command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                   "--server.port", str(port), "--server.address", "127.0.0.1",
                   "--browser.gatherUsageStats", "false"]
        for option in options:
            name, _, value = option.partition("=")
            command += [f"--{name}", value]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"streamlit did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def _status_mb(self, field: str) -> float:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return float("nan")

    def rss_mb(self) -> float:
        return self._status_mb("VmRSS")

    def high_water_mb(self) -> float:
        return self._status_mb("VmHWM")

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        return self.log_path.read_text(errors="replace")[-1500:]


def _warm_runtime_cache(model_path: Path) -> tuple[str, float]:
    """Load the model once here so the server's first load finds the converted network cached."""
    started = time.perf_counter()
    from core.model.inference import Classifier

    classifier = Classifier.load(model_path)
    return classifier.runtime, time.perf_counter() - started


def _expected(model_path: Path, files: list[Path], output: Path) -> dict:
    """What `python -m core predict` says for each file: status, class display name, probability."""
    from core.model.card import load_card

    display_names = load_card(model_path).display_names
    subprocess.run([sys.executable, "-m", "core", "predict", str(files[0].parent), "--model", str(model_path),
                    "--csv", str(output)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                   capture_output=True, timeout=900, check=False)
    expected = {}
    with open(output, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            name = Path(row["file"]).name
            label = row["predicted_class"]
            expected[name] = {"status": row["status"], "display_name": display_names.get(label),
                              "probability": float(row[f"p_{label}"]) if label else float("nan")}
    return expected


def _scans(data: str | None, count: int, folder: Path) -> tuple[list[Path], str]:
    from bench.inference import _scans as make_scans

    return make_scans(data, count, folder)


def _cpu_seconds(server_pid: int) -> dict:
    """CPU seconds used so far by the server and by this bench's Chromium processes."""
    import psutil

    def used(process) -> float:
        try:
            times = process.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    def is_browser(process) -> bool:
        try:
            return process.pid != server_pid and "chrom" in process.name().lower()
        except psutil.Error:  # a short-lived helper process that has already gone
            return False

    browser = sum(used(child) for child in psutil.Process().children(recursive=True) if is_browser(child))
    return {"server": used(psutil.Process(server_pid)), "browser": browser}


def _cpu_per_upload(before: dict, server, uploads: int) -> dict:
    """Server and browser CPU seconds per upload since `before` (closed browser contexts are not counted)."""
    after = _cpu_seconds(server.process.pid)
    return {key: (after[key] - before[key]) / max(uploads, 1) for key in before}


def _machine() -> dict:
    return {"cores": len(os.sched_getaffinity(0)), "load_average_1min": os.getloadavg()[0]}


def _summary(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"n": len(ordered), "median_s": statistics.median(ordered), "p95_s": p95, "max_s": ordered[-1]}


def _print(figures: dict) -> None:
    cold, single, concurrent, memory = (figures["cold_start"], figures["single_session"],
                                        figures["concurrent_sessions"], figures["memory"])
    print(f"\nmachine: {figures['machine']['cores']} cores, load average at start "
          f"{figures['machine']['load_average_1min']:.2f}; runtime {figures['runtime']}; data: {figures['data']}")
    print(f"streamlit options beyond `make run`'s: {' '.join(figures['streamlit_options']) or 'none'}\n")
    print("| measurement | result | target |")
    print("| --- | ---: | ---: |")
    print(f"| cold start: `streamlit run` -> first prediction's bars visible | {cold['first_bars_s']:.1f} s "
          f"(server up {cold['server_healthy_s']:.1f} s, page ready {cold['page_ready_s']:.1f} s) | < 10 s |")
    print(f"| choose a file -> bars visible, 1 session, median (p95) of {single['n']} | "
          f"{single['median_s']:.2f} s ({single['p95_s']:.2f} s) | median < 1 s |")
    print(f"| same, {figures['sessions']} signed-in reviewers at once (team mode), median (p95) of {concurrent['n']} | "
          f"{concurrent['median_s']:.2f} s ({concurrent['p95_s']:.2f} s) | median < 1 s, p95 < 3 s |")
    rounds = ", ".join(f"{value:.0f}" for value in memory["rss_after_each_round_mb"])
    print(f"| server peak RSS, {figures['sessions']} sessions x {figures['scans_per_session']} scans | "
          f"{memory['peak_rss_mb']:.0f} MB (VmHWM {memory['server_vm_hwm_mb']:.0f} MB) | < 1500 MB |")
    print(f"| server RSS after each round (MB) | {rounds}; growth first -> last "
          f"{memory['growth_first_to_last_round_mb']:+.0f} MB | no growth |")
    wrong = figures["wrong_answers"]
    checked = 1 + single["n"] + concurrent["n"]
    for name, figure in (("1 session", single), (f"{figures['sessions']} sessions", concurrent)):
        cpu = figure["cpu_s_per_upload"]
        print(f"CPU per upload, {name}: server {cpu['server'] * 1000:.0f} ms (floor <= 60 ms), browser (at least) "
              f"{cpu['browser'] * 1000:.0f} ms")
    print(f"\ncorrectness: {checked - len(wrong)} of {checked} answers equal `python -m core predict` "
          f"(class and calibrated probability shown)")
    for line in wrong[:10]:
        print(f"  WRONG {line}")


if __name__ == "__main__":
    sys.exit(main())
