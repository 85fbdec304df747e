"""The history store: append-only events, idempotent predictions, verdict rules, durability, concurrency.

Every test that takes `store` runs twice: on SQLite and on a real PostgreSQL server (tests/postgres.py).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.classes import CLASS_NAMES
from core.errors import HistoryUnavailable
from core.review.records import COLUMNS, VerdictRejected, filter_rows, row_date, summarise
from core.review.store import HistorySchemaOutdated, HistoryStore
from tests.postgres import fresh_postgres_history, owner_url

ROOT = Path(__file__).resolve().parents[1]
SESSION = "a" * 32
OTHER_SESSION = "b" * 32
MODEL = "tiny 0.0.1-test"
PROBABILITIES = {"glioma": 0.7, "meningioma": 0.1, "pituitary": 0.15, "no_tumor": 0.05}


def digest(number: int) -> str:
    return f"{number:064x}"


def predict(store: HistoryStore, number: int = 1, session: str = SESSION, model: str = MODEL, label="glioma"):
    return store.record_prediction(session_id=session, reviewer="Ann", file_name=f"scan-{number}.png",
                                   sha256=digest(number), model_version=model, predicted_class=label,
                                   probabilities=PROBABILITIES)


def verdict(store: HistoryStore, number: int = 1, kind: str = "confirm", reviewer: str = "Ann",
            session: str = SESSION, label: str = "glioma", **extra) -> int:
    return store.record_verdict(session_id=session, reviewer=reviewer, file_name=f"scan-{number}.png",
                                sha256=digest(number), model_version=MODEL, predicted_class=label,
                                probabilities=PROBABILITIES, verdict=kind, **extra)


@pytest.fixture
def store(database_url) -> HistoryStore:
    return HistoryStore(database_url)


def run_sql(url: str, statement: str) -> None:
    """Execute one statement outside the store, as someone with a database client would."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def test_the_database_is_created_in_wal_mode_with_its_folder(tmp_path):
    store = HistoryStore(tmp_path / "nested" / "history.sqlite3")
    assert store.path.is_file()
    with sqlite3.connect(store.path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_prediction_seen_again_in_the_same_session_is_recorded_once(store):
    first = predict(store)
    assert first is not None
    assert predict(store) is None
    assert len(store.events()) == 1
    assert predict(store, session=OTHER_SESSION) is not None
    assert predict(store, model="tiny 0.0.2") is not None
    assert len(store.events()) == 3


def test_current_state_is_new_until_a_verdict_then_follows_the_latest_verdict(store):
    predict(store)
    [state] = store.current_state()
    assert state["status"] == "new" and state["verdict"] is None
    verdict(store, kind="confirm")
    assert store.current_state()[0]["final_label"] == "glioma"
    verdict(store, kind="override", override_label="meningioma", reason="enhancing dural tail", note="see prior")
    [state] = store.current_state()
    assert (state["status"], state["verdict"], state["final_label"]) == ("reviewed", "override", "meningioma")
    assert state["reason"] == "enhancing dural tail" and state["event_count"] == 3
    verdict(store, kind="flag", reviewer="Bob")
    [state] = store.current_state()
    assert (state["status"], state["final_label"], state["reviewer"]) == ("flagged", None, "Bob")
    kinds = [(event["kind"], event["verdict"]) for event in store.events()]
    assert kinds == [("prediction", None), ("verdict", "confirm"), ("verdict", "override"), ("verdict", "flag")]


def test_saving_the_same_verdict_again_adds_no_row_but_another_reviewer_does(store):
    first = verdict(store, note="clear")
    assert verdict(store, note="clear") == first
    assert verdict(store, note="clear", reviewer="Bob") != first
    assert len(store.events()) == 2


@pytest.mark.parametrize("arguments, message", [
    ({"reviewer": "  "}, "enter your name"),
    ({"kind": "override", "override_label": "meningioma"}, "needs a reason"),
    ({"kind": "override", "override_label": "glioma", "reason": "x"}, "confirm it instead"),
    ({"kind": "override", "reason": "x"}, "choose the class"),
    ({"kind": "confirm", "label": None}, "no model class to confirm"),
    ({"kind": "override", "label": None, "override_label": "non_diagnostic"}, "refused needs a reason"),
    ({"kind": "override", "label": None, "reason": "x"}, "choose your read"),
    ({"kind": "override", "override_label": "a guess", "reason": "x"}, "choose the class"),
    ({"kind": "maybe"}, "unknown verdict"),
    ({"note": "x" * 2001}, "note"),
])
def test_a_verdict_that_breaks_a_rule_is_refused_and_not_stored(store, arguments, message):
    with pytest.raises(VerdictRejected, match=message):
        verdict(store, **arguments)
    assert store.events() == []


CHANGES = ["UPDATE events SET verdict = 'flag'", "DELETE FROM events"]


def test_events_cannot_be_updated_or_deleted(store, database_url):
    verdict(store)
    # On PostgreSQL the app's role is refused by its grants; the owner (and any role) by the triggers.
    attempts = [(database_url, "append-only")] if store.dialect == "sqlite" else \
        [(database_url, "permission denied"), (owner_url(database_url), "append-only")]
    statements = CHANGES + ([] if store.dialect == "sqlite" else ["TRUNCATE events"])
    for url, refusal in attempts:
        for statement in statements:
            with pytest.raises(sa.exc.DatabaseError, match=refusal):
                run_sql(url, statement)
    assert [event["verdict"] for event in store.events()] == ["confirm"]


def test_only_non_identifying_fields_of_a_scan_exist_in_the_database(store, database_url):
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    columns = [column["name"] for column in sa.inspect(engine).get_columns("events")]
    engine.dispose()
    assert tuple(columns) == COLUMNS
    # The reviewer's identity (typed name, or a sign-in's issuer, subject, email, name and role) and
    # the hash chain; never a patient's name, id, birth date or institution from a DICOM header.
    assert set(columns) <= {"id", "time", "session_id", "reviewer", "actor_issuer", "actor_subject", "actor_email",
                            "actor_name", "actor_role", "kind", "sha256", "file_name", "model_version",
                            "predicted_class", "p_glioma", "p_meningioma", "p_pituitary", "p_no_tumor", "verdict",
                            "final_label", "reason", "note", "prev_hash", "hash", "detail"}
    # `detail` holds only what the app writes there: archive UIDs and sha256s, a series read's key slices.


def test_a_signed_in_actor_is_stored_with_the_event_and_chained(store):
    actor = {"issuer": "https://login.example.org", "subject": "248289761001", "email": "ann@example.org",
             "name": "Ann Example", "role": "reviewer"}
    verdict(store, actor=actor)
    [event] = store.events()
    assert {name: event[f"actor_{name}"] for name in actor} == actor
    assert store.verify().intact


def test_text_round_trips_identically_on_both_engines(store):
    note = "Ünïcødé ✓ 漢字 \"quoted\" back\\slash\nnew line, emoji 🧠 and a NUL\x00 removed"
    verdict(store, note=note, reviewer="  Zoë  ")
    [event] = store.events()
    assert event["note"] == note.replace("\x00", "") and event["reviewer"] == "Zoë"
    assert event["p_glioma"] == 0.7 and isinstance(event["p_glioma"], float)
    assert store.verify().intact  # The hash computed before the insert matches what came back.


def test_session_and_scan_filters_of_the_current_state(store):
    predict(store, 1)
    predict(store, 2, session=OTHER_SESSION)
    verdict(store, 2, session=SESSION)  # This session reviewed a scan another session uploaded.
    assert {row["sha256"] for row in store.current_state(session_id=SESSION)} == {digest(1), digest(2)}
    assert {row["sha256"] for row in store.current_state(session_id=OTHER_SESSION)} == {digest(2)}
    assert set(store.latest_by_sha256([digest(2), digest(9)], MODEL)) == {digest(2)}
    assert store.latest_by_sha256([digest(2)], "another model") == {}
    assert [event["sha256"] for event in store.events(session_id=OTHER_SESSION)] == [digest(2)]


def test_scans_changed_since_names_the_scans_of_later_events_and_the_new_head(store):
    assert store.scans_changed_since(0) == (0, set())
    predict(store, 1)
    predict(store, 2)
    head = store.head_id()
    assert store.scans_changed_since(head) == (head, set())
    verdict(store, 1)
    predict(store, 3)
    assert store.scans_changed_since(head) == (store.head_id(), {digest(1), digest(3)})
    assert store.scans_changed_since(0)[1] == {digest(1), digest(2), digest(3)}


def test_filter_rows_by_class_verdict_reviewer_and_dates():
    today = date.today()
    rows = [
        {"time": f"{today}T10:00:00.000+00:00", "reviewer": "Ann", "predicted_class": "glioma",
         "final_label": "meningioma", "verdict": "override"},
        {"time": f"{today - timedelta(days=3)}T10:00:00.000+00:00", "reviewer": "Bob", "predicted_class": "pituitary",
         "final_label": None, "verdict": None},
    ]
    assert len(filter_rows(rows)) == 2
    assert [row["reviewer"] for row in filter_rows(rows, classes=["meningioma"])] == ["Ann"]
    assert [row["reviewer"] for row in filter_rows(rows, verdicts=[None])] == ["Bob"]
    assert [row["reviewer"] for row in filter_rows(rows, reviewers=["Bob"])] == ["Bob"]
    assert [row["reviewer"] for row in filter_rows(rows, start=today - timedelta(days=1))] == ["Ann"]
    assert [row["reviewer"] for row in filter_rows(rows, end=today - timedelta(days=1))] == ["Bob"]
    assert row_date(rows[0]) == today


def test_summary_counts_agreement_and_confusion():
    states = [
        {"predicted_class": "glioma", "final_label": "glioma", "status": "reviewed"},
        {"predicted_class": "glioma", "final_label": "meningioma", "status": "reviewed"},
        {"predicted_class": "no_tumor", "final_label": None, "status": "flagged"},
        {"predicted_class": "pituitary", "final_label": None, "status": "new"},
    ]
    summary = summarise(states)
    assert summary["cases_per_class"] == {"glioma": 2, "meningioma": 0, "pituitary": 1, "no_tumor": 1}
    assert summary["status_counts"] == {"new": 1, "reviewed": 2, "flagged": 1, "adjudicated": 0, "rejected": 0}
    assert (summary["decided"], summary["agreed"], summary["agreement"]) == (2, 1, 0.5)
    glioma, meningioma = CLASS_NAMES.index("glioma"), CLASS_NAMES.index("meningioma")
    assert summary["confusion"][glioma][glioma] == 1 and summary["confusion"][glioma][meningioma] == 1
    assert sum(map(sum, summary["confusion"])) == 2
    assert summarise([])["agreement"] is None


def test_two_threads_saving_at_the_same_moment_both_land(store):
    start = threading.Barrier(8)
    failures = []

    def save(number: int) -> None:
        try:
            start.wait()
            verdict(store, number % 2, reviewer=f"reviewer-{number}")
        except Exception as error:  # Collected and asserted below: a thread's exception is otherwise lost.
            failures.append(error)

    threads = [threading.Thread(target=save, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(event["reviewer"] for event in store.events()) == sorted(f"reviewer-{n}" for n in range(8))


WRITER = """
import sys, time
from core.review.store import HistoryStore
store = HistoryStore(sys.argv[1])  # a URL
start_at, count, reviewer = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
time.sleep(max(0.0, start_at - time.time()))
for index in range(count):
    event_id = store.record_verdict(
        session_id="c" * 32, reviewer=reviewer, file_name=f"scan-{index}.png", sha256=f"{index:064x}",
        model_version="tiny 1", predicted_class="glioma", probabilities={"glioma": 1.0}, verdict="confirm",
        note=f"note {index}")
    print(event_id, flush=True)
"""


def _writer(url: str, start_at: float, count: int, reviewer: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, str(start_at), str(count), reviewer],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_saving_at_the_same_moment_all_land(store, database_url):
    import time

    start_at = time.time() + 2.0  # Both interpreters are up by then; their writes then overlap.
    writers = [_writer(database_url, start_at, 25, name) for name in ("process-a", "process-b")]
    outputs = [writer.communicate(timeout=60) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], [error for _, error in outputs]
    reported = {int(line) for output, _ in outputs for line in output.split()}
    events = store.events()
    assert len(reported) == 50
    assert {event["id"] for event in events} == reported
    assert sorted({event["reviewer"] for event in events}) == ["process-a", "process-b"]
    assert store.verify().intact  # Interleaved appends still form one chain.


def test_a_writer_killed_mid_stream_loses_nothing_it_reported_saved(store, database_url):
    import time

    reported: set[int] = set()
    for round_number in range(2):
        writer = _writer(database_url, 0.0, 100_000, f"round-{round_number}")
        for line in writer.stdout:
            reported.add(int(line))
            if len(reported) >= 40 * (round_number + 1):
                break
        os.kill(writer.pid, signal.SIGKILL)
        remaining, _ = writer.communicate(timeout=30)
        reported.update(int(line) for line in remaining.split())  # Printed after commit, before the kill.
        assert writer.returncode == -signal.SIGKILL
        time.sleep(0.05)
    if store.path is not None:
        with sqlite3.connect(store.path) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {event["id"] for event in store.events()}
    assert reported <= stored
    assert len(stored) - len(reported) <= 2  # At most the commit in flight at each kill went unreported.
    verdict(store, 1)  # The database still takes writes after the crashes...
    assert store.verify().intact  # ... and a killed writer left no gap or fork in the chain.


def test_a_database_that_cannot_be_used_raises_one_storage_neutral_error(tmp_path):
    folder = tmp_path / "is-a-folder.sqlite3"
    folder.mkdir()  # sqlite cannot open a folder as its database file
    with pytest.raises(HistoryUnavailable, match="is-a-folder"):
        HistoryStore(folder)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(HistoryUnavailable):
        HistoryStore(blocked / "history.sqlite3")  # its folder would have to be a file's child


def test_a_postgresql_server_that_does_not_answer_raises_one_storage_neutral_error():
    from deploy.team import free_port

    url = f"postgresql+psycopg://brainscan_app:secret-password@127.0.0.1:{free_port()}/brainscan"
    with pytest.raises(HistoryUnavailable, match="could not be used") as raised:
        HistoryStore(url)
    assert "secret-password" not in str(raised.value)  # Messages reach pages and logs: never the password.


def test_a_postgresql_history_not_yet_upgraded_refuses_to_read_or_write(postgres_server):
    url = fresh_postgres_history(postgres_server, upgraded=False)
    with pytest.raises(HistorySchemaOutdated, match="python -m core history upgrade"):
        HistoryStore(url)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        assert "events" not in sa.inspect(connection).get_table_names()  # The app created nothing itself.
    engine.dispose()


def test_an_unknown_database_url_is_refused_plainly():
    with pytest.raises(HistoryUnavailable, match="not mysql"):
        HistoryStore("mysql://somewhere/history")


def test_a_sqlite_history_removed_under_a_running_app_is_created_afresh(tmp_path):
    path = tmp_path / "history.sqlite3"
    verdict(HistoryStore(path))
    for leftover in tmp_path.glob("history.sqlite3*"):
        leftover.unlink()
    store = HistoryStore(path)
    assert store.events() == [] and path.is_file()
    verdict(store)
    assert len(store.events()) == 1


ANN = {"issuer": "https://id.example", "subject": "ann", "email": "ann@example.org", "name": "Ann", "role": "reviewer"}
SAM = {"issuer": "https://id.example", "subject": "sam", "email": "sam@example.org", "name": "Sam",
       "role": "second_reader"}


def test_two_readers_reads_are_kept_apart_and_a_disagreement_awaits_an_adjudication(store):
    predict(store)
    first = verdict(store, reviewer="Ann", note="Ann's private note", actor=ANN)
    second = verdict(store, kind="override", reviewer="Sam", override_label="meningioma", reason="dural tail",
                     actor=SAM)
    assert second != first  # Sam's read is his own, not a change to Ann's
    [case] = store.current_state()
    assert (case["status"], case["final_label"]) == ("flagged", None)
    assert [read["actor_subject"] for read in case["reads"]] == ["ann", "sam"]
    # Ann saving the same read again adds nothing; amending it adds an event and keeps the old one.
    assert verdict(store, reviewer="Ann", note="Ann's private note", actor=ANN) == first
    verdict(store, kind="override", reviewer="Ann", override_label="meningioma", reason="second look", actor=ANN)
    [case] = store.current_state()
    assert (case["status"], case["final_label"]) == ("reviewed", "meningioma")
    assert [read["amended"] for read in case["reads"]] == [1, 0]
    with pytest.raises(VerdictRejected, match="needs a reason"):
        store.record_adjudication(session_id=SESSION, reviewer="Sam", file_name="scan-1.png", sha256=digest(1),
                                  model_version=MODEL, predicted_class="glioma", probabilities=PROBABILITIES,
                                  final_label="glioma", reason=" ", actor=SAM)
    store.record_adjudication(session_id=SESSION, reviewer="Sam", file_name="scan-1.png", sha256=digest(1),
                              model_version=MODEL, predicted_class="glioma", probabilities=PROBABILITIES,
                              final_label="glioma", reason="panel decision", actor=SAM)
    [case] = store.current_state()
    assert (case["status"], case["final_label"]) == ("adjudicated", "glioma")
    assert case["adjudication"]["actor_subject"] == "sam" and case["adjudication"]["actor_role"] == "second_reader"
    assert store.verify().intact


def test_refusals_and_exports_are_events_and_exports_are_no_case(store):
    assert store.record_refusal(session_id=SESSION, reviewer="Ann", file_name="notes.txt", sha256=digest(9),
                                model_version=MODEL, reason="not an image", actor=ANN) is not None
    assert store.record_refusal(session_id=SESSION, reviewer="Ann", file_name="notes.txt", sha256=digest(9),
                                model_version=MODEL, reason="not an image", actor=ANN) is None
    store.record_export(session_id=SESSION, reviewer="Ann", file_name="export.csv", sha256=digest(10),
                        description="cases, 1 row", actor=ANN)
    [case] = store.current_state()
    assert (case["status"], case["file_name"], case["reason"]) == ("rejected", "notes.txt", "not an image")
    kinds = [(event["kind"], event["actor_subject"]) for event in store.events()]
    assert kinds == [("refusal", "ann"), ("export", "ann")]
    assert store.verify().intact
