"""Monitoring over a large history: `python -m core monitor`'s figures from 100,000 events, per engine.

    python bench/monitor.py [--events 100000] [--repeat 5] [--json monitor.json]

A history is built once per engine - one SQLite file (the baseline, `make run`'s history) and a
PostgreSQL server of its own on a loopback port (durable defaults, the roles of
deploy/postgres-init.sql, migrations by the owning role, the app's role reading) - with the
store's own event builder and chain: about a third of the cases read by one of six readers
(some overridden, some flagged and adjudicated, some read twice), a few refusals, over twelve
months. The events are appended in batches of one transaction each (the app appends one per
transaction; that only makes building slower, not the history different), and PostgreSQL's table
is analysed (as its autovacuum would within a minute). Then
`core.review.monitor.monitor_history` (what the CLI and the Performance page call) is timed
`--repeat` times on each engine, a fresh connection pool each time. The chain is verified after.

Exit status 1 when a median is 2 s or more on either engine.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOOR_SECONDS = 2.0
BATCH = 2000
READERS = ("Ann", "Bob", "Cat", "Dan", "Eve", "Fay")


def build(store, events: int, seed: int = 5) -> int:
    """Append about `events` events to `store` through its row builder and chain; the count appended."""
    from core.classes import CLASS_NAMES
    from core.review import store as store_module

    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    step = timedelta(days=365) / events
    clock = [start]

    def now() -> str:
        clock[0] += step
        return clock[0].isoformat(timespec="milliseconds")

    rows: list[dict] = []
    number = 0
    while len(rows) < events:
        number += 1
        predicted = rng.choice(CLASS_NAMES)
        confidence = rng.uniform(0.5, 0.99)
        probabilities = {name: confidence if name == predicted else (1 - confidence) / 3 for name in CLASS_NAMES}
        common = dict(session_id=f"{rng.randrange(400):032x}", file_name=f"scan-{number}.png",
                      sha256=f"{number:064x}", model_version="2.1.0")
        if rng.random() < 0.03:
            rows.append(store_module._event_row("refusal", reviewer="Ann", predicted_class=None, probabilities={},
                                                reason="not a brain MRI", **common))
            continue
        rows.append(store_module._event_row("prediction", reviewer="Ann", predicted_class=predicted,
                                            probabilities=probabilities, **common))
        for reader in rng.sample(READERS, rng.choice((0, 0, 1, 1, 2))):
            choice = rng.random()
            verdict = "confirm" if choice < 0.8 else "override" if choice < 0.93 else "flag"
            final = (predicted if verdict == "confirm" else
                     rng.choice([name for name in CLASS_NAMES if name != predicted]) if verdict == "override" else None)
            rows.append(store_module._event_row("verdict", reviewer=reader, predicted_class=predicted,
                                                probabilities=probabilities, verdict=verdict, final_label=final,
                                                reason="reads otherwise" if verdict == "override" else "", **common))
            if verdict == "flag":
                rows.append(store_module._event_row("adjudication", reviewer="Gus", predicted_class=predicted,
                                                    probabilities=probabilities, final_label=rng.choice(CLASS_NAMES),
                                                    reason="second read", **common))
    saved = store_module.utc_now
    store_module.utc_now = now
    try:
        for first in range(0, len(rows), BATCH):
            with store._append() as (connection, head):
                for row in rows[first:first + BATCH]:
                    head = store._insert_chained(connection, row, head)[1]
    finally:
        store_module.utc_now = saved
    return len(rows)


def analyse(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("ANALYZE events"))
    finally:
        engine.dispose()


def time_monitor(url: str, repeat: int) -> dict:
    from core.review.monitor import monitor_history
    from core.review.store import HistoryStore, dispose_engines

    seconds, report = [], None
    for _ in range(repeat):
        dispose_engines()
        store = HistoryStore(url)
        started = time.perf_counter()
        report = monitor_history(store, low_confidence=0.8, by="month")
        seconds.append(time.perf_counter() - started)
    return {"median_s": statistics.median(seconds), "max_s": max(seconds), "runs": repeat,
            "cases": report.cases, "with_final_label": report.cases_with_final_label,
            "alerts": len(report.alerts), "periods": len({figure["period"] for figure in report.inputs})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    arguments = parser.parse_args(argv)

    from core.review.store import HistoryStore, dispose_engines, upgrade_history
    from deploy.team import APP, OWNER, LocalPostgres

    scratch, cluster = (Path(tempfile.mkdtemp(prefix=f"brainscan-bench-{name}-")) for name in ("sqlite", "postgres"))
    figures: dict[str, dict] = {}
    try:
        url = f"sqlite:///{scratch / 'history.sqlite3'}"
        started = time.perf_counter()
        count = build(HistoryStore(url), arguments.events)
        figures["sqlite"] = {"events": count, "build_s": time.perf_counter() - started,
                             **time_monitor(url, arguments.repeat)}
        figures["sqlite"]["chain"] = HistoryStore(url).verify().summary()
        with LocalPostgres(cluster) as server:
            server.create_history("brainscan")
            upgrade_history(server.url(OWNER))
            started = time.perf_counter()
            count = build(HistoryStore(server.url(APP)), arguments.events)
            # A running server's autovacuum analyses a table this size within a minute of the writes; without
            # statistics the planner guesses, so the bench analyses it at once, as the owner.
            analyse(server.url(OWNER))
            figures["postgresql"] = {"events": count, "build_s": time.perf_counter() - started,
                                     **time_monitor(server.url(APP), arguments.repeat)}
            figures["postgresql"]["chain"] = HistoryStore(server.url(APP)).verify().summary()
            dispose_engines()
    finally:
        for folder in (scratch, cluster):
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{'engine':<11} {'events':>7} {'cases':>6} {'final':>6} {'median s':>9} {'max s':>6}  chain")
    for engine, row in figures.items():
        print(f"{engine:<11} {row['events']:>7} {row['cases']:>6} {row['with_final_label']:>6} "
              f"{row['median_s']:>9.3f} {row['max_s']:>6.3f}  {row['chain']}")
    missed = [engine for engine, row in figures.items() if row["median_s"] >= FLOOR_SECONDS]
    print(f"floor (median < {FLOOR_SECONDS:g} s): " + ("met" if not missed else "MISSED on " + ", ".join(missed)))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
