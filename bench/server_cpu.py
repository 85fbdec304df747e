"""Where the app server's CPU goes in one reader's upload cycle: the page's script runs against the rest.

    python bench/server_cpu.py --data ../shared/datasets/nickparvar-brain-mri [--cycles 30] [--model M.keras]

It starts `streamlit run` in local mode with a fresh history (as `bench/app.py` does) and drives one
headless Chromium page through `--cycles` upload cycles (clear the worklist, choose one scan, wait
for its probability bars), after two cycles of warm-up. Before and after, it reads the server's CPU
seconds from /proc: the whole process, and each thread still alive. Streamlit runs every script
run in a thread of its own that ends with the run, so the CPU of threads that ended is the pages'
script runs (two per cycle: the clear and the upload, inference included); the threads alive at
both readings are the event loop (websockets, media files) and the runtimes' workers. Prints the
server's CPU per cycle and that split; issue 28's floor is 60 ms per upload. The whole process's
figure is what `bench/app.py` reports as server CPU per upload; this one adds where it went.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.app import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    _clear,
    _scans,
    _Server,
    _upload,
    _wait_for_bars,
    _wait_idle,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARM_UP_CYCLES = 2


def _cpu_seconds(stat_path: Path) -> float:
    """User + system CPU seconds from a /proc stat file (fields 14 and 15)."""
    text = stat_path.read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_cpu(pid: int) -> tuple[float, dict[str, float]]:
    """(the whole process's CPU seconds, {thread id: CPU seconds} of the threads alive now)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[task.name] = _cpu_seconds(task / "stat")
        except OSError:  # the thread ended while it was being read
            pass
    return _cpu_seconds(Path(f"/proc/{pid}/stat")), threads


async def _cycles(server: _Server, files: list[Path]) -> tuple[tuple, tuple, int, float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(server.url)
            await _wait_idle(page)
            await page.get_by_text("Upload brain MRI slices").wait_for()
            for index, path in enumerate(files):
                if index == WARM_UP_CYCLES:
                    before, started = server_cpu(server.process.pid), time.perf_counter()
                await _clear(page)
                await _upload(page, [path])
                await _wait_for_bars(page, path.name)
            after = server_cpu(server.process.pid)
            return before, after, len(files) - WARM_UP_CYCLES, time.perf_counter() - started
        finally:
            await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder of brain MRI slices the model classifies")
    parser.add_argument("--cycles", type=int, default=30, help="upload cycles measured (default 30)")
    parser.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or models/brainscan-default.keras)")
    arguments = parser.parse_args()
    if CHROMIUM is None:
        raise SystemExit("error: no Chromium at /usr/bin/chromium (make browser installs it)")
    model = Path(arguments.model or os.environ.get("BRAINSCAN_MODEL") or ROOT / "models" / "brainscan-default.keras")
    with tempfile.TemporaryDirectory(prefix="brainscan-server-cpu-") as scratch_name:
        scratch = Path(scratch_name)
        # A few more than needed: the gate refuses about one real slice in seventy, and a refused scan shows no bars.
        wanted = WARM_UP_CYCLES + arguments.cycles
        files, note = _scans(arguments.data, wanted + wanted // 10 + 2, scratch / "scans")
        from core.model.inference import Classifier
        from core.pipeline import analyse_bytes

        classifier = Classifier.load(model)  # also fills the runtime cache the server will read
        files = [path for path in files if analyse_bytes(classifier, path.read_bytes(), path.name).status == "ok"]
        files = files[:wanted]
        server = _Server(model.resolve(), scratch / "server")
        try:
            server.wait_healthy()
            (total_before, threads_before), (total_after, threads_after), cycles, wall = asyncio.run(
                _cycles(server, files))
        finally:
            server.stop()
    total = total_after - total_before
    alive = sum(seconds - threads_before.get(thread, 0.0) for thread, seconds in threads_after.items())
    print(f"model {model.name}; {cycles} upload cycles of one scan ({note}) in {wall:.1f} s; "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"server CPU per cycle: {total / cycles * 1000:.1f} ms (floor 60 ms per upload)")
    print(f"  script runs (threads that ended): {(total - alive) / cycles * 1000:.1f} ms")
    print(f"  event loop and runtime workers (threads alive throughout): {alive / cycles * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
