"""The review history store: an append-only, hash-chained log of predictions and verdicts, and its current state.

One store, two engines, chosen by URL (`BRAINSCAN_DATABASE_URL`): SQLite (`sqlite:///PATH`, the
embedded default, `BRAINSCAN_HISTORY_DB`) for one process, PostgreSQL
(`postgresql+psycopg://...`) for a team whose app runs as several replicas. Both behave the same:
the same tests run against both.

Every event is one row of `events` and is never updated or deleted: triggers refuse it on both
engines, and on PostgreSQL the app's role may only INSERT and SELECT (deploy/postgres-init.sql).
Each event stores the previous event's hash and its own over its fields (`core.review.chain`),
and appends are serialised - `BEGIN IMMEDIATE` on SQLite, a transaction-scoped advisory lock on
PostgreSQL - so the chain never forks, whatever the number of writers. `verify()` walks the
chain and names the first event that no longer matches. The current state of a scan - its
latest verdict, or its prediction while none exists - is keyed by (sha256, model_version): a
verdict is about one model's prediction, so a new model version starts a new case.

Durability: a function that returned has committed its event (SQLite: WAL with
`synchronous=FULL`; PostgreSQL: a synchronous commit), so a killed server loses nothing it
reported saved. The schema is managed by versioned migrations (`core.review.migrations`): a
SQLite history is upgraded when first opened (an embedded single-user file), a PostgreSQL one
must already be at the app's revision, else nothing is read or written until
`python -m core history upgrade` has run.

Only non-identifying fields of a scan are stored: file name, sha256 of the bytes, model version,
probabilities, verdicts, reasons, notes - never DICOM tags. Every database failure reaches callers
as `core.errors.HistoryUnavailable`; the vocabulary and rules of a record live in
`core.review.records`.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from core import config
from core.classes import CLASS_NAMES, READ_LABELS
from core.errors import HistoryUnavailable
from core.review import migrations
from core.review.chain import GENESIS_HASH, HASHED_COLUMNS, OPTIONAL_HASHED_COLUMNS, event_hash
from core.review.database import (
    APPEND_LOCK_KEY,
    IMMEDIATE,
    chain_verifications,
    create_history_engine,
    display_url,
    events,
    normalise_url,
    worklist_clears,
    worklist_entries,
)
from core.review.reads import adjudication_of, case_state, reads_of
from core.review.series import series_key
from core.review.records import (
    CASE_KINDS,
    COLUMNS,
    IDENTITY_COLUMNS,
    MAX_FILE_NAME_CHARS,
    MAX_IDENTITY_CHARS,
    MAX_NOTE_CHARS,
    MAX_REASON_CHARS,
    MAX_REVIEWER_CHARS,
    PROBABILITY_COLUMNS,
    READ_KINDS,
    VerdictRejected,
    check_length,
    final_label_of,
)

UPGRADE_COMMAND = "python -m core history upgrade"
READ_BATCH = 1000
# Scans per query when the current state is narrowed to a list of scans (bound parameters are finite).
SCANS_PER_QUERY = 500

_engines: dict[str, Engine] = {}
_ready: set[str] = set()  # URLs whose schema was found at the head revision by this process
_schema_locks: dict[str, threading.Lock] = {}
_engines_lock = threading.Lock()


class HistorySchemaOutdated(HistoryUnavailable):
    """The database's schema is not the revision this app expects; nothing is read or written until it is."""


@dataclass(frozen=True)
class ChainReport:
    """What a walk of the hash chain found: intact or the first event that does not match, and the head."""

    intact: bool
    event_count: int
    last_event_id: int | None
    last_hash: str
    first_bad_event_id: int | None = None
    problem: str = ""

    def summary(self) -> str:
        """One line: the count and last hash when intact, else the first event that does not match and why."""
        if self.intact:
            return f"chain intact: {self.event_count} events, last hash {self.last_hash}"
        return f"chain broken at event {self.first_bad_event_id}: {self.problem} ({self.event_count} events read)"


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string with milliseconds, e.g. 2026-11-24T06:01:02.123+00:00."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def database_url_of(database: str | Path | None) -> str:
    """The URL of `database`: a URL as given, a file path as `sqlite:///PATH`, None as `config.database_url()`."""
    if database is None:
        return config.database_url()
    text = str(database)
    return text if "://" in text else f"sqlite:///{text}"


