"""A review team saving verdicts at once: throughput, save latency, lost events and the hash chain, per engine.

    python bench/team.py [--seconds 10] [--processes 2] [--threads 8] [--think-ms 0] [--json team.json]

Simulated reviewers save verdicts as fast as they can for a bounded time: `--processes` writer
processes (the app's replicas) of `--threads` threads each (the reviewers on that replica), every
save a `HistoryStore.record_verdict` call - the code path of the Review page's "Save verdict",
without the browser and Streamlit around it. Each save is a new event (its own note), timed from
the call to its return, which comes only once the event is committed.

The same load runs twice in one run: on one SQLite file (the baseline, `make run`'s history) and
on PostgreSQL (the team history: a server of its own started in a temporary folder on a free
loopback port, with its durable defaults - fsync and synchronous commit on - the roles of
deploy/postgres-init.sql and the migrations applied by the owning role; the writers connect as
brainscan_app). Nothing leaves 127.0.0.1. Afterwards every event id a writer was told was saved
is looked up in the database ("lost" counts those missing) and the chain is verified.

Exit status 1 when PostgreSQL misses a floor: >= 16 concurrent reviewers, 0 lost, 0 errors, chain
intact, p95 save latency under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOOR_REVIEWERS, FLOOR_P95_MS = 16, 200.0


def worker(url: str, name: str, threads: int, seconds: float, start_at: float, think_ms: float) -> None:
    """One writer process: `threads` reviewers saving until the deadline; prints one JSON line of results."""
    from core.review.store import HistoryStore

    store = HistoryStore(url)
    store.ping()  # Connected and schema-checked before the clock starts.
    saves: list[tuple[int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds

    def review(reviewer: int) -> None:
        # Reviewers think for different times (uniform, 0.5-1.5 x --think-ms, from a random start),
        # so they do not save in lockstep; with no think time they all save flat out.
        pace = random.Random(f"{name}-{reviewer}")
        time.sleep(pace.uniform(0, think_ms) / 1000)
        number = 0
        while time.monotonic() < deadline:
            number += 1
            began = time.perf_counter()
            try:
                event_id = store.record_verdict(
                    session_id=f"{name}-{reviewer}".ljust(32, "0")[:32], reviewer=f"{name} reviewer {reviewer}",
                    file_name=f"scan-{number}.png", sha256=f"{reviewer:08x}{number:056x}", model_version="bench 1",
                    predicted_class="glioma", probabilities={"glioma": 0.9, "meningioma": 0.1},
                    verdict="confirm", note=f"{name} {reviewer} {number}")
            except Exception as error:  # Counted and reported: the bench must finish to say what failed.
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            elapsed_ms = (time.perf_counter() - began) * 1000
            with lock:
                saves.append((event_id, elapsed_ms))
            if think_ms:
                time.sleep(pace.uniform(0.5, 1.5) * think_ms / 1000)

    workers = [threading.Thread(target=review, args=(reviewer,)) for reviewer in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print(json.dumps({"saves": saves, "errors": errors[:20], "error_count": len(errors)}), flush=True)


def run_load(url: str, processes: int, threads: int, seconds: float, think_ms: float) -> dict:
    """Start the writer processes together on `url`, wait for them, then check every save and the chain."""
    from core.review.store import HistoryStore, dispose_engines

    HistoryStore(url).ping()  # Upgrades a new SQLite file before the writers race to.
    dispose_engines()
    start_at = time.time() + 3.0  # Every interpreter is up and connected by then.
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", url, "--threads", str(threads),
               "--seconds", str(seconds), "--start-at", str(start_at), "--think-ms", str(think_ms)]
    writers = [subprocess.Popen([*command, "--name", f"p{index}"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for index in range(processes)]
    results = []
    for writer in writers:
        output, error_output = writer.communicate(timeout=seconds + 120)
        if writer.returncode != 0:
            raise RuntimeError(f"a writer failed: {error_output.strip()[-2000:]}")
        results.append(json.loads(output.strip().splitlines()[-1]))
    saves = [save for result in results for save in result["saves"]]
    latencies = sorted(latency for _, latency in saves)
    store = HistoryStore(url)
    stored = {event["id"] for event in store.events()}
    report = store.verify()
    quantile = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "reviewers": processes * threads, "seconds": seconds, "saves": len(saves),
        "saves_per_second": len(saves) / seconds,
        "p50_ms": quantile[49], "p95_ms": quantile[94], "max_ms": latencies[-1] if latencies else None,
        "errors": sum(result["error_count"] for result in results),
        "error_examples": [error for result in results for error in result["errors"]][:5],
        "lost": len({event_id for event_id, _ in saves} - stored),
        "chain": report.summary(), "chain_intact": report.intact,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the reviewers save, per engine")
    parser.add_argument("--processes", type=int, default=2, help="writer processes (replicas)")
    parser.add_argument("--threads", type=int, default=8, help="reviewers per process")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="mean pause after each save, varied per save (default 0: flat out)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="p0", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        worker(arguments.worker, arguments.name, arguments.threads, arguments.seconds, arguments.start_at,
               arguments.think_ms)
        return 0

    from core.review.store import upgrade_history
    from deploy.team import OWNER, LocalPostgres

    # Two folders: when run as root, the cluster's must be one the postgres user can enter.
    scratch, cluster = (Path(tempfile.mkdtemp(prefix=f"brainscan-bench-{name}-")) for name in ("sqlite", "postgres"))
    figures: dict[str, dict] = {}
    try:
        load = (arguments.processes, arguments.threads, arguments.seconds, arguments.think_ms)
        figures["sqlite"] = run_load(f"sqlite:///{scratch / 'history.sqlite3'}", *load)
        with LocalPostgres(cluster) as server:  # PostgreSQL's durable defaults.
            server.create_history("brainscan")
            upgrade_history(server.url(OWNER))
            figures["postgresql"] = run_load(server.url(), *load)
    finally:
        for folder in (scratch, cluster):
            shutil.rmtree(folder, ignore_errors=True)

    print(f"{arguments.processes} processes x {arguments.threads} reviewers, {arguments.seconds:g} s per engine, "
          f"think time {arguments.think_ms:g} ms, {os.cpu_count()} CPU cores")
    print(f"{'engine':<11} {'saves':>6} {'saves/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'errors':>6} "
          f"{'lost':>5}  chain")
    for engine, row in figures.items():
        print(f"{engine:<11} {row['saves']:>6} {row['saves_per_second']:>8.1f} {row['p50_ms']:>7.1f} "
              f"{row['p95_ms']:>7.1f} {row['max_ms']:>7.1f} {row['errors']:>6} {row['lost']:>5}  {row['chain']}")
        for example in row["error_examples"]:
            print(f"  error: {example}")
    team = figures["postgresql"]
    failures = [text for failed, text in (
        (team["reviewers"] < FLOOR_REVIEWERS, f"fewer than {FLOOR_REVIEWERS} reviewers"),
        (team["lost"] != 0, f"{team['lost']} events lost"), (team["errors"] != 0, f"{team['errors']} errors"),
        (not team["chain_intact"], "chain not intact"),
        (team["p95_ms"] >= FLOOR_P95_MS, f"p95 {team['p95_ms']:.0f} ms >= {FLOOR_P95_MS:.0f} ms")) if failed]
    print("PostgreSQL floors: " + ("met" if not failures else "MISSED - " + "; ".join(failures)))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
