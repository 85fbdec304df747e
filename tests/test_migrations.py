"""Schema migrations: complete on both engines, append-only at head, a pre-migration SQLite history adopted.

`alembic check` must find nothing to generate after upgrading an empty database of either engine,
and the same comparison must find a difference when the code's tables gain a column, so the
check can fail. A SQLite history written by the code before migrations (its exact schema is
frozen below) keeps every event, now chained.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from core.errors import HistoryUnavailable
from core.review import migrations
from core.review.chain import GENESIS_HASH
from core.review.database import metadata
from core.review.store import HistorySchemaOutdated, HistoryStore, upgrade_history
from tests.postgres import fresh_postgres_history, owner_url

ROOT = Path(__file__).resolve().parents[1]

# The history's schema before migrations existed (core/review/store.py until issue 13), as reviewers' files hold it.
LEGACY_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    session_id TEXT NOT NULL,
    reviewer TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('prediction', 'verdict')),
    sha256 TEXT NOT NULL,
    file_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    predicted_class TEXT,
    p_glioma REAL, p_meningioma REAL, p_pituitary REAL, p_no_tumor REAL,
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('confirm', 'override', 'flag')),
    final_label TEXT,
    reason TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    CHECK ((kind = 'verdict') = (verdict IS NOT NULL))
);
CREATE UNIQUE INDEX one_prediction_per_session ON events (session_id, sha256, model_version) WHERE kind = 'prediction';
CREATE INDEX events_by_scan ON events (sha256, model_version, id);
CREATE INDEX events_by_session ON events (session_id);
CREATE TRIGGER events_are_not_updated BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'history events are append-only'); END;
CREATE TRIGGER events_are_not_deleted BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'history events are append-only'); END;
CREATE VIEW current_state AS
    WITH latest AS (
        SELECT sha256, model_version, MAX(id) AS last_id, MIN(time) AS first_time, COUNT(*) AS event_count,
               MAX(CASE WHEN kind = 'verdict' THEN id END) AS verdict_id
        FROM events GROUP BY sha256, model_version
    )
    SELECT events.*, CASE WHEN events.kind = 'prediction' THEN 'new' WHEN events.verdict = 'flag' THEN 'flagged'
           ELSE 'reviewed' END AS status, latest.first_time, latest.event_count
    FROM latest JOIN events ON events.id = COALESCE(latest.verdict_id, latest.last_id);
PRAGMA user_version = 1;
"""
LEGACY_EVENTS = [
    # id, time, session, reviewer, kind, sha256, file, model, class, p x4, verdict, final label, reason, note
    (1, "2026-10-01T09:00:00.000+00:00", "a" * 32, "", "prediction", "1" * 64, "one.png", "default 1.2.0", "glioma",
     0.7, 0.1, 0.15, 0.05, None, None, "", ""),
    (2, "2026-10-01T09:01:00.000+00:00", "a" * 32, "Ann", "verdict", "1" * 64, "one.png", "default 1.2.0", "glioma",
     0.7, 0.1, 0.15, 0.05, "override", "meningioma", "dural tail", "Ünïcødé note"),
    (5, "2026-10-02T10:00:00.000+00:00", "b" * 32, "Bob", "verdict", "2" * 64, "two.png", "default 1.2.0",
     "pituitary", 0.2, 0.2, 0.5, 0.1, "flag", None, "", ""),
]


def legacy_history(path: Path) -> Path:
    """A history file exactly as the code before migrations wrote it, with three events (ids 1, 2 and 5)."""
    with sqlite3.connect(path) as connection:
        connection.executescript(LEGACY_SCHEMA)
        connection.executemany(f"INSERT INTO events VALUES ({', '.join('?' * 17)})", LEGACY_EVENTS)
    connection.close()
    return path


def diffs(url: str, target: sa.MetaData = metadata) -> list:
    """What autogenerate would write to bring the database at `url` to `target`."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
            return compare_metadata(context, target)
    finally:
        engine.dispose()


def triggers(url: str) -> set[str]:
    """Names of the user-defined triggers in the database."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    query = "SELECT name FROM sqlite_master WHERE type = 'trigger'" if url.startswith("sqlite") else \
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    try:
        with engine.connect() as connection:
            return {row[0] for row in connection.exec_driver_sql(query)}
    finally:
        engine.dispose()


