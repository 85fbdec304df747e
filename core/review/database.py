"""The history's tables and database engines, one definition for SQLite and PostgreSQL (SQLAlchemy Core).

`metadata` is what the migrations (`core.review.migrations`) must produce: the test suite upgrades
empty databases of both engines and compares them with it (`alembic check`). Its naming
convention gives every constraint the same name on both dialects, so later migrations can name
what they alter. Nothing outside `core.review` imports this module; callers use the store.

Engines: SQLite runs in WAL mode with `synchronous=FULL` and a 15 s busy timeout, and its
transactions are real ones - SQLAlchemy's driver would otherwise begin them lazily and never
around DDL - with writes taking the write lock up front (`BEGIN IMMEDIATE`). PostgreSQL engines
check a pooled connection before lending it (`pool_pre_ping`), so a server restart costs one
failed attempt at most, and give up connecting after a few seconds rather than hang a page.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

from core.review.records import IDENTITY_COLUMNS, PROBABILITY_COLUMNS

BUSY_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5
# A writer waits this long for the append lock before its save is refused as unavailable.
LOCK_TIMEOUT_MS = 15_000
# One constant key for PostgreSQL's transaction-scoped advisory lock that serialises appends, so
# every process computes the next event's `prev_hash` from the true head of the chain.
APPEND_LOCK_KEY = 0x4272_6169_6E53_6361  # "BrainSca"
# Passed as an execution option: this connection's next transaction takes SQLite's write lock at BEGIN.
IMMEDIATE = "brainscan_sqlite_immediate"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
PREDICTIONS_ONLY = sa.text("kind = 'prediction'")

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Text, nullable=False),  # ISO 8601 UTC text, so both engines give back the same string
    sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False, server_default=""),
    *(sa.Column(name, sa.Text, nullable=False, server_default="") for name in IDENTITY_COLUMNS),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("file_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("predicted_class", sa.Text),
    *(sa.Column(name, sa.Double) for name in PROBABILITY_COLUMNS),
    sa.Column("verdict", sa.Text),
    sa.Column("final_label", sa.Text),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("note", sa.Text, nullable=False, server_default=""),
    sa.Column("prev_hash", sa.Text, nullable=False),
    sa.Column("hash", sa.Text, nullable=False),
    # What an event's kind needs beyond the columns, as canonical JSON (an archive event's reference:
    # UIDs and the archived object's sha256; a series read's key slices). Empty for the other kinds.
    sa.Column("detail", sa.Text, nullable=False, server_default=""),
    sa.CheckConstraint("kind IN ('prediction', 'verdict', 'adjudication', 'refusal', 'export', 'archive', "
                       "'series_read', 'result')", name="kind"),
    sa.CheckConstraint("verdict IS NULL OR verdict IN ('confirm', 'override', 'flag')", name="verdict"),
    sa.CheckConstraint("(kind IN ('verdict', 'series_read')) = (verdict IS NOT NULL)", name="verdict_iff_kind"),
    sa.CheckConstraint("length(prev_hash) = 64 AND length(hash) = 64", name="hash_length"),
    # Each hash is followed at most once: two events naming the same predecessor would fork the chain.
    sa.UniqueConstraint("prev_hash"),
    # The same prediction seen again in a session (a rerun, a re-upload) is not a new event.
    sa.Index("one_prediction_per_session", "session_id", "sha256", "model_version", unique=True,
             sqlite_where=PREDICTIONS_ONLY, postgresql_where=PREDICTIONS_ONLY),
    sa.Index("events_by_scan", "sha256", "model_version", "id"),
    sa.Index("events_by_session", "session_id"),
    sqlite_autoincrement=True,
)

# Each reader's worklist, append-only like the events: an entry adds a scan (a later entry for the same
# scan changes nothing), a clear empties the worklist up to and including its `last_entry_id`. The
# open worklist is the owner's entries after their latest clear, in entry order, first entry per scan.
worklist_entries = sa.Table(
    "worklist_entries", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),  # the history session / signed-in user key (app.support)
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("file_name", sa.Text, nullable=False),
    sa.Index("worklist_by_owner", "owner", "id"),
    sqlite_autoincrement=True,
)
worklist_clears = sa.Table(
    "worklist_clears", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("last_entry_id", sa.Integer, nullable=False),
    sa.Index("worklist_clears_by_owner", "owner", "id"),
    sqlite_autoincrement=True,
)

# Every run of `python -m core audit verify` (or the History page's check): what it found, for the admin's view.
chain_verifications = sa.Table(
    "chain_verifications", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Text, nullable=False),
    sa.Column("verified_by", sa.Text, nullable=False, server_default=""),
    sa.Column("intact", sa.Boolean, nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("last_event_id", sa.Integer),
    sa.Column("last_hash", sa.Text, nullable=False),
    sa.Column("first_bad_event_id", sa.Integer),
    sa.Column("problem", sa.Text, nullable=False, server_default=""),
    sqlite_autoincrement=True,
)


def normalise_url(url: str | URL) -> URL:
    """A history URL with PostgreSQL's driver made explicit (psycopg 3); raise ValueError for anything else."""
    try:
        parsed = make_url(url)
    except Exception as error:  # SQLAlchemy raises ArgumentError, ValueError or TypeError for a malformed URL.
        raise ValueError(f"{str(url)!r} is not a database URL (sqlite:///PATH or postgresql+psycopg://...)") \
            from error
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ValueError(f"the history runs on sqlite:/// or postgresql+psycopg:// URLs, not {parsed.drivername}://")
    return parsed


def display_url(url: str | URL) -> str:
    """The URL as safe to show on a page or in a log: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # Whatever could not be parsed is not shown either: it may hold a password.
        return "(an unreadable database URL)"


def is_sqlite(url: str | URL) -> bool:
    """True for a SQLite URL."""
    return make_url(url).get_backend_name() == "sqlite"


def create_history_engine(url: str | URL, *, for_migrations: bool = False) -> Engine:
    """An engine for the history at `url`; `for_migrations` gives one without a pool whose transactions hold DDL too."""
    parsed = normalise_url(url)
    pool = {"poolclass": sa.NullPool} if for_migrations else {}
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_S}, **pool)
        _make_sqlite_transactional(engine, always_immediate=for_migrations)
        return engine
    options = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
    if for_migrations:
        return sa.create_engine(parsed, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, **pool)
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=10,
                            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": options})


def _set_wal(dbapi_connection, cursor) -> None:
    """Put the file in WAL mode, waiting (up to the busy timeout) while another process holds it.

    SQLite answers "database is locked" to this pragma at once, without its busy handler, while
    another connection converts the file or holds its lock (two processes opening a new or
    pre-WAL history together), so the wait is done here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except dbapi_connection.OperationalError as error:  # the driver's class (DB-API), not an import here
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _make_sqlite_transactional(engine: Engine, always_immediate: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        # The driver's own transaction handling is switched off so that SQLAlchemy's BEGIN (below)
        # is the one that counts, for DDL as for DML.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA synchronous = FULL")
        # WAL survives a killed writer (the log is replayed or discarded on next open) and lets
        # readers proceed while a verdict is written; the mode is stored in the file.
        _set_wal(dbapi_connection, cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        immediate = always_immediate or connection.get_execution_options().get(IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
