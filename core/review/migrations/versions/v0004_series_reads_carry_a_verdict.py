"""A series read carries a verdict: the verdict-iff-kind constraint admits `series_read`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A reader's read of a whole PACS series (`HistoryStore.record_series_read`) is confirmed,
overridden or flagged as a slice's verdict is, so its event has a verdict. Until now the database
allowed a verdict on `verdict` events only. No event changes and no hash moves.

On SQLite, batch mode rebuilds `events`, dropping its triggers and indexes, which are created
again as revision 0003 left them. On PostgreSQL the constraint changes in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from core.review.migrations.versions.v0003_archive_series_worklists import (
    _drop_sqlite_triggers,
    _restore_sqlite_indexes_and_triggers,
)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_RULE = "(kind = 'verdict') = (verdict IS NOT NULL)"
NEW_RULE = "(kind IN ('verdict', 'series_read')) = (verdict IS NOT NULL)"


def _replace_rule(rule: str) -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:
        _drop_sqlite_triggers()
    with op.batch_alter_table("events", recreate="auto", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint(op.f("ck_events_verdict_iff_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_events_verdict_iff_kind"), sa.text(rule))
    if sqlite:
        _restore_sqlite_indexes_and_triggers(bind)


def upgrade() -> None:
    """Let series reads carry their verdict."""
    _replace_rule(NEW_RULE)


def downgrade() -> None:
    """Back to verdicts on slice reads only; refused by the database while series reads exist."""
    _replace_rule(OLD_RULE)