@pytest.fixture
def empty_database(request, tmp_path, database_url) -> str:
    """An empty database of either engine (no tables), as the owning role on PostgreSQL."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    return owner_url(fresh_postgres_history(request.getfixturevalue("postgres_server"), upgraded=False))


def test_the_migrations_build_exactly_the_codes_tables_on_both_engines(empty_database, capsys):
    assert upgrade_history(empty_database) == (None, migrations.head_revision())
    command.check(migrations.alembic_config(empty_database))  # Raises AutogenerateDiffsDetected on any difference.
    assert diffs(empty_database) == []
    # The same comparison notices a column the code has and the migrations lack.
    grown = sa.MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        table.to_metadata(grown)
    grown.tables["events"].append_column(sa.Column("second_reader", sa.Text))
    assert [difference[0] for difference in diffs(empty_database, grown)] == ["add_column"]


def test_the_head_revision_has_append_only_triggers_on_both_engines(empty_database):
    upgrade_history(empty_database)
    tables = ("events", "chain_verifications", "worklist_entries", "worklist_clears")
    expected = {f"{table}_are_not_{change}" for table in tables for change in ("updated", "deleted")}
    if not empty_database.startswith("sqlite"):
        expected |= {f"{table}_are_not_truncated" for table in tables}
    assert triggers(empty_database) == expected


def test_there_is_one_head_and_upgrading_twice_changes_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    head = migrations.head_revision()
    assert upgrade_history(url) == (None, head)
    assert upgrade_history(url) == (head, head)


def test_a_history_from_before_migrations_is_adopted_with_every_event_chained(tmp_path):
    path = legacy_history(tmp_path / "history.sqlite3")
    store = HistoryStore(path)  # SQLite: the app upgrades its own embedded file on first use.
    events = store.events()
    assert [event["id"] for event in events] == [1, 2, 5]
    assert [(event["reviewer"], event["kind"], event["final_label"], event["note"]) for event in events] == [
        ("", "prediction", None, ""), ("Ann", "verdict", "meningioma", "Ünïcødé note"), ("Bob", "verdict", None, "")]
    assert events[0]["prev_hash"] == GENESIS_HASH
    assert [event["prev_hash"] for event in events[1:]] == [event["hash"] for event in events[:-1]]
    assert store.verify().summary() == f"chain intact: 3 events, last hash {events[-1]['hash']}"
    assert [row["status"] for row in store.current_state()] == ["reviewed", "flagged"]
    assert store.record_verdict(session_id="c" * 32, reviewer="Cy", file_name="two.png", sha256="2" * 64,
                                model_version="default 1.2.0", predicted_class="pituitary",
                                probabilities={"pituitary": 0.5}, verdict="confirm") == 6  # ids continue after 5
    with sqlite3.connect(path) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute("DELETE FROM events")
    connection.close()
    assert "events_v1" not in tables and "current_state" not in tables
    assert diffs(f"sqlite:///{path}") == []


def test_a_failed_adoption_leaves_the_legacy_file_as_it_was(tmp_path):
    path = legacy_history(tmp_path / "history.sqlite3")
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE events_v1 (blocking INTEGER)")  # Takes the name the upgrade renames to.
    connection.close()
    with pytest.raises(HistoryUnavailable, match="could not be upgraded"):
        HistoryStore(path)
    with sqlite3.connect(path) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 3
    connection.close()
    # The whole upgrade was one transaction: the view, triggers and indexes it dropped first are back.
    assert {"current_state", "events_are_not_updated", "events_by_scan"} <= names
    assert "alembic_version" not in names


def test_a_schema_from_a_newer_app_is_refused_on_both_engines(database_url):
    owner = owner_url(database_url) if database_url.startswith("postgresql") else database_url
    HistoryStore(database_url)  # Upgrades the SQLite file; the PostgreSQL copy is at head already.
    from core.review.store import dispose_engines

    dispose_engines()
    engine = sa.create_engine(owner, poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(HistorySchemaOutdated, match="9999, which this version of the app does not know"):
        HistoryStore(database_url)


WAITING_UPGRADE = """
import sys, time
from core.review.store import HistoryStore
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(len(HistoryStore(sys.argv[1]).events()))
"""


def test_two_processes_opening_a_new_sqlite_history_together_both_succeed(tmp_path):
    path = legacy_history(tmp_path / "history.sqlite3")
    start_at = str(time.time() + 2.0)
    openers = [subprocess.Popen([sys.executable, "-c", WAITING_UPGRADE, str(path), start_at], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [opener.communicate(timeout=60) for opener in openers]
    assert [opener.returncode for opener in openers] == [0, 0], [error for _, error in outputs]
    assert [output.strip() for output, _ in outputs] == ["3", "3"]  # One adopted the file; the other waited, then read.
