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

The scan archive then gets the same 16 readers (`--processes` x `--threads`): each stores a scan
it has not stored before and reads it back, as an upload on one replica and its second reader on
another do - STOW-RS then WADO-RS (with the sha256 check) against Orthanc with its DICOMweb plugin
(a server of its own, deploy/orthanc.json, on a free loopback port), next to the baseline of the
same store and fetch on the embedded scan folder in the same run. Each scan is a 256 x 256 8-bit
Secondary Capture as the app makes of an upload (about 66 kB), made before the clock starts.

Exit status 1 when PostgreSQL misses a floor: >= 16 concurrent reviewers, 0 lost, 0 errors, chain
intact, p95 save latency under 200 ms; or the archive does: 0 errors, p95 of STOW + WADO under 300 ms.
"""

from __future__ import annotations

import argparse
import copy
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
FLOOR_ARCHIVE_P95_MS = 300.0


def _archive_of(spec: dict):
    from core.archive.dicomweb import DicomWebArchive
    from core.archive.folder import FolderArchive

    if spec["kind"] == "folder":
        return FolderArchive(Path(spec["folder"]))
    return DicomWebArchive(spec["url"], spec["user"], spec["password"], timeout_s=30.0)


def archive_worker(spec: dict, name: str, threads: int, seconds: float, start_at: float) -> None:
    """One reader process: `threads` readers each storing a new scan and fetching it back until the deadline."""
    import hashlib
    import io

    import numpy as np
    import pydicom

    from core.archive.objects import ArchiveObject, ArchiveReference, dicom_bytes, secondary_capture
    from core.scans.scan import Scan

    archive = _archive_of(spec)
    base = secondary_capture(Scan(image=np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8),
                                  source_format="PNG"), "0" * 64)
    template = pydicom.dcmread(io.BytesIO(base.data))

    def fresh(reader: int, number: int) -> ArchiveObject:
        # A new instance (its own UID and one changed pixel) in the capture's study: made outside the clock.
        dataset = copy.deepcopy(template)  # Its own file meta too: threads must not share one.
        dataset.SOPInstanceUID = f"{base.reference.instance_uid[:40]}.{os.getpid()}.{reader}.{number}"
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        pixels = bytearray(dataset.PixelData)
        pixels[number % len(pixels)] = (pixels[number % len(pixels)] + 1) % 256
        dataset.PixelData = bytes(pixels)
        data = dicom_bytes(dataset)
        return ArchiveObject(data, ArchiveReference(base.reference.study_uid, base.reference.series_uid,
                                                    dataset.SOPInstanceUID, hashlib.sha256(data).hexdigest()))

    archive.ping()
    timings: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds

    def read(reader: int) -> None:
        number = 0
        while time.monotonic() < deadline:
            number += 1
            archived = fresh(reader, number)
            try:
                began = time.perf_counter()
                archive.store(archived)
                stored = time.perf_counter()
                if archive.fetch(archived.reference) != archived.data:
                    raise RuntimeError("fetched bytes differ")
                done = time.perf_counter()
            except Exception as error:  # Counted and reported: the bench must finish to say what failed.
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                timings.append(((stored - began) * 1000, (done - stored) * 1000))

    readers = [threading.Thread(target=read, args=(reader,)) for reader in range(threads)]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    print(json.dumps({"timings": timings, "errors": errors[:20], "error_count": len(errors)}), flush=True)


def _run_together(command: list[str], processes: int, seconds: float, prefix: str) -> list[dict]:
    """Start `processes` copies of a worker command at once; each one's last JSON line, in order."""
    workers = [subprocess.Popen([*command, "--name", f"{prefix}{index}"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for index in range(processes)]
    results = []
    for worker_process in workers:
        output, error_output = worker_process.communicate(timeout=seconds + 120)
        if worker_process.returncode != 0:
            raise RuntimeError(f"a worker failed: {error_output.strip()[-2000:]}")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def _p50_p95(values: list[float]) -> tuple[float, float]:
    """The median and 95th percentile (NaN without values)."""
    values = sorted(values)
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    cuts = statistics.quantiles(values, n=100)
    return cuts[49], cuts[94]


def run_archive_load(spec: dict, processes: int, threads: int, seconds: float) -> dict:
    """Start the reader processes together on one archive; p50/p95 of store, fetch and both."""
    start_at = time.time() + 4.0
    command = [sys.executable, str(Path(__file__).resolve()), "--archive-worker", json.dumps(spec),
               "--threads", str(threads), "--seconds", str(seconds), "--start-at", str(start_at)]
    results = _run_together(command, processes, seconds, "a")
    timings = [timing for result in results for timing in result["timings"]]
    store_q, fetch_q, both_q = (_p50_p95([pick(timing) for timing in timings]) for pick in (
        lambda timing: timing[0], lambda timing: timing[1], lambda timing: timing[0] + timing[1]))
    return {"readers": processes * threads, "seconds": seconds, "round_trips": len(timings),
            "per_second": len(timings) / seconds, "store_p50_ms": store_q[0], "store_p95_ms": store_q[1],
            "fetch_p50_ms": fetch_q[0], "fetch_p95_ms": fetch_q[1], "p50_ms": both_q[0], "p95_ms": both_q[1],
            "errors": sum(result["error_count"] for result in results),
            "error_examples": [error for result in results for error in result["errors"]][:5]}


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
    results = _run_together(command, processes, seconds, "p")
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
    parser.add_argument("--skip-archive", action="store_true", help="only the history, not the scan archive")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--archive-worker", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--name", default="p0", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        worker(arguments.worker, arguments.name, arguments.threads, arguments.seconds, arguments.start_at,
               arguments.think_ms)
        return 0
    if arguments.archive_worker:
        archive_worker(json.loads(arguments.archive_worker), arguments.name, arguments.threads, arguments.seconds,
                       arguments.start_at)
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
        if not arguments.skip_archive:
            figures["archive"] = archive_figures(arguments, scratch, cluster)
    finally:
        for folder in (scratch, cluster):
            shutil.rmtree(folder, ignore_errors=True)

    print(f"{arguments.processes} processes x {arguments.threads} reviewers, {arguments.seconds:g} s per engine, "
          f"think time {arguments.think_ms:g} ms, {os.cpu_count()} CPU cores")
    archive = figures.pop("archive", None)
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
    if archive is not None:
        failures += report_archive(archive)
        figures["archive"] = archive
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if failures else 0


def archive_figures(arguments: argparse.Namespace, scratch: Path, folder: Path) -> dict:
    """The archive load on the scan folder (baseline) and on Orthanc, in this run."""
    from deploy.team import LocalOrthanc, orthanc_missing

    load = (arguments.processes, arguments.threads, arguments.seconds)
    figures = {"folder": run_archive_load({"kind": "folder", "folder": str(scratch / "scans")}, *load)}
    if orthanc_missing():
        figures["skipped"] = orthanc_missing()
        return figures
    with LocalOrthanc(folder / "orthanc") as orthanc:
        figures["orthanc"] = run_archive_load({"kind": "dicomweb", "url": orthanc.url, "user": orthanc.user,
                                               "password": orthanc.password}, *load)
    return figures


def report_archive(figures: dict) -> list[str]:
    """Print the archive's table and floors; the floors missed."""
    print(f"scan archive: {figures['folder']['readers']} readers, each storing a new 256 x 256 scan and reading it "
          "back (STOW-RS + WADO-RS on Orthanc; write + read on the folder)")
    print(f"{'archive':<11} {'trips':>6} {'trips/s':>8} {'store p50':>9} {'p95':>6} {'fetch p50':>9} {'p95':>6} "
          f"{'both p50':>8} {'p95':>6} {'errors':>6}")
    for name in ("folder", "orthanc"):
        if name not in figures:
            continue
        row = figures[name]
        print(f"{name:<11} {row['round_trips']:>6} {row['per_second']:>8.1f} {row['store_p50_ms']:>9.1f} "
              f"{row['store_p95_ms']:>6.1f} {row['fetch_p50_ms']:>9.1f} {row['fetch_p95_ms']:>6.1f} "
              f"{row['p50_ms']:>8.1f} {row['p95_ms']:>6.1f} {row['errors']:>6}")
        for example in row["error_examples"]:
            print(f"  error: {example}")
    if "orthanc" not in figures:
        print(f"archive floors: not measured ({figures.get('skipped')})")
        return ["the DICOMweb archive was not measured"]
    row, baseline = figures["orthanc"], figures["folder"]
    print(f"Orthanc / folder, p95 of both: {row['p95_ms'] / max(baseline['p95_ms'], 1e-9):.1f}x")
    failures = [text for failed, text in (
        (row["errors"] != 0, f"{row['errors']} archive errors"),
        (row["p95_ms"] >= FLOOR_ARCHIVE_P95_MS,
         f"archive p95 {row['p95_ms']:.0f} ms >= {FLOOR_ARCHIVE_P95_MS:.0f} ms")) if failed]
    print("archive floors: " + ("met" if not failures else "MISSED - " + "; ".join(failures)))
    return failures


if __name__ == "__main__":
    sys.exit(main())
