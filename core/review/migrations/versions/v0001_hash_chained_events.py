"""Hash-chained, append-only events and the record of chain verifications; adopts a pre-migration SQLite history.

Revision ID: 0001
Revises:
Create Date: 2026-11-30

A fresh database gets the tables, indexes and append-only triggers. A SQLite history written
before migrations existed (an `events` table, `PRAGMA user_version = 1`, no `alembic_version`)
keeps every event: the old table is renamed, its rows are copied in id order with their ids,
each given the empty identity columns and its place in the hash chain, and the old table is
dropped - all in the one transaction env.py opens, so a failure leaves the file as it was.

Frozen at this revision: the columns, constraints and hashed fields are spelled out here, not
imported from today's code.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.review.chain import GENESIS_HASH, event_hash

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PROBABILITY_COLUMNS = ("p_glioma", "p_meningioma", "p_pituitary", "p_no_tumor")
IDENTITY_COLUMNS = ("actor_issuer", "actor_subject", "actor_email", "actor_name", "actor_role")
LEGACY_COLUMNS = ("id", "time", "session_id", "reviewer", "kind", "sha256", "file_name", "model_version",
                  "predicted_class", *PROBABILITY_COLUMNS, "verdict", "final_label", "reason", "note")
HASHED_COLUMNS = ("time", "session_id", "reviewer", *IDENTITY_COLUMNS, "kind", "sha256", "file_name", "model_version",
                  "predicted_class", *PROBABILITY_COLUMNS, "verdict", "final_label", "reason", "note", "prev_hash")
PROTECTED = {"events": "history events are append-only", "chain_verifications": "audit records are append-only"}
COPY_BATCH = 1000


def upgrade() -> None:
    """Create the schema; first move a pre-migration SQLite history aside, then copy it in, chained."""
    bind = op.get_bind()
    legacy = "events" in sa.inspect(bind).get_table_names()
    if legacy:
        if bind.dialect.name != "sqlite":
            raise RuntimeError("this database has an events table but no schema revision; only a SQLite history "
                               "made before migrations can be adopted")
        for statement in ("DROP VIEW IF EXISTS current_state", "DROP TRIGGER IF EXISTS events_are_not_updated",
                          "DROP TRIGGER IF EXISTS events_are_not_deleted",
                          "DROP INDEX IF EXISTS one_prediction_per_session", "DROP INDEX IF EXISTS events_by_scan",
                          "DROP INDEX IF EXISTS events_by_session"):
            op.execute(statement)
        op.rename_table("events", "events_v1")
    events = create_tables()
    create_triggers(bind.dialect.name)
    if legacy:
        _adopt_legacy_events(bind, events)
        op.drop_table("events_v1")


def downgrade() -> None:
    """Refused: undoing the first revision would drop the audit history itself."""
    raise RuntimeError("the first history revision cannot be downgraded: it holds the audit history")


def create_tables() -> sa.Table:
    """The events and chain_verifications tables with their indexes, as of this revision; returns events."""
    predictions_only = sa.text("kind = 'prediction'")
    events = op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Text, nullable=False),
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
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.CheckConstraint("kind IN ('prediction', 'verdict')", name=op.f("ck_events_kind")),
        sa.CheckConstraint("verdict IS NULL OR verdict IN ('confirm', 'override', 'flag')",
                           name=op.f("ck_events_verdict")),
        sa.CheckConstraint("(kind = 'verdict') = (verdict IS NOT NULL)", name=op.f("ck_events_verdict_iff_kind")),
        sa.CheckConstraint("length(prev_hash) = 64 AND length(hash) = 64", name=op.f("ck_events_hash_length")),
        sa.UniqueConstraint("prev_hash", name=op.f("uq_events_prev_hash")),
        sqlite_autoincrement=True,
    )
    op.create_index("one_prediction_per_session", "events", ["session_id", "sha256", "model_version"], unique=True,
                    sqlite_where=predictions_only, postgresql_where=predictions_only)
    op.create_index("events_by_scan", "events", ["sha256", "model_version", "id"])
    op.create_index("events_by_session", "events", ["session_id"])
    op.create_table(
        "chain_verifications",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Text, nullable=False),
        sa.Column("verified_by", sa.Text, nullable=False, server_default=""),
        sa.Column("intact", sa.Boolean, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("last_event_id", sa.Integer),
        sa.Column("last_hash", sa.Text, nullable=False),
        sa.Column("first_bad_event_id", sa.Integer),
        sa.Column("problem", sa.Text, nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_verifications")),
        sqlite_autoincrement=True,
    )
    return events


def create_triggers(dialect: str) -> None:
    """Refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) of both tables, for every role, in the database itself.

    A later revision that rebuilds either table in SQLite's batch mode calls this again: SQLite
    drops a table's triggers with the table.
    """
    if dialect != "sqlite":
        # One function raises each trigger's own message (its argument); SQLAlchemy doubles the % for the driver.
        op.execute("CREATE OR REPLACE FUNCTION refuse_history_change() RETURNS trigger LANGUAGE plpgsql AS $body$ "
                   "BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation'; END $body$")
    for table, message in PROTECTED.items():
        if dialect == "sqlite":
            for operation, name in (("UPDATE", "updated"), ("DELETE", "deleted")):
                op.execute(f"CREATE TRIGGER {table}_are_not_{name} BEFORE {operation} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
            continue
        for operation, name, level in (("UPDATE", "updated", "ROW"), ("DELETE", "deleted", "ROW"),
                                       ("TRUNCATE", "truncated", "STATEMENT")):
            op.execute(f"CREATE TRIGGER {table}_are_not_{name} BEFORE {operation} ON {table} FOR EACH {level} "
                       f"EXECUTE FUNCTION refuse_history_change('{message}')")


def _adopt_legacy_events(bind, events: sa.Table) -> None:
    # Batches keep memory flat for a long history; ids are kept so that an event keeps its number.
    legacy = sa.table("events_v1", *(sa.column(name) for name in LEGACY_COLUMNS))
    previous_hash, last_id = GENESIS_HASH, -1
    while True:
        rows = bind.execute(sa.select(legacy).where(legacy.c.id > last_id).order_by(legacy.c.id)
                            .limit(COPY_BATCH)).mappings().all()
        if not rows:
            return
        chained = []
        for row in rows:
            event = {**dict(row), **{name: "" for name in IDENTITY_COLUMNS}, "prev_hash": previous_hash}
            event["reviewer"] = event["reviewer"] or ""
            event["reason"] = event["reason"] or ""
            event["note"] = event["note"] or ""
            event["hash"] = previous_hash = event_hash(event, HASHED_COLUMNS)
            chained.append(event)
        bind.execute(events.insert(), chained)
        last_id = rows[-1]["id"]
