"""Tamper evidence: the canonical hash, `audit verify` on both engines, and moving a history between engines.

Every way of editing the history behind the app's back - a changed row, a removed row, a forged
row, events cut from the end - is made here as someone with database access would make it (on
SQLite by dropping the triggers, on PostgreSQL as a superuser who turns them off), and
`python -m core audit verify` must exit non-zero naming the first event that no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.cli import main
from core.review import migrations
from core.review.chain import GENESIS_HASH, HASHED_COLUMNS, canonical_bytes, event_hash
from core.review.store import HistoryStore
from tests.postgres import fresh_postgres_history, owner_url, superuser_url

ROOT = Path(__file__).resolve().parents[1]
PROBABILITIES = {"glioma": 0.7, "meningioma": 0.1, "pituitary": 0.15, "no_tumor": 0.05}


def save(store: HistoryStore, number: int, note: str = "", reviewer: str = "Ann") -> int:
    return store.record_verdict(session_id="a" * 32, reviewer=reviewer, file_name=f"scan-{number}.png",
                                sha256=f"{number:064x}", model_version="tiny 1", predicted_class="glioma",
                                probabilities=PROBABILITIES, verdict="confirm", note=note)


def tamper(url: str, *statements: str) -> None:
    """Run statements with the append-only defences off: SQLite without its triggers, PostgreSQL as a superuser."""
    if url.startswith("sqlite"):
        statements = ("DROP TRIGGER IF EXISTS events_are_not_updated", "DROP TRIGGER IF EXISTS events_are_not_deleted",
                      *statements)
    else:
        url = superuser_url(url)
        statements = ("SET session_replication_role = replica", *statements)  # Ordinary triggers stop firing.
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def verify(url: str, capsys, *extra: str) -> tuple[int, str]:
    """(exit code, standard output) of `python -m core audit verify --database URL`."""
    code = main(["audit", "verify", "--database", url, *extra])
    return code, capsys.readouterr().out


@pytest.fixture
def three_events(database_url) -> tuple[str, list[dict]]:
    """A history of three verdicts; (its URL, its events)."""
    store = HistoryStore(database_url)
    for number in (1, 2, 3):
        save(store, number, note=f"note {number}")
    return database_url, store.events()


def test_the_canonical_encoding_is_sorted_compact_utf8_json_of_every_field_but_id_and_hash():
    event = {name: "" for name in HASHED_COLUMNS} | {"note": "Zoë ✓", "p_glioma": 0.1, "predicted_class": None,
                                                      "id": 7, "hash": "ignored", "prev_hash": GENESIS_HASH}
    encoded = canonical_bytes(event)
    decoded = json.loads(encoded)
    assert list(decoded) == sorted(HASHED_COLUMNS) and "id" not in decoded and "hash" not in decoded
    assert b" " not in encoded.replace("Zoë ✓".encode(), b"") and "Zoë ✓".encode() in encoded
    assert event_hash(event) == hashlib.sha256(encoded).hexdigest()
    assert event_hash(event | {"note": "Zoe"}) != event_hash(event)
    assert event_hash(event | {"prev_hash": "1" * 64}) != event_hash(event)  # The link is part of the hash.


def test_an_intact_history_verifies_with_its_count_and_last_hash(three_events, capsys):
    url, events = three_events
    code, output = verify(url, capsys)
    assert code == 0
    assert f"chain intact: 3 events, last hash {events[-1]['hash']}" in output
    assert events[0]["prev_hash"] == GENESIS_HASH
    assert [event["prev_hash"] for event in events[1:]] == [event["hash"] for event in events[:-1]]
    last = HistoryStore(url).last_verification()
    assert (last["intact"], last["event_count"], last["last_hash"]) == (True, 3, events[-1]["hash"])
    assert last["verified_by"] == "python -m core audit verify"


def test_an_empty_history_verifies(database_url, capsys):
    expected = f"{HistoryStore(database_url).display_url}: chain intact: 0 events, last hash {GENESIS_HASH}\n"
    assert verify(database_url, capsys) == (0, expected)


def test_a_row_changed_behind_the_apps_back_is_named(three_events, capsys):
    url, _ = three_events
    tamper(url, "UPDATE events SET note = 'nothing seen' WHERE id = 2")
    code, output = verify(url, capsys)
    assert code == 1
    assert "chain broken at event 2: its fields do not match its hash" in output
    last = HistoryStore(url).last_verification()
    assert (last["intact"], last["first_bad_event_id"]) == (False, 2)


def test_a_row_removed_from_the_middle_is_named_at_the_event_after_it(three_events, capsys):
    url, _ = three_events
    tamper(url, "DELETE FROM events WHERE id = 2")
    code, output = verify(url, capsys)
    assert code == 1
    assert "chain broken at event 3: its prev_hash is not the hash of the event before it (event 1)" in output


def test_a_forged_row_with_a_correct_hash_of_its_own_is_still_caught(three_events, capsys):
    url, events = three_events
    forged = {**events[1], "note": "forged", "reviewer": "Mallory"}
    forged["hash"] = event_hash(forged)  # Whoever forges it can compute its own hash...
    values = ", ".join("NULL" if forged[name] is None else repr(forged[name]) for name in ("id", *HASHED_COLUMNS,
                                                                                            "hash"))
    tamper(url, "DELETE FROM events WHERE id = 2",
           f"INSERT INTO events (id, {', '.join(HASHED_COLUMNS)}, hash) VALUES ({values})")
    code, output = verify(url, capsys)
    assert code == 1  # ... but not change the next event's link to it.
    assert "chain broken at event 3: its prev_hash is not the hash of the event before it (event 2)" in output


def test_events_cut_from_the_end_after_a_verification_are_noticed(three_events, capsys):
    url, _ = three_events
    assert verify(url, capsys)[0] == 0  # Recorded: event 3 was the last one, with its hash.
    tamper(url, "DELETE FROM events WHERE id = 3")
    code, output = verify(url, capsys)
    assert code == 1
    assert "chain broken at event 3: it was the last event verified at" in output and "removed" in output


def test_an_anchor_kept_outside_the_database_must_be_in_the_chain(three_events, capsys):
    url, events = three_events
    assert verify(url, capsys, "--anchor", events[1]["hash"], "--no-record")[0] == 0
    code, output = verify(url, capsys, "--anchor", "f" * 64, "--no-record")
    assert code == 1 and "no event has the anchor hash" in output
    assert HistoryStore(url).last_verification() is None  # --no-record wrote nothing.


def test_the_history_page_check_and_the_command_line_agree(three_events):
    url, events = three_events
    report = HistoryStore(url).verify(record=True, verified_by="History page (Ann)")
    assert (report.intact, report.event_count, report.last_event_id, report.last_hash) == (True, 3, 3,
                                                                                          events[-1]["hash"])
    assert HistoryStore(url).last_verification()["verified_by"] == "History page (Ann)"


WRITERS = """
import sys, threading
from core.review.store import HistoryStore
store, name = HistoryStore(sys.argv[1]), sys.argv[2]
def write(thread):
    for index in range(10):
        store.record_verdict(session_id="c" * 32, reviewer=f"{name}-{thread}", file_name="x.png",
                             sha256=f"{index:064x}", model_version="tiny 1", predicted_class="glioma",
                             probabilities={"glioma": 1.0}, verdict="confirm", note=f"{name} {thread} {index}")