def _reason(error: BaseException) -> str:
    """The first line of what the database said, without SQLAlchemy's statement dump and help link."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


class HistoryStore:
    """The history at a database URL (default `config.database_url()`); safe to share between threads.

    `HistoryStore(path)` with a file path opens `sqlite:///path`. Engines are kept per URL and
    process, so constructing a store on every page run is cheap; the schema is checked (and a
    SQLite file upgraded) on the first construction per process until it is found at head.
    """

    def __init__(self, database: str | Path | None = None):
        """Open the history; raise `HistoryUnavailable` when it cannot be used, `HistorySchemaOutdated` when not at head."""
        url = database_url_of(database)
        self.display_url = display_url(url)
        try:
            self.url: URL = normalise_url(url)
        except ValueError as error:
            raise HistoryUnavailable(str(error)) from None
        self.dialect = self.url.get_backend_name()
        database_file = self.url.database if self.dialect == "sqlite" else None
        self.path: Path | None = Path(database_file) if database_file and database_file != ":memory:" else None
        self._key = self.url.render_as_string(hide_password=False)
        with _engines_lock:
            if self.path is not None and self._key in _ready and not self.path.exists():
                # The file was removed under a running app: pooled connections would still read the
                # removed copy, so they go, and the next check creates the history afresh.
                _ready.discard(self._key)
                _engines.pop(self._key).dispose()
            if self._key not in _engines:
                _engines[self._key] = create_history_engine(self.url)
            self.engine = _engines[self._key]
            self._schema_lock = _schema_locks.setdefault(self._key, threading.Lock())
        if self._key not in _ready:
            self._check_schema()

    def close(self) -> None:
        """Release this URL's pooled connections in this process (a later store opens new ones)."""
        with _engines_lock:
            engine = _engines.pop(self._key, None)
            _ready.discard(self._key)
        if engine is not None:
            engine.dispose()

    # -- schema -----------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        # One check (and SQLite upgrade) at a time per database; another database's store need not wait.
        with self._schema_lock:
            if self._key in _ready:
                return
            if self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise HistoryUnavailable(f"the history database {self.path} cannot be created ({error})") \
                        from error
            revision = self.revision()
            head = migrations.head_revision()
            if revision != head and revision is not None and revision not in migrations.known_revisions():
                raise HistorySchemaOutdated(
                    f"the history database {self.display_url} is at schema revision {revision}, which this version "
                    "of the app does not know: run the app version that upgraded it")
            if revision != head and self.dialect == "sqlite":
                self._upgrade()
            elif revision != head:
                raise HistorySchemaOutdated(
                    f"the history database {self.display_url} is at schema revision {revision or 'none (empty)'}, "
                    f"not {head}: nothing is read or written until `{UPGRADE_COMMAND}` has run")
            _ready.add(self._key)

    def revision(self) -> str | None:
        """The schema revision the database is at (None: empty, or a history from before migrations)."""
        with self._translate(), self.engine.connect() as connection:
            return migrations.current_revision(connection)

    def _upgrade(self) -> None:
        try:
            migrations.upgrade(self.url)
        except Exception as error:  # Alembic and the migrations raise several kinds; each means "not upgraded".
            raise HistoryUnavailable(f"the history database {self.display_url} could not be upgraded "
                                     f"({_reason(error)})") from error

    # -- connections --------------------------------------------------------------------------------

    @contextmanager
    def _translate(self) -> Iterator[None]:
        # Callers see one storage-neutral error, whatever the engine or the driver said.
        try:
            yield
        except sa.exc.SQLAlchemyError as error:
            raise HistoryUnavailable(f"the history database {self.display_url} could not be used "
                                     f"({_reason(error)})") from error

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._translate(), self.engine.connect() as connection:
            yield connection

    @contextmanager
    def _append(self) -> Iterator[tuple[Connection, str]]:
        """One transaction holding the append lock, and the hash at the head of the chain when it was taken."""
        with self._translate(), self.engine.connect() as connection:
            # SQLite: BEGIN IMMEDIATE takes the write lock up front, so the head read below cannot
            # go stale before the insert. PostgreSQL: the advisory lock does the same across
            # processes and is released by COMMIT, once the event is durable.
            connection.execution_options(**{IMMEDIATE: True})
            with connection.begin():
                if self.dialect == "postgresql":
                    connection.execute(sa.select(sa.func.pg_advisory_xact_lock(APPEND_LOCK_KEY)))
                head = connection.execute(sa.select(events.c.hash).order_by(events.c.id.desc()).limit(1)).scalar()
                yield connection, head or GENESIS_HASH

    @staticmethod
    def _insert(connection: Connection, row: dict, previous_hash: str) -> int:
        return HistoryStore._insert_chained(connection, row, previous_hash)[0]

    @staticmethod
    def _insert_chained(connection: Connection, row: dict, previous_hash: str) -> tuple[int, str]:
        """Insert one event after `previous_hash`; (its id, its hash), so a transaction can append several."""
        # Stamped under the lock, so time never runs backwards along the chain.
        row = {**row, "time": utc_now(), "prev_hash": previous_hash}
        row["hash"] = event_hash(row)
        return int(connection.execute(events.insert().values(**row)).inserted_primary_key[0]), row["hash"]

    # -- writing ------------------------------------------------------------------------------------

    def record_prediction(self, *, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
                          predicted_class: str, probabilities: Mapping[str, float],
                          actor: Mapping[str, str] | None = None) -> int | None:
        """Append a prediction event; return its id, or None when this session already recorded it."""
        row = _event_row("prediction", session_id, reviewer, file_name, sha256, model_version, predicted_class,
                         probabilities, actor=actor)
        return self._insert_once_per_session(row)

    def _insert_once_per_session(self, row: dict) -> int | None:
        """Append `row` unless its session already recorded this kind of event for this scan; its id, else None."""
        with self._append() as (connection, head):
            seen = connection.execute(sa.select(events.c.id).where(
                events.c.session_id == row["session_id"], events.c.sha256 == row["sha256"],
                events.c.model_version == row["model_version"], events.c.kind == row["kind"]).limit(1)).first()
            return None if seen is not None else self._insert(connection, row, head)

    def record_verdict(self, *, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
                       predicted_class: str, probabilities: Mapping[str, float], verdict: str,
                       override_label: str | None = None, reason: str = "", note: str = "",
                       actor: Mapping[str, str] | None = None) -> int:
        """Append a verdict event once it is committed; return its id.

        `confirm` takes the model's class as final label, `override` takes `override_label` (a
        class, or a non-class answer such as "not a brain MRI slice") and needs a reason, `flag`
        leaves the final label empty for a second reader. A scan the model refused
        (`predicted_class` None) is read by an override or a flag; the refusal stays beside it.
        Saving the same verdict, reviewer, reason and note as the scan's latest verdict adds nothing and returns
        that event's id. `actor` holds the signed-in identity (issuer, subject, email, name, role)
        where there is one. Raises `VerdictRejected` saying what to fix.
        """
        reviewer = _clean(reviewer)
        reason = _clean(reason)
        note = _clean(note)
        if not reviewer:
            raise VerdictRejected("enter your name as reviewer before saving a verdict")
        final_label = final_label_of(verdict, predicted_class, override_label, reason)
        check_length("reviewer name", reviewer, MAX_REVIEWER_CHARS)
        check_length("reason", reason, MAX_REASON_CHARS)
        check_length("note", note, MAX_NOTE_CHARS)
        row = _event_row("verdict", session_id, reviewer, file_name, sha256, model_version, predicted_class,
                         probabilities, verdict, final_label, reason, note, actor=actor)
        with self._append() as (connection, head):
            # A read is one reader's: their own latest read is what a repeat is compared with, never
            # another reader's (whose save is a read of their own).
            latest = connection.execute(
                sa.select(events.c.id, events.c.reviewer, events.c.verdict, events.c.final_label, events.c.reason,
                          events.c.note)
                .where(events.c.sha256 == sha256, events.c.model_version == model_version,
                       events.c.kind == "verdict", *_same_reader(row))
                .order_by(events.c.id.desc()).limit(1)).first()
            if latest is not None and tuple(latest)[1:] == (reviewer, verdict, final_label, reason, note):
                return int(latest.id)
            return self._insert(connection, row, head)

    def record_adjudication(self, *, session_id: str, reviewer: str, file_name: str, sha256: str,
                            model_version: str, predicted_class: str | None, probabilities: Mapping[str, float],
                            final_label: str, reason: str, note: str = "",
                            actor: Mapping[str, str] | None = None) -> int:
        """Append a second reader's adjudication (a final label and a required reason); return its id.

        The final label is a class or one of the non-class answers (`core.classes.NON_CLASS_LABELS`); a
        series' case (`sha256` = `core.review.series.series_key`) takes a class only, as its reads do.
        """
        reason, note = _clean(reason), _clean(note)
        if final_label not in READ_LABELS:
            raise VerdictRejected("choose the final label")
        if final_label not in CLASS_NAMES and self._is_series(sha256):
            raise VerdictRejected("a series' final label is one of the classes")
        if not reason:
            raise VerdictRejected("an adjudication needs a reason")
        if not _clean(reviewer):
            raise VerdictRejected("sign in before adjudicating")
        check_length("reason", reason, MAX_REASON_CHARS)
        check_length("note", note, MAX_NOTE_CHARS)
        row = _event_row("adjudication", session_id, reviewer, file_name, sha256, model_version, predicted_class,
                         probabilities, None, final_label, reason, note, actor=actor)
        with self._append() as (connection, head):
            return self._insert(connection, row, head)

    def record_series_read(self, *, session_id: str, reviewer: str, series_name: str, study_uid: str, series_uid: str,
                           model_version: str, predicted_class: str | None, verdict: str,
                           override_label: str | None = None, reason: str = "", note: str = "",
                           key_slices: Sequence[str] = (), slice_count: int = 0,
                           actor: Mapping[str, str] | None = None) -> int:
        """Append a reader's read of a whole series; return its id.

        The same rules as a slice's verdict (`record_verdict`): confirm takes the model's class for
        the series, override needs a class and a reason, flag leaves it for a second reader. The
        event is filed under `core.review.series.series_key(series_uid)`; its detail names the
        study and series UIDs and the key slices' sha256 that support the read (at least one, unless
        it is a flag). Raises `VerdictRejected` saying what to fix.
        """
        reviewer, reason, note = _clean(reviewer), _clean(reason), _clean(note)
        if not reviewer:
            raise VerdictRejected("enter your name as reviewer before saving a read")
        final_label = final_label_of(verdict, predicted_class, override_label, reason, labels=CLASS_NAMES)
        if verdict != "flag" and not key_slices:
            raise VerdictRejected("choose the key slices that support the read")
        check_length("reason", reason, MAX_REASON_CHARS)
        check_length("note", note, MAX_NOTE_CHARS)
        detail = {"study_uid": study_uid, "series_uid": series_uid, "key_slices": list(key_slices),
                  "slices": int(slice_count)}
        row = _event_row("series_read", session_id, reviewer, series_name, series_key(series_uid), model_version,
                         predicted_class, {}, verdict, final_label, reason, note, actor=actor, detail=detail)
        with self._append() as (connection, head):
            return self._insert(connection, row, head)

    def record_result(self, *, session_id: str, reviewer: str, series_uid: str, description: str, model_version: str,
                      reference: Mapping[str, str], role: str, actor: Mapping[str, str] | None = None) -> int:
        """Append a result object sent to the archive (`role`: model report, reader report or heat map) for a series."""
        row = _event_row("result", session_id, reviewer, description, series_key(series_uid), model_version, None, {},
                         note=role, actor=actor, detail={**reference, "series_of_result_for": series_uid})
        with self._append() as (connection, head):
            return self._insert(connection, row, head)

    def results_sent(self, series_uid: str) -> list[dict]:
        """The result objects recorded as sent for a series, oldest first, with their references."""
        return self._series_events(series_uid, "result")

    def _is_series(self, sha256: str) -> bool:
        """Whether `sha256` files a series' case (its reads are series reads), not a scan's."""
        with self._read() as connection:
            return connection.execute(sa.select(events.c.id).where(
                events.c.sha256 == sha256, events.c.kind == "series_read").limit(1)).first() is not None

    def series_case(self, series_uid: str, model_version: str) -> dict | None:
        """A series' case under one model version, as `current_state` gives scans': its latest read, status, final
        label, reads and adjudication; None before its first read."""
        return self.latest_by_sha256([series_key(series_uid)], model_version).get(series_key(series_uid))

    def series_reads(self, series_uid: str) -> list[dict]:
        """Every read recorded for a series, oldest first, with its detail decoded."""
        return self._series_events(series_uid, "series_read")

    def _series_events(self, series_uid: str, kind: str) -> list[dict]:
        with self._read() as connection:
            rows = connection.execute(sa.select(events).where(events.c.sha256 == series_key(series_uid),
                                                              events.c.kind == kind)
                                      .order_by(events.c.id)).mappings().all()
        return [{**row, "detail": json.loads(row["detail"]) if row["detail"] else {}} for row in rows]

    def record_refusal(self, *, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
                       reason: str, actor: Mapping[str, str] | None = None) -> int | None:
        """Append a file refused at intake (name, sha256, why, who uploaded it); None when this session has it already."""
        row = _event_row("refusal", session_id, reviewer, file_name, sha256, model_version, None, {},
                         reason=_clean(reason)[:MAX_REASON_CHARS], actor=actor)
        return self._insert_once_per_session(row)

    def record_export(self, *, session_id: str, reviewer: str, file_name: str, sha256: str, description: str,
                      actor: Mapping[str, str] | None = None) -> int:
        """Append an export: who exported which file (its name and sha256) of what (`description`), and when."""
        row = _event_row("export", session_id, reviewer, file_name, sha256, "-", None, {},
                         note=_clean(description)[:MAX_NOTE_CHARS], actor=actor)
        with self._append() as (connection, head):
            return self._insert(connection, row, head)

    def record_upload(self, *, session_id: str, owner: str, reviewer: str, file_name: str, sha256: str,
                      model_version: str, predicted_class: str | None, probabilities: Mapping[str, float],
                      refusal_reason: str | None = None, archived: Mapping[str, str] | None = None,
                      actor: Mapping[str, str] | None = None, detail: Mapping | None = None) -> None:
        """Record an upload in one transaction: its archive event, its prediction (or refusal), its worklist entry.

        `archived` is the archive's reference (UIDs, the object's sha256) once the scan is stored
        there; None for a file with no picture to archive. The archive event is written once per
        scan, whoever uploads it again; the prediction or refusal once per session, as
        `record_prediction` does; the worklist entry unless the scan is on `owner`'s open worklist.
        `detail` goes with the prediction or refusal (`core.review.worklist.monitoring_detail`: the
        scanner and the gate's score, what monitoring groups and compares by).
        All or nothing: a failure leaves no part recorded.
        """
        kind = "refusal" if refusal_reason is not None else "prediction"
        outcome = _event_row(kind, session_id, reviewer, file_name, sha256, model_version,
                             None if refusal_reason is not None else predicted_class,
                             {} if refusal_reason is not None else probabilities,
                             reason=_clean(refusal_reason or "")[:MAX_REASON_CHARS], actor=actor, detail=detail)
        with self._append() as (connection, head):
            if archived is not None and self._archive_detail(connection, sha256) is None:
                row = _event_row("archive", session_id, reviewer, file_name, sha256, "-", None, {}, actor=actor,
                                 detail=archived)
                _, head = self._insert_chained(connection, row, head)
            seen = connection.execute(sa.select(events.c.id).where(
                events.c.session_id == session_id, events.c.sha256 == sha256,
                events.c.model_version == model_version, events.c.kind == kind).limit(1)).first()
            if seen is None:
                self._insert_chained(connection, outcome, head)
            if sha256 not in {entry["sha256"] for entry in self._open_worklist(connection, owner)}:
                connection.execute(worklist_entries.insert().values(
                    time=utc_now(), owner=owner, sha256=sha256, model_version=model_version,
                    file_name=outcome["file_name"]))

    @staticmethod
    def _archive_detail(connection: Connection, sha256: str) -> dict | None:
        found = connection.execute(sa.select(events.c.detail).where(events.c.sha256 == sha256,
                                                                    events.c.kind == "archive")
                                   .order_by(events.c.id).limit(1)).scalar()
        return json.loads(found) if found else None

    def archived_reference(self, sha256: str) -> dict | None:
        """The archive's reference (UIDs, object sha256) recorded for a scan, or None when it was never archived."""
        with self._read() as connection:
            return self._archive_detail(connection, sha256)

    def archived_scans(self) -> list[dict]:
        """Every archive event, oldest first: id, sha256, file_name and the reference (`detail`, parsed)."""
        query = (sa.select(events.c.id, events.c.sha256, events.c.file_name, events.c.detail)
                 .where(events.c.kind == "archive").order_by(events.c.id))
        with self._read() as connection:
            return [{**dict(row), "detail": json.loads(row["detail"])} for row in connection.execute(query).mappings()]

    def scans_named(self) -> list[str]:
        """The sha256 of every scan with a prediction, a refusal or a read, in the order first recorded (not series)."""
        query = (sa.select(events.c.sha256, sa.func.min(events.c.id).label("first"))
                 .where(events.c.kind.in_(("prediction", "verdict", "refusal"))).group_by(events.c.sha256)
                 .order_by(sa.text("first")))
        with self._read() as connection:
            return [row[0] for row in connection.execute(query)]

    # -- worklists ----------------------------------------------------------------------------------

    @staticmethod
    def _open_worklist(connection: Connection, owner: str) -> list[dict]:
        cleared = connection.execute(sa.select(sa.func.max(worklist_clears.c.last_entry_id))
                                     .where(worklist_clears.c.owner == owner)).scalar() or 0
        rows = connection.execute(
            sa.select(worklist_entries.c.id, worklist_entries.c.sha256, worklist_entries.c.model_version,
                      worklist_entries.c.file_name, worklist_entries.c.time)
            .where(worklist_entries.c.owner == owner, worklist_entries.c.id > cleared)
            .order_by(worklist_entries.c.id)).mappings()
        first: dict[str, dict] = {}
        for row in rows:
            first.setdefault(row["sha256"], dict(row))
        return list(first.values())

    def worklist(self, owner: str) -> list[dict]:
        """`owner`'s open worklist, in the order scans were added: id, sha256, model_version, file_name, time."""
        with self._read() as connection:
            return self._open_worklist(connection, owner)

    def add_to_worklist(self, owner: str, entries: Sequence[tuple[str, str, str]]) -> None:
        """Add (sha256, model_version, file_name) entries to `owner`'s worklist, skipping scans already on it."""
        with self._translate(), self.engine.begin() as connection:
            present = {entry["sha256"] for entry in self._open_worklist(connection, owner)}
            for sha256, model_version, file_name in entries:
                if sha256 not in present:
                    present.add(sha256)
                    connection.execute(worklist_entries.insert().values(
                        time=utc_now(), owner=owner, sha256=sha256, model_version=model_version,
                        file_name=str(file_name).replace("\x00", "")[:MAX_FILE_NAME_CHARS]))

    def clear_worklist(self, owner: str) -> None:
        """Empty `owner`'s worklist (its entries stay in the table; a clear row marks where it was emptied)."""
        with self._translate(), self.engine.begin() as connection:
            last = connection.execute(sa.select(sa.func.max(worklist_entries.c.id))
                                      .where(worklist_entries.c.owner == owner)).scalar()
            if last is not None:
                connection.execute(worklist_clears.insert().values(time=utc_now(), owner=owner, last_entry_id=last))

    # -- reading ------------------------------------------------------------------------------------

    def events(self, session_id: str | None = None) -> list[dict]:
        """Every event, oldest first, as dicts keyed by `COLUMNS`; only one session's when `session_id` is given."""
        query = sa.select(*(events.c[name] for name in COLUMNS)).order_by(events.c.id)
        if session_id is not None:
            query = query.where(events.c.session_id == session_id)
        with self._read() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def current_state(self, session_id: str | None = None, sha256s: Sequence[str] | None = None,
                      model_version: str | None = None) -> list[dict]:
        """One row per (sha256, model_version): its latest verdict event, or its prediction while unreviewed.

        Rows carry `COLUMNS` plus `status` ("new", "reviewed", "flagged"), `first_time` and
        `event_count`, oldest case first. `session_id` keeps the scans that session touched;
        `sha256s` and `model_version` narrow to those scans.
        """
        if sha256s is not None:
            wanted = list(dict.fromkeys(str(value) for value in sha256s))
            chunks = [wanted[start:start + SCANS_PER_QUERY] for start in range(0, len(wanted), SCANS_PER_QUERY)]
        else:
            chunks = [None]
        rows: list[dict] = []
        with self._read() as connection:
            for chunk in chunks:
                query = _current_state_query(session_id is not None, chunk is not None, model_version is not None)
                parameters = {name: value for name, value in (("session_id", session_id), ("sha256s", chunk),
                                                              ("model_version", model_version)) if value is not None}
                found = [dict(row) for row in connection.execute(query, parameters).mappings()]
                _apply_reads(connection, found)
                rows.extend(found)
        if len(chunks) > 1:
            rows.sort(key=lambda row: (row["first_time"], row["id"]))
        return rows

    def scan_events(self, sha256: str, model_version: str) -> list[dict]:
        """Every event of one scan under one model version, oldest first (its reads, adjudications, refusals)."""
        query = (sa.select(*(events.c[name] for name in COLUMNS))
                 .where(events.c.sha256 == sha256, events.c.model_version == model_version,
                        events.c.kind.in_(CASE_KINDS)).order_by(events.c.id))
        with self._read() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def refusal_reason(self, sha256: str, model_version: str) -> str | None:
        """Why the scan was refused under this model version, as its latest refusal event says; None if never."""
        refusals = [event for event in self.scan_events(sha256, model_version) if event["kind"] == "refusal"]
        return refusals[-1]["reason"] if refusals else None

    def latest_by_sha256(self, sha256s: Sequence[str], model_version: str) -> dict[str, dict]:
        """Current-state rows of these scans under one model version, keyed by sha256 (absent: never recorded)."""
        return {row["sha256"]: row for row in self.current_state(sha256s=sha256s, model_version=model_version)}

    # -- tamper evidence ----------------------------------------------------------------------------

    def verify(self, *, record: bool = False, verified_by: str = "", anchor: str | None = None) -> ChainReport:
        """Walk the hash chain in id order; report it intact, or the first event whose hash does not match.

        Also checks that the last event of the latest intact verification on record is still there
        with the same hash (so removing events from the end shows), and with `anchor` that an event
        with that hash (kept outside the database) is in the chain. `record` appends the result to
        `chain_verifications`, which the History page shows.
        """
        with self._read() as connection:
            checkpoint = connection.execute(
                sa.select(chain_verifications).where(chain_verifications.c.intact.is_(True),
                                                     chain_verifications.c.last_event_id.is_not(None))
                .order_by(chain_verifications.c.id.desc()).limit(1)).mappings().first()
            report = _walk(connection, checkpoint, anchor)
        if record:
            self.record_verification(report, verified_by)
        return report

    def record_verification(self, report: ChainReport, verified_by: str) -> None:
        """Append a verification's result to `chain_verifications` (the app's role may insert there)."""
        with self._translate(), self.engine.begin() as connection:
            connection.execute(chain_verifications.insert().values(
                time=utc_now(), verified_by=verified_by[:MAX_REVIEWER_CHARS], **asdict(report)))

    def last_verification(self) -> dict | None:
        """The latest recorded verification (time, verified_by, intact, event_count, last hash, problem), or None."""
        with self._read() as connection:
            row = connection.execute(sa.select(chain_verifications).order_by(chain_verifications.c.id.desc())
                                     .limit(1)).mappings().first()
        return None if row is None else dict(row)

    def ping(self) -> None:
        """Raise `HistoryUnavailable` unless the database answers a query now."""
        with self._read() as connection:
            connection.execute(sa.select(events.c.id).limit(1)).all()

    def head_id(self) -> int:
        """The id of the newest event (0 for an empty history): it changes with every event any replica appends."""
        with self._read() as connection:
            return int(connection.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one())

    def scans_changed_since(self, event_id: int) -> tuple[int, set[str]]:
        """(the newest event's id, the sha256 of every scan with an event after `event_id`).

        What a cached current state must read again. Appends are serialised under one lock and an
        event's id is taken inside it, so ids become visible in order: no event can appear later
        with an id at or below one already seen.
        """
        with self._read() as connection:
            rows = connection.execute(sa.select(events.c.id, events.c.sha256).where(events.c.id > event_id)).all()
        return max((row.id for row in rows), default=int(event_id)), {row.sha256 for row in rows if row.sha256}

    def event_count(self) -> int:
        """How many events the history holds."""
        with self._read() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())

    # -- monitoring ---------------------------------------------------------------------------------

    def monitoring_aggregates(self, low_confidence: float) -> dict[str, list[dict]]:
        """What `core.review.monitor` computes its figures from: one SQL statement of aggregates per day.

        A case is one scan under one model version, dated by its first prediction. Sections:
        `outcomes`: cases per (day, model version, scanner, predicted class, final label), the final
        label as `core.review.reads.case_state` gives it (the latest adjudication, else the class
        every reader's latest read agrees on; none while a read flags or reads disagree), with the
        sum of their calibrated confidence and how many are under `low_confidence`. `refusals`: files
        refused (at intake, by the model-free checks or by the gate) per (day, model version). `gate`: files the gate scored per (day, unit bin
        of the not-MRI log-odds, model version). `readers`: per (day, reader) their latest read of each case counted
        by verdict, against the model and against the final label. `latencies`: cases read per (day,
        tenths of an hour from first prediction to first read, tenths of an hour from first flag to
        first adjudication, None without both), each rounded down.

        Everything comes from one statement, so the sections agree with each other, and the case
        table is built once (a common table expression used by every section).
        """
        postgres = self.dialect == "postgresql"
        text, integer, number = sa.Text, sa.BigInteger, sa.Float

        def day_of(time):  # YYYY-MM-DD of the ISO text
            return sa.func.substr(time, 1, 10)

        def detail_text(key: str):
            present = sa.func.nullif(events.c.detail, "")
            if postgres:
                return sa.func.json_extract_path_text(sa.cast(present, sa.JSON), key)
            return sa.func.json_extract(present, f"$.{key}")

        def hours(start, end):
            if postgres:
                span = sa.cast(end, sa.TIMESTAMP(timezone=True)) - sa.cast(start, sa.TIMESTAMP(timezone=True))
                return sa.extract("epoch", span) / 3600.0
            return (sa.func.julianday(end) - sa.func.julianday(start)) * 24.0

        def floor_of(value):
            # SQLite's CAST truncates towards zero; shifted, that is the floor for any score above -1000.
            return sa.func.floor(value) if postgres else sa.cast(value + 1000, sa.Integer) - 1000

        is_prediction, is_verdict = events.c.kind == "prediction", events.c.kind == "verdict"
        confidence = sa.case(*((events.c.predicted_class == name, events.c[f"p_{name}"]) for name in CLASS_NAMES))
        reader = sa.case((events.c.actor_subject != "",
                          events.c.actor_issuer + sa.literal("\n") + events.c.actor_subject),
                         else_=sa.literal("\n") + events.c.reviewer)
        # Per case (scan, model version): its prediction's figures and the first time of each kind of event.
        e = events.c
        per_case = (sa.select(
            e.sha256, e.model_version,
            sa.func.min(sa.case((is_prediction, e.time))).label("first_time"),
            sa.func.max(sa.case((is_prediction, e.predicted_class))).label("predicted"),
            sa.func.max(sa.case((is_prediction, confidence))).label("confidence"),
            sa.func.max(sa.case((is_prediction, detail_text("scanner")))).label("scanner"),
            sa.func.min(sa.case((is_verdict, e.time))).label("first_read"),
            sa.func.min(sa.case((e.verdict == "flag", e.time))).label("first_flag"),
            sa.func.min(sa.case((e.kind == "adjudication", e.time))).label("first_adjudication"),
            sa.func.max(sa.case((e.kind == "adjudication", e.id))).label("adjudication_id"))
            .where(e.kind.in_(("prediction", "verdict", "adjudication")))
            .group_by(e.sha256, e.model_version).subquery("per_case"))
        # Each reader's latest read of each case.
        reads = (sa.select(e.id, e.sha256, e.model_version, e.reviewer, reader.label("reader"))
                 .where(is_verdict).subquery("reads"))
        newest = (sa.select(reads.c.sha256, reads.c.model_version, reads.c.reader,
                            sa.func.max(reads.c.id).label("read_id"), sa.func.max(reads.c.reviewer).label("name"))
                  .group_by(reads.c.sha256, reads.c.model_version, reads.c.reader).subquery("newest"))
        read = events.alias("read")
        latest = (sa.select(newest, read.c.verdict, read.c.final_label)
                  .select_from(newest.join(read, read.c.id == newest.c.read_id)).cte("latest"))
        agreed = (sa.select(latest.c.sha256, latest.c.model_version,
                            sa.func.sum(sa.case((latest.c.verdict == "flag", 1), else_=0)).label("flags"),
                            sa.func.count(sa.distinct(latest.c.final_label)).label("labels"),
                            sa.func.max(latest.c.final_label).label("label"))
                  .group_by(latest.c.sha256, latest.c.model_version).subquery("agreed"))
        adjudication = events.alias("adjudication")
        final = sa.func.coalesce(adjudication.c.final_label,
                                 sa.case((sa.and_(agreed.c.flags == 0, agreed.c.labels == 1), agreed.c.label)))
        cases = (sa.select(per_case, day_of(per_case.c.first_time).label("day"), final.label("final_label"))
                 .select_from(per_case
                              .outerjoin(agreed, sa.and_(agreed.c.sha256 == per_case.c.sha256,
                                                         agreed.c.model_version == per_case.c.model_version))
                              .outerjoin(adjudication, adjudication.c.id == per_case.c.adjudication_id))
                 .where(per_case.c.first_time.is_not(None)).cte("cases"))

        columns = {"day": text, "model_version": text, "scanner": text, "predicted": text, "final_label": text,
                   "reader": text, "name": text, **dict.fromkeys(("i1", "i2", "i3", "i4", "i5", "i6", "i7"), integer),
                   "f1": number, "f2": number}

        def section(label: str, source, *, where=None, group_by=(), **values):
            def value_of(column: str, kind):
                # PostgreSQL resolves a UNION's column types from its branches, so a missing value is a typed
                # NULL; SQLite needs no cast, and a CAST around every value costs it a tenth of a second here.
                if column in values:
                    return values[column].label(column)
                return (sa.cast(sa.null(), kind) if postgres else sa.null()).label(column)

            select = sa.select(sa.literal(label, text).label("section"),
                               *(value_of(column, kind) for column, kind in columns.items())).select_from(source)
            if where is not None:
                select = select.where(where)
            return select.group_by(*group_by) if group_by else select

        c = cases.c
        ones = lambda condition: sa.func.sum(sa.case((condition, 1), else_=0))  # noqa: E731
        outcomes = section("outcomes", cases, group_by=(c.day, c.model_version, c.scanner, c.predicted, c.final_label),
                           day=c.day, model_version=c.model_version, scanner=c.scanner, predicted=c.predicted,
                           final_label=c.final_label, i1=sa.func.count(), i2=ones(c.confidence < low_confidence),
                           f1=sa.func.sum(c.confidence))
        readers = section(
            "readers", latest.join(cases, sa.and_(c.sha256 == latest.c.sha256, c.model_version == latest.c.model_version)),
            group_by=(c.day, latest.c.reader),
            day=c.day, reader=latest.c.reader, name=sa.func.max(latest.c.name), i1=sa.func.count(),
            i2=ones(latest.c.verdict == "confirm"), i3=ones(latest.c.verdict == "override"),
            i4=ones(latest.c.verdict == "flag"), i5=ones(c.final_label.is_not(None)),
            i6=ones(latest.c.final_label == c.final_label),
            i7=ones(sa.and_(latest.c.verdict == "confirm", c.final_label.is_not(None), c.final_label != c.predicted)))
        # Hours to the first read and from the first flag to the first adjudication, counted per tenth of an hour.
        waits = (sa.select(c.day, floor_of(hours(c.first_time, c.first_read) * 10).label("to_read"),
                           sa.case((c.first_adjudication >= c.first_flag,
                                    floor_of(hours(c.first_flag, c.first_adjudication) * 10))).label("to_adjudication"))
                 .where(c.first_read.is_not(None)).subquery("waits"))
        w = waits.c
        latencies = section("latencies", waits, group_by=(w.day, w.to_read, w.to_adjudication), day=w.day,
                            i1=sa.func.count(), i2=w.to_read, i3=w.to_adjudication)
        # Files the model or the gate saw (predictions and refusals), in one scan: per day, kind and unit bin of the
        # gate's not-MRI log-odds (None for a refusal at intake, or without a gate).
        files = (sa.select(day_of(e.time).label("day"), e.kind, e.model_version,
                           floor_of(sa.cast(detail_text("gate_score"), number)).label("bin"))
                 .where(e.kind.in_(("prediction", "refusal"))).subquery("files"))
        f = files.c
        seen = section("files", files, group_by=(f.day, f.kind, f.model_version, f.bin), day=f.day,
                       predicted=f.kind, model_version=f.model_version, i1=sa.func.count(), i2=f.bin)
        statement = sa.union_all(outcomes, readers, latencies, seen)

        found: dict[str, list[dict]] = {name: [] for name in ("outcomes", "readers", "latencies", "gate", "refusals")}
        with self._read() as connection, connection.begin():
            if postgres:
                # One analytical statement: compiling it to machine code (JIT) costs more than it saves, and
                # its sorts fit in memory with a little more than the default 4 MB. Both only for this transaction.
                connection.execute(sa.text("SET LOCAL jit = off"))
                connection.execute(sa.text("SET LOCAL work_mem = '64MB'"))
            for row in connection.execute(statement).mappings():
                name = row["section"]
                if name == "outcomes":
                    found[name].append({"day": row["day"], "model_version": row["model_version"],
                                        "scanner": row["scanner"], "predicted": row["predicted"],
                                        "final_label": row["final_label"], "n": row["i1"],
                                        "low_confidence": row["i2"] or 0, "confidence_sum": row["f1"] or 0.0})
                elif name == "readers":
                    found[name].append({"day": row["day"], "reader": row["reader"], "name": row["name"],
                                        **{key: row[column] or 0 for key, column in zip(
                                            ("reads", "confirms", "overrides", "flags", "with_final", "agree_final",
                                             "confirmed_otherwise"), ("i1", "i2", "i3", "i4", "i5", "i6", "i7"))}})
                elif name == "latencies":
                    found[name].append({"day": row["day"], "n": row["i1"], "to_read_tenths": row["i2"],
                                        "flag_to_adjudication_tenths": row["i3"]})
                else:  # "files": a refusal counts in `refusals`, a scored file in `gate`
                    if row["predicted"] == "refusal":
                        found["refusals"].append({"day": row["day"], "model_version": row["model_version"],
                                                  "n": row["i1"]})
                    if row["i2"] is not None:
                        found["gate"].append({"day": row["day"], "model_version": row["model_version"],
                                              "bin": int(row["i2"]), "n": row["i1"]})
        return found


