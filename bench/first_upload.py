"""What a page's first upload costs the server, against its second: python bench/first_upload.py [--data DIR].

One headless Chromium page opens the app (local mode, a fresh history), waits until it is idle,
then uploads two scans one after the other; for each it prints the time to the bars, the server's
and the browser's CPU seconds, and the files the browser fetched meanwhile. Streamlit's frontend
loads an element's script the first time a page shows one, so the first upload fetches the
scripts of everything the Review page draws for a scan.
"""
import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.app import CHROMIUM, CHROMIUM_ARGS, _cpu_seconds, _scans, _Server, _upload, _wait_for_bars, _wait_idle  # noqa: E402


async def main(files: list[Path]) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as scratch:
        server = _Server(ROOT / "models" / "brainscan-default.keras", Path(scratch))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                await asyncio.to_thread(server.wait_healthy)
                context = await browser.new_context(viewport={"width": 1400, "height": 1000})
                page = await context.new_page()
                await page.goto(server.url)
                await _wait_idle(page)
                await page.get_by_text("Upload brain MRI slices").wait_for()
                await asyncio.sleep(2)  # the page's own loading is over before the clock starts
                fetched: list[str] = []
                page.on("requestfinished", lambda request: fetched.append(request.url))
                for number, path in enumerate(files, start=1):
                    fetched.clear()
                    before, started = _cpu_seconds(server.process.pid), time.perf_counter()
                    await _upload(page, [path])
                    await _wait_for_bars(page, path.name)
                    elapsed, after = time.perf_counter() - started, _cpu_seconds(server.process.pid)
                    scripts = [url for url in fetched if url.endswith((".js", ".css"))]
                    print(f"upload {number}: bars after {elapsed:.2f} s; CPU: server {after['server'] - before['server']:.3f} s, "
                          f"browser {after['browser'] - before['browser']:.3f} s; {len(fetched)} files fetched, "
                          f"{len(scripts)} of them scripts or styles")
                    await asyncio.sleep(2)
            finally:
                await browser.close()
                server.stop()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder of scans (default: synthetic scans)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scans, _ = _scans(arguments.data, 2, Path(folder) / "scans")
        asyncio.run(main(scans[:2]))