threads = [threading.Thread(target=write, args=(thread,)) for thread in range(4)]
[thread.start() for thread in threads]
[thread.join() for thread in threads]
"""


def test_concurrent_writers_in_several_processes_never_fork_the_chain(database_url, capsys):
    HistoryStore(database_url)
    writers = [subprocess.Popen([sys.executable, "-c", WRITERS, database_url, name], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("one", "two")]
    outputs = [writer.communicate(timeout=120) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], [error for _, error in outputs]
    events = HistoryStore(database_url).events()
    assert len(events) == 80 and len({event["prev_hash"] for event in events}) == 80
    code, output = verify(database_url, capsys)
    assert code == 0 and "chain intact: 80 events" in output


def test_threads_of_one_process_never_fork_the_chain(database_url):
    store = HistoryStore(database_url)
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            start.wait()
            for index in range(5):
                save(store, index, note=f"{thread}-{index}", reviewer=f"thread {thread}")
        except BaseException as error:  # Collected and asserted below: a thread's exception is otherwise lost.
            failures.append(error)

    threads = [threading.Thread(target=write, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    report = store.verify()
    assert report.intact and report.event_count == 40


def test_a_history_moves_from_sqlite_to_postgresql_and_back_with_its_chain(tmp_path, postgres_server, capsys):
    source = f"sqlite:///{tmp_path / 'local.sqlite3'}"
    local = HistoryStore(source)
    for number in range(1, 6):
        save(local, number, note=f"note {number}")
    local.verify(record=True, verified_by="before the move")
    team = owner_url(fresh_postgres_history(postgres_server, upgraded=False))
    assert main(["history", "migrate", "--from", source, "--to", team]) == 0
    output = capsys.readouterr().out
    assert "copied 5 events" in output and "chain intact: 5 events" in output
    assert HistoryStore(team).events() == local.events()  # Ids, times, hashes: all as they were.

    app = team.replace("//brainscan_owner@", "//brainscan_app@")
    assert save(HistoryStore(app), 9, note="after the move") == 6  # The app role appends after the copied ids.
    back = f"sqlite:///{tmp_path / 'back' / 'history.sqlite3'}"
    assert main(["history", "migrate", "--from", app, "--to", back]) == 0
    assert "copied 6 events" in capsys.readouterr().out
    assert [event["hash"] for event in HistoryStore(back).events()] == [event["hash"]
                                                                        for event in HistoryStore(app).events()]


def test_migrating_into_a_history_that_has_events_is_refused(tmp_path, capsys):
    source, destination = (f"sqlite:///{tmp_path / name}" for name in ("a.sqlite3", "b.sqlite3"))
    save(HistoryStore(source), 1)
    save(HistoryStore(destination), 2)
    assert main(["history", "migrate", "--from", source, "--to", destination]) == 2
    assert "already holds events" in capsys.readouterr().err
    assert len(HistoryStore(destination).events()) == 1


def test_a_broken_source_is_not_copied(three_events, tmp_path, capsys):
    url, _ = three_events
    tamper(url, "UPDATE events SET note = 'x' WHERE id = 1")
    destination = f"sqlite:///{tmp_path / 'copy.sqlite3'}"
    assert main(["history", "migrate", "--from", url, "--to", destination]) == 2
    assert "not intact, nothing was copied: chain broken at event 1" in capsys.readouterr().err


def test_history_upgrade_and_errors_are_one_line_from_the_command_line(tmp_path, postgres_server):
    owner = owner_url(fresh_postgres_history(postgres_server, upgraded=False))
    command = [sys.executable, "-m", "core", "history", "upgrade", "--database", owner]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"schema revision none -> {migrations.head_revision()}")
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip().endswith(f"already at schema revision {migrations.head_revision()}")
    app = owner.replace("//brainscan_owner@", "//brainscan_app@")
    denied = subprocess.run([sys.executable, "-m", "core", "audit", "verify", "--database",
                             app.replace(f":{postgres_server.port}/", ":1/")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 2
    assert denied.stderr.count("\n") == 1 and denied.stderr.startswith("error: the history database")
    assert "Traceback" not in denied.stderr


def test_a_mistyped_sqlite_path_is_not_taken_for_an_empty_history(tmp_path, capsys):
    missing = tmp_path / "typo" / "history.sqlite3"
    assert main(["audit", "verify", "--database", str(missing)]) == 2
    assert main(["history", "migrate", "--from", str(missing), "--to", str(tmp_path / "copy.sqlite3")]) == 2
    assert capsys.readouterr().err.count(f"there is no history at {missing}") == 2
    assert not missing.parent.exists() and not (tmp_path / "copy.sqlite3").exists()