def open_existing_history(database: str | Path | None = None) -> HistoryStore:
    """The history at `database`, refusing a SQLite file that does not exist (a mistyped path is not an empty history)."""
    url = database_url_of(database)
    try:
        parsed = normalise_url(url)
    except ValueError as error:
        raise HistoryUnavailable(str(error)) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).is_file():
        raise HistoryUnavailable(f"there is no history at {parsed.database}")
    return HistoryStore(url)


def dispose_engines() -> None:
    """Close every pooled connection this process holds (tests, and before a fork); stores reopen on next use."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
        _ready.clear()
    for engine in engines:
        engine.dispose()


def upgrade_history(database: str | Path | None = None) -> tuple[str | None, str]:
    """Apply every migration the history lacks; return (revision before, revision after)."""
    url = database_url_of(database)
    store_url = display_url(url)
    try:
        parsed = normalise_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_history_engine(parsed, for_migrations=True)
        try:
            with engine.connect() as connection:
                before = migrations.current_revision(connection)
        finally:
            engine.dispose()
        known = migrations.known_revisions()
        if before is not None and before not in known:
            raise HistorySchemaOutdated(f"the history database {store_url} is at schema revision {before}, which "
                                        "this version of the app does not know")
        migrations.upgrade(parsed)
    except HistoryUnavailable:
        raise
    except Exception as error:  # A bad URL, an unreachable server, a refused DDL: the upgrade did not happen.
        raise HistoryUnavailable(f"the history database {store_url} could not be upgraded ({_reason(error)})") \
            from error
    with _engines_lock:
        _ready.discard(parsed.render_as_string(hide_password=False))
    return before, migrations.head_revision()


def migrate_history(source: str | Path, destination: str | Path) -> tuple[int, ChainReport]:
    """Copy every event (and verification record) in order from one history to an empty one; verify it there.

    The source must have an intact chain; the destination is upgraded to head first (so its URL
    needs a role that may create tables) and must hold no events. Ids and hashes are copied as
    they are, so the chain and every event number carry over. Returns (events copied, the
    destination's verification).
    """
    origin = open_existing_history(source)
    found = origin.verify()
    if not found.intact:
        raise HistoryUnavailable(f"the source history is not intact, nothing was copied: {found.summary()}")
    upgrade_history(destination)
    target = HistoryStore(destination)
    copied = 0
    with origin._read() as reading, target._append() as (writing, _head):
        if writing.execute(sa.select(sa.func.count()).select_from(events)).scalar_one():
            raise HistoryUnavailable(f"the destination {target.display_url} already holds events; migrate into an "
                                     "empty history")
        for table in (events, chain_verifications, worklist_entries, worklist_clears):
            last_id = 0
            while True:
                batch = [dict(row) for row in reading.execute(
                    sa.select(table).where(table.c.id > last_id).order_by(table.c.id).limit(READ_BATCH)).mappings()]
                if not batch:
                    break
                writing.execute(table.insert(), batch)
                last_id = batch[-1]["id"]
                copied += len(batch) if table is events else 0
            if target.dialect == "postgresql":
                # Copied ids bypassed the sequence; the next append must continue after them.
                writing.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                        f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"))
    return copied, target.verify(record=True, verified_by="python -m core history migrate")


@functools.lru_cache(maxsize=None)
def _current_state_query(by_session: bool, by_scans: bool, by_version: bool):
    """The current-state select: per (sha256, model_version), the latest verdict's row, else the latest event's.

    Built once per combination of filters, with bound parameters `session_id`, `sha256s` (expanding)
    and `model_version`: building it anew cost about 0.1 ms of CPU per call, several calls per
    Review page rerun (SQLAlchemy sets up a new subquery's columns each time), and a statement that
    is the same object each time keeps its cache key, which SQLAlchemy otherwise computes anew.
    """
    grouped = sa.select(
        events.c.sha256, events.c.model_version,
        sa.func.max(events.c.id).label("last_id"),
        sa.func.min(events.c.time).label("first_time"),
        sa.func.count().label("event_count"),
        sa.func.max(sa.case((events.c.kind.in_(READ_KINDS), events.c.id))).label("verdict_id"),
    ).where(events.c.kind.in_(CASE_KINDS)).group_by(events.c.sha256, events.c.model_version)
    if by_session:
        # A case belongs to a session when the session touched the scan, whoever recorded its latest event.
        touched = events.alias("touched")
        grouped = grouped.where(sa.exists().where(touched.c.session_id == sa.bindparam("session_id"),
                                                  touched.c.sha256 == events.c.sha256,
                                                  touched.c.model_version == events.c.model_version))
    if by_scans:
        grouped = grouped.where(events.c.sha256.in_(sa.bindparam("sha256s", expanding=True)))
    if by_version:
        grouped = grouped.where(events.c.model_version == sa.bindparam("model_version"))
    latest = grouped.subquery("latest")
    status = sa.case((events.c.kind == "prediction", "new"), (events.c.verdict == "flag", "flagged"),
                     else_="reviewed").label("status")
    return (sa.select(*(events.c[name] for name in COLUMNS), status, latest.c.first_time, latest.c.event_count)
            .join_from(events, latest, events.c.id == sa.func.coalesce(latest.c.verdict_id, latest.c.last_id))
            .order_by(latest.c.first_time, events.c.id))


@functools.lru_cache(maxsize=None)
def _case_events_query():
    """Every case event of the scans in the expanding parameter `sha256s`, in id order (see `_apply_reads`)."""
    return (sa.select(*(events.c[name] for name in COLUMNS))
            .where(events.c.sha256.in_(sa.bindparam("sha256s", expanding=True)), events.c.kind.in_(CASE_KINDS))
            .order_by(events.c.id))


def _walk(connection: Connection, checkpoint: Mapping | None, anchor: str | None) -> ChainReport:
    """Read every event in id order, recomputing each hash; stop judging at the first mismatch, keep counting."""
    columns = (events.c.id, events.c.hash, *(events.c[name] for name in HASHED_COLUMNS + OPTIONAL_HASHED_COLUMNS))
    rows = connection.execution_options(yield_per=READ_BATCH).execute(sa.select(*columns).order_by(events.c.id))
    expected_previous, previous_id = GENESIS_HASH, None
    count, bad_id, problem, anchor_seen = 0, None, "", anchor is None
    checkpoint_id = checkpoint["last_event_id"] if checkpoint else None
    checkpoint_seen = checkpoint is None
    for row in rows.mappings():
        count += 1
        if bad_id is not None:
            continue
        if row["prev_hash"] != expected_previous:
            bad_id = row["id"]
            problem = ("its prev_hash is not the hash of the event before it (event "
                       f"{previous_id}): an event was removed or inserted before it" if previous_id is not None else
                       "it is the first event but does not follow the genesis hash: events were removed before it")
        elif event_hash(row) != row["hash"]:
            bad_id, problem = row["id"], "its fields do not match its hash: the row was changed after it was written"
        elif checkpoint_id is not None and row["id"] == checkpoint_id:
            checkpoint_seen = True
            if row["hash"] != checkpoint["last_hash"]:
                bad_id, problem = row["id"], (f"its hash differs from the one verified at {checkpoint['time']}: "
                                              "the history was rewritten from here")
        elif checkpoint_id is not None and not checkpoint_seen and row["id"] > checkpoint_id:
            bad_id, problem = checkpoint_id, (f"it was the last event verified at {checkpoint['time']} and is "
                                              "missing: events were removed")
        anchor_seen = anchor_seen or row["hash"] == anchor
        expected_previous, previous_id = row["hash"], row["id"]
    if bad_id is None and not checkpoint_seen:
        bad_id, problem = checkpoint_id, (f"it was the last event verified at {checkpoint['time']} and is missing: "
                                          "events were removed from the end")
    if bad_id is None and not anchor_seen:
        bad_id, problem = previous_id, f"no event has the anchor hash {anchor}: the history was cut or rewritten"
    return ChainReport(intact=bad_id is None, event_count=count, last_event_id=previous_id,
                       last_hash=expected_previous, first_bad_event_id=bad_id, problem=problem)


def _apply_reads(connection: Connection, rows: list[dict]) -> None:
    """Give each current-state row its case's status and final label from all its reads (`core.review.reads`).

    The row itself stays the case's latest verdict (else its latest event); `reads` (each reader's
    latest read) and `adjudication` are added for the pages, which decide who may see them.
    """
    by_case: dict[tuple[str, str], list[dict]] = {}
    for start in range(0, len(rows), SCANS_PER_QUERY):
        digests = list({row["sha256"] for row in rows[start:start + SCANS_PER_QUERY]})
        for event in connection.execute(_case_events_query(), {"sha256s": digests}).mappings():
            by_case.setdefault((event["sha256"], event["model_version"]), []).append(dict(event))
    for row in rows:
        case_events = by_case.get((row["sha256"], row["model_version"]), [])
        row["status"], row["final_label"] = case_state(case_events)
        row["reads"] = reads_of(case_events)
        row["adjudication"] = adjudication_of(case_events)


def _same_reader(row: Mapping) -> tuple:
    """Conditions selecting events by the same reader as `row`: issuer and subject, else the typed name."""
    if row["actor_subject"]:
        return events.c.actor_issuer == row["actor_issuer"], events.c.actor_subject == row["actor_subject"]
    return events.c.actor_subject == "", events.c.reviewer == row["reviewer"]


def canonical_detail(detail: Mapping) -> str:
    """An event's detail as canonical JSON (keys sorted, no whitespace), the form that is stored and hashed."""
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL, and both engines must store the same characters.
    return str(text or "").replace("\x00", "").strip()


def _event_row(kind: str, session_id: str, reviewer: str, file_name: str, sha256: str, model_version: str,
               predicted_class: str | None, probabilities: Mapping[str, float], verdict: str | None = None,
               final_label: str | None = None, reason: str = "", note: str = "",
               actor: Mapping[str, str] | None = None, detail: Mapping | None = None) -> dict:
    if not session_id or not sha256 or not model_version:
        raise ValueError("an event needs a session id, a sha256 and a model version")
    unknown = set(probabilities) - set(CLASS_NAMES)
    if unknown:
        raise ValueError(f"probabilities for unknown classes {sorted(unknown)}")
    row = {
        "session_id": session_id, "reviewer": _clean(reviewer)[:MAX_REVIEWER_CHARS],
        "kind": kind, "sha256": sha256, "file_name": str(file_name).replace("\x00", "")[:MAX_FILE_NAME_CHARS],
        "model_version": model_version, "predicted_class": predicted_class,
        "verdict": verdict, "final_label": final_label, "reason": reason, "note": note,
        "detail": canonical_detail(detail) if detail else "",
    }
    actor = actor or {}
    for column in IDENTITY_COLUMNS:
        row[column] = _clean(actor.get(column.removeprefix("actor_"), ""))[:MAX_IDENTITY_CHARS]
    for name, column in zip(CLASS_NAMES, PROBABILITY_COLUMNS):
        value = probabilities.get(name)
        row[column] = None if value is None else float(value)
    return row
