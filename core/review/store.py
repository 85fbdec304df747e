"""The review history store: an append-only SQLite log of predictions and verdicts, and its current state.

Every event is one row of the `events` table and is never updated or deleted (triggers refuse
it). The current state of a scan - its latest verdict, or its prediction while none exists - is
the `current_state` view, keyed by (sha256, model_version): a verdict is about one model's
prediction, so a new model version starts a new case.

Durability: the database runs in WAL mode with `synchronous=FULL`, and every write is its own
`BEGIN IMMEDIATE` transaction on a fresh connection, so a function that returned has put its
event on disk, a killed server loses nothing it reported saved, and concurrent sessions (threads
or processes) queue on the write lock instead of failing.

Only non-identifying fields are stored: file name, sha256 of the bytes, model version,
probabilities, verdicts, reasons, notes, reviewer and timestamps - never DICOM tags. Every database
failure reaches callers as `core.errors.HistoryUnavailable`; the vocabulary and rules of a record
live in `core.review.records`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from core import config
from core.classes import CLASS_NAMES
from core.errors import HistoryUnavailable
from core.review.records import (
    COLUMNS,
    MAX_FILE_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_REASON_CHARS,
    MAX_REVIEWER_CHARS,
    PROBABILITY_COLUMNS,
    VerdictRejected,
    check_length,
    final_label_of,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 15_000

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    session_id TEXT NOT NULL,
    reviewer TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL CHECK (kind IN ('prediction', 'verdict')),
    sha256 TEXT NOT NULL,
    file_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    predicted_class TEXT,
    {", ".join(f"{column} REAL" for column in PROBABILITY_COLUMNS)},
    verdict TEXT CHECK (verdict IS NULL OR verdict IN ('confirm', 'override', 'flag')),
    final_label TEXT,
    reason TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    CHECK ((kind = 'verdict') = (verdict IS NOT NULL))
);
-- The same prediction seen again in a session (a rerun, a re-upload) is not a new event.
CREATE UNIQUE INDEX IF NOT EXISTS one_prediction_per_session
    ON events (session_id, sha256, model_version) WHERE kind = 'prediction';
CREATE INDEX IF NOT EXISTS events_by_scan ON events (sha256, model_version, id);
CREATE INDEX IF NOT EXISTS events_by_session ON events (session_id);
CREATE TRIGGER IF NOT EXISTS events_are_not_updated BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'history events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_are_not_deleted BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'history events are append-only'); END;
CREATE VIEW IF NOT EXISTS current_state AS
    WITH latest AS (
        SELECT sha256, model_version, MAX(id) AS last_id, MIN(time) AS first_time, COUNT(*) AS event_count,
               MAX(CASE WHEN kind = 'verdict' THEN id END) AS verdict_id
        FROM events GROUP BY sha256, model_version
    )
    SELECT events.*,
           CASE WHEN events.kind = 'prediction' THEN 'new'
                WHEN events.verdict = 'flag' THEN 'flagged'
                ELSE 'reviewed' END AS status,
           latest.first_time, latest.event_count
    FROM latest JOIN events ON events.id = COALESCE(latest.verdict_id, latest.last_id);
PRAGMA user_version = {SCHEMA_VERSION};
"""

