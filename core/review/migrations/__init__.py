"""Versioned schema migrations of the history (Alembic), shipped inside the package.

`script_location` is this folder, found from the package's own path, so `python -m core history
upgrade` works from any folder and from an installed wheel; no alembic.ini holds a URL. Each
revision in `versions/` is frozen: it spells out its tables rather than importing today's
`core.review.database.metadata`, which the test suite compares with the upgraded databases.

A new revision, from the repository root (autogenerate compares `metadata` with the database):

    python -c "from alembic import command; from core.review import migrations; \\
        command.revision(migrations.alembic_config('sqlite:///data/history.sqlite3'), 'what changes', autogenerate=True)"

On SQLite, Alembic's batch mode rebuilds a table to alter it, and the rebuilt table has no
triggers: a revision that alters `events` or `chain_verifications` must create the append-only
triggers again (`core.review.migrations.versions.v0001_hash_chained_events.create_triggers`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(url: str | URL) -> Config:
    """An Alembic configuration for the history at `url`, with this package as its script location."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    # The configuration is an INI parser, for which % starts an interpolation (e.g. in a password).
    config.set_main_option("sqlalchemy.url", text.replace("%", "%%"))
    return config


@lru_cache(maxsize=1)
def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    """The revision this version of the app expects; there is exactly one head."""
    heads = _script_directory().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the history migrations have {len(heads)} heads, not one: {', '.join(heads)}")
    return heads[0]


def known_revisions() -> set[str]:
    """Every revision this version of the app can upgrade from."""
    return {script.revision for script in _script_directory().walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at; None for an empty (or pre-migration) database."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(url: str | URL) -> None:
    """Apply every migration the database at `url` lacks (env.py opens its own connection without a pool)."""
    command.upgrade(alembic_config(url), "head")
