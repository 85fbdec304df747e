"""The browser's own work per upload on the Review page, from Chromium's DevTools metrics.

    python bench/page.py [--data DIR] [--cycles 10] [--model PATH]

Starts `streamlit run` (a fresh history database) and one headless Chromium page, uploads two
scans to warm the page, then runs `--cycles` times "Clear worklist, upload one scan, wait until
its answer is drawn" and prints, per cycle, the renderer main thread's busy time
(`TaskDuration`), the part in JavaScript (`ScriptDuration`), and the layouts and style
recalculations, from `Performance.getMetrics` before and after. It is the profile behind
bench/app.py's browser CPU: compare two commits by running it on each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import app  # noqa: E402  (needs ROOT on the path)

METRICS = ("TaskDuration", "ScriptDuration", "LayoutCount", "RecalcStyleCount")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or models/brainscan-default.keras)")
    parser.add_argument("--data", help="folder of scans (default: synthetic scans)")
    parser.add_argument("--cycles", type=int, default=10, help="measured clear-and-upload cycles")
    arguments = parser.parse_args(argv)
    if app.CHROMIUM is None:
        raise SystemExit("error: no Chromium at /usr/bin/chromium (make browser installs it)")
    from core import config

    model_path = Path(arguments.model) if arguments.model else config.model_path()
    with tempfile.TemporaryDirectory(prefix="brainscan-page-bench-") as scratch:
        scratch = Path(scratch)
        files, note = app._scans(arguments.data, arguments.cycles + 2, scratch / "scans")
        app._warm_runtime_cache(model_path)
        rows = asyncio.run(_measure(model_path, files, scratch))
    print(f"model {model_path}; data: {note}; {len(rows)} cycles after 2 warm-up uploads\n")
    print("| per cycle | median | min | max |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("latency_s",) + METRICS:
        values = [row[name] for row in rows]
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    return 0


async def _measure(model_path: Path, files: list[Path], scratch: Path) -> list[dict]:
    from playwright.async_api import async_playwright

    server = app._Server(model_path, scratch)
    try:
        await asyncio.to_thread(server.wait_healthy)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=app.CHROMIUM, args=app.CHROMIUM_ARGS,
                                                       headless=True)
            try:
                context = await browser.new_context(viewport={"width": 1400, "height": 1000})
                page = await app._open_page(context, server.url)
                devtools = await context.new_cdp_session(page)
                await devtools.send("Performance.enable")
                rows = []
                for index, path in enumerate(files):
                    before = await _metrics(devtools)
                    await app._clear(page)
                    started = time.perf_counter()
                    await app._upload(page, [path])
                    await app._wait_for_bars(page, path.name)
                    latency = time.perf_counter() - started
                    await app._wait_idle(page)
                    after = await _metrics(devtools)
                    if index >= 2:
                        rows.append({"latency_s": latency, **{name: after[name] - before[name] for name in METRICS}})
                return rows
            finally:
                await browser.close()
    finally:
        server.stop()


async def _metrics(devtools) -> dict[str, float]:
    reply = await devtools.send("Performance.getMetrics")
    return {metric["name"]: metric["value"] for metric in reply["metrics"]}


if __name__ == "__main__":
    sys.exit(main())