_initialised: set[Path] = set()
_initialise_lock = threading.Lock()


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with milliseconds, e.g. 2026-11-24T06:01:02.123+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class HistoryStore:
    """The history database at `path` (default `config.history_db_path()`); safe to share between threads."""

    def __init__(self, path: Path | None = None):
        """Open (creating if needed) the database; raise `HistoryUnavailable` when it cannot be used."""
        self.path = Path(path or config.history_db_path())
        try:
            self._initialise()
        except OSError as error:
            raise HistoryUnavailable(f"the history database {self.path} cannot be created ({error})") from error

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per operation: nothing is shared between threads, and each
        # connection is closed (its file handles released) as soon as the operation ends.
        # Callers see one storage-neutral error, whatever the engine said.
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            with closing(connection):
                connection.row_factory = sqlite3.Row
                connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                connection.execute("PRAGMA synchronous = FULL")
                yield connection
        except sqlite3.Error as error:
            raise HistoryUnavailable(f"the history database {self.path} could not be used ({error})") from error

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so a read-then-insert cannot interleave
        # with another writer, and COMMIT returns only once the event is durable.
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _initialise(self) -> None:
        with _initialise_lock:
            if self.path in _initialised and self.path.exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                # WAL survives a killed writer (the log is replayed or discarded on next open) and
                # lets readers proceed while a verdict is being written; the mode is stored in the file.
                connection.execute("PRAGMA journal_mode = WAL")
                connection.executescript(_SCHEMA)
            _initialised.add(self.path)

    def record_prediction(self, *, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
                          predicted_class: str, probabilities: Mapping[str, float]) -> int | None:
        """Append a prediction event; return its id, or None when this session already recorded it."""
        row = _event_row("prediction", session_id, reviewer, file_name, sha256, model_version, predicted_class,
                         probabilities)
        with self._write() as connection:
            cursor = connection.execute(_insert_sql("INSERT OR IGNORE"), row)
            return int(cursor.lastrowid) if cursor.rowcount == 1 else None

    def record_verdict(self, *, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
                       predicted_class: str, probabilities: Mapping[str, float], verdict: str,
                       override_label: str | None = None, reason: str = "", note: str = "") -> int:
        """Append a verdict event once it is durable on disk; return its id.

        `confirm` takes the model's class as final label, `override` takes `override_label` and
        needs a reason, `flag` leaves the final label empty for a second reader. Saving the same
        verdict, reviewer, reason and note as the scan's latest verdict adds nothing and returns
        that event's id. Raises `VerdictRejected` saying what to fix.
        """
        reviewer = reviewer.strip()
        reason = reason.strip()
        note = note.strip()
        if not reviewer:
            raise VerdictRejected("enter your name as reviewer before saving a verdict")
        final_label = final_label_of(verdict, predicted_class, override_label, reason)
        check_length("reviewer name", reviewer, MAX_REVIEWER_CHARS)
        check_length("reason", reason, MAX_REASON_CHARS)
        check_length("note", note, MAX_NOTE_CHARS)
        row = _event_row("verdict", session_id, reviewer, file_name, sha256, model_version, predicted_class,
                         probabilities, verdict, final_label, reason, note)
        with self._write() as connection:
            latest = connection.execute(
                "SELECT id, reviewer, verdict, final_label, reason, note FROM events"
                " WHERE sha256 = ? AND model_version = ? AND kind = 'verdict' ORDER BY id DESC LIMIT 1",
                (sha256, model_version),
            ).fetchone()
            if latest is not None and tuple(latest)[1:] == (reviewer, verdict, final_label, reason, note):
                return int(latest["id"])
            return int(connection.execute(_insert_sql("INSERT"), row).lastrowid)

    def events(self, session_id: str | None = None) -> list[dict]:
        """Every event, oldest first, as dicts keyed by `COLUMNS`; only one session's when `session_id` is given."""
        query = f"SELECT {', '.join(COLUMNS)} FROM events"
        parameters: tuple = ()
        if session_id is not None:
            query += " WHERE session_id = ?"
            parameters = (session_id,)
        with self._connect() as connection:
            return [dict(row) for row in connection.execute(query + " ORDER BY id", parameters)]

    def current_state(self, session_id: str | None = None, sha256s: Sequence[str] | None = None,
                      model_version: str | None = None) -> list[dict]:
        """One row per (sha256, model_version): its latest verdict event, or its prediction while unreviewed.

        Rows carry `COLUMNS` plus `status` ("new", "reviewed", "flagged"), `first_time` and
        `event_count`, oldest case first. `session_id` keeps the scans that session touched;
        `sha256s` and `model_version` narrow to those scans.
        """
        conditions, parameters = [], []
        if session_id is not None:
            conditions.append("EXISTS (SELECT 1 FROM events AS touched WHERE touched.session_id = ?"
                              " AND touched.sha256 = current_state.sha256"
                              " AND touched.model_version = current_state.model_version)")
            parameters.append(session_id)
        if sha256s is not None:
            # json_each takes the whole list as one parameter, so any worklist length fits.
            conditions.append("sha256 IN (SELECT value FROM json_each(?))")
            parameters.append(_json_list(sha256s))
        if model_version is not None:
            conditions.append("model_version = ?")
            parameters.append(model_version)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._connect() as connection:
            rows = connection.execute(f"SELECT * FROM current_state{where} ORDER BY first_time, id", parameters)
            return [dict(row) for row in rows]

    def latest_by_sha256(self, sha256s: Sequence[str], model_version: str) -> dict[str, dict]:
        """Current-state rows of these scans under one model version, keyed by sha256 (absent: never recorded)."""
        return {row["sha256"]: row for row in self.current_state(sha256s=sha256s, model_version=model_version)}


def _json_list(values: Iterable[str]) -> str:
    import json

    return json.dumps([str(value) for value in values])


def _insert_sql(verb: str) -> str:
    names = [column for column in COLUMNS if column != "id"]
    return f"{verb} INTO events ({', '.join(names)}) VALUES ({', '.join(':' + name for name in names)})"


def _event_row(kind: str, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
               predicted_class: str | None, probabilities: Mapping[str, float], verdict: str | None = None,
               final_label: str | None = None, reason: str = "", note: str = "") -> dict:
    if not session_id or not sha256 or not model_version:
        raise ValueError("an event needs a session id, a sha256 and a model version")
    unknown = set(probabilities) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"probabilities for unknown classes {sorted(unknown)}")
    row = {
        "time": utc_now(), "session_id": session_id, "reviewer": reviewer.strip()[:MAX_REVIEWER_CHARS],
        "kind": kind, "sha256": sha256, "file_name": file_name[:MAX_FILE_NAME_CHARS],
        "model_version": model_version, "predicted_class": predicted_class,
        "verdict": verdict, "final_label": final_label, "reason": reason, "note": note,
    }
    for name, column in zip(CLASS_NAMES, PROBABILITY_COLUMNS):
        value = probabilities.get(name)
        row[column] = None if value is None else float(value)
    return row
