"""The scan archive and worklists: an event `detail`, three more event kinds, and each reader's worklist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

`events` gains `detail` (canonical JSON: an archive event's UIDs and object sha256, a series
read's key slices; empty otherwise), hashed only when not empty, so every earlier event keeps its
hash and the chain verifies across the upgrade. The kind constraint widens to `archive`,
`series_read` and `result`. Two append-only tables hold the worklists: `worklist_entries` (a
scan added to an owner's worklist) and `worklist_clears` (an owner's "clear worklist").

On SQLite, batch mode rebuilds `events`, which drops its triggers and indexes with it, so both are
created again here, as of this revision. On PostgreSQL the column and constraint change in place.
The app's role gets SELECT and INSERT on the new tables from deploy/postgres-init.sql's default
privileges; no role may UPDATE or DELETE them (triggers, as for the events).

Frozen at this revision: the constraint texts, indexes and trigger statements are spelled out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_KINDS = "kind IN ('prediction', 'verdict', 'adjudication', 'refusal', 'export')"
NEW_KINDS = ("kind IN ('prediction', 'verdict', 'adjudication', 'refusal', 'export', 'archive', 'series_read', "
             "'result')")
EVENTS_MESSAGE = "history events are append-only"
WORKLIST_MESSAGE = "worklist rows are append-only: add an entry or a clear"
WORKLIST_TABLES = ("worklist_entries", "worklist_clears")


def upgrade() -> None:
    """Add `detail`, widen the kinds (rebuilding `events` on SQLite), create the worklist tables."""
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:
        _drop_sqlite_triggers()
    with op.batch_alter_table("events", recreate="auto", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("detail", sa.Text, nullable=False, server_default=""))
        batch.drop_constraint(op.f("ck_events_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_events_kind"), sa.text(NEW_KINDS))
    if sqlite:
        _restore_sqlite_indexes_and_triggers(bind)
    op.create_table(
        "worklist_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("file_name", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_entries")),
        sqlite_autoincrement=True,
    )
    op.create_index("worklist_by_owner", "worklist_entries", ["owner", "id"])
    op.create_table(
        "worklist_clears",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("last_entry_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_clears")),
        sqlite_autoincrement=True,
    )
    op.create_index("worklist_clears_by_owner", "worklist_clears", ["owner", "id"])
    for table in WORKLIST_TABLES:
        _protect(bind.dialect.name, table, WORKLIST_MESSAGE)


def downgrade() -> None:
    """Drop the worklists and `detail`; refused by the database while events of the new kinds exist."""
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    for table in WORKLIST_TABLES:
        op.drop_table(table)
    if sqlite:
        _drop_sqlite_triggers()
    with op.batch_alter_table("events", recreate="auto", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_events_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_events_kind"), sa.text(OLD_KINDS))
        batch.drop_column("detail")
    if sqlite:
        _restore_sqlite_indexes_and_triggers(bind)


def _drop_sqlite_triggers() -> None:
    for statement in ("DROP TRIGGER IF EXISTS events_are_not_updated", "DROP TRIGGER IF EXISTS events_are_not_deleted"):
        op.execute(statement)


def _restore_sqlite_indexes_and_triggers(bind) -> None:
    indexes = {index["name"] for index in sa.inspect(bind).get_indexes("events")}
    predictions_only = sa.text("kind = 'prediction'")
    if "one_prediction_per_session" not in indexes:
        op.create_index("one_prediction_per_session", "events", ["session_id", "sha256", "model_version"],
                        unique=True, sqlite_where=predictions_only)
    if "events_by_scan" not in indexes:
        op.create_index("events_by_scan", "events", ["sha256", "model_version", "id"])
    if "events_by_session" not in indexes:
        op.create_index("events_by_session", "events", ["session_id"])
    _protect("sqlite", "events", EVENTS_MESSAGE)


def _protect(dialect: str, table: str, message: str) -> None:
    """Refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) of `table`, as revision 0001 does for the events."""
    if dialect == "sqlite":
        for operation, name in (("UPDATE", "updated"), ("DELETE", "deleted")):
            op.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_are_not_{name} BEFORE {operation} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
        return
    # refuse_history_change() is revision 0001's: it raises its argument as the message.
    for operation, name, level in (("UPDATE", "updated", "ROW"), ("DELETE", "deleted", "ROW"),
                                   ("TRUNCATE", "truncated", "STATEMENT")):
        op.execute(f"CREATE TRIGGER {table}_are_not_{name} BEFORE {operation} ON {table} FOR EACH {level} "
                   f"EXECUTE FUNCTION refuse_history_change('{message}')")
