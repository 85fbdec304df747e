"""Three more event kinds: a second reader's adjudication, a file refused at intake, an export.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

Only the `kind` check constraint widens; no column changes and no event is rewritten. On SQLite,
batch mode rebuilds the `events` table (SQLite cannot alter a constraint), which drops the
table's triggers and indexes with it, so both are created again here, as of this revision. On
PostgreSQL the constraint is dropped and added in place.

Frozen at this revision: the constraint texts, indexes and trigger statements are spelled out here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_KINDS = "kind IN ('prediction', 'verdict')"
NEW_KINDS = "kind IN ('prediction', 'verdict', 'adjudication', 'refusal', 'export')"
MESSAGE = "history events are append-only"


def upgrade() -> None:
    """Widen the kind constraint (rebuilding the table on SQLite, with its indexes and triggers)."""
    _replace_kind_check(NEW_KINDS)


def downgrade() -> None:
    """Narrow the constraint again; refused by the database while events of the new kinds exist."""
    _replace_kind_check(OLD_KINDS)


def _replace_kind_check(condition: str) -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:
        for statement in ("DROP TRIGGER IF EXISTS events_are_not_updated", "DROP TRIGGER IF EXISTS events_are_not_deleted"):
            op.execute(statement)
    # SQLite rebuilds the table: keep AUTOINCREMENT, so an id is never reused, as the table declares.
    with op.batch_alter_table("events", recreate="auto", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_events_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_events_kind"), sa.text(condition))
    if sqlite:
        indexes = {index["name"] for index in sa.inspect(bind).get_indexes("events")}
        predictions_only = sa.text("kind = 'prediction'")
        if "one_prediction_per_session" not in indexes:
            op.create_index("one_prediction_per_session", "events", ["session_id", "sha256", "model_version"],
                            unique=True, sqlite_where=predictions_only)
        if "events_by_scan" not in indexes:
            op.create_index("events_by_scan", "events", ["sha256", "model_version", "id"])
        if "events_by_session" not in indexes:
            op.create_index("events_by_session", "events", ["session_id"])
        for operation, name in (("UPDATE", "updated"), ("DELETE", "deleted")):
            op.execute(f"CREATE TRIGGER IF NOT EXISTS events_are_not_{name} BEFORE {operation} ON events "
                       f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")
