"""Alembic's entry point for the history: the URL comes from the configuration the caller built, never a file.

Batch mode (a no-op on PostgreSQL, move-and-copy on SQLite) and type comparison are on in both
branches, so autogenerate and `alembic check` see what each engine really stores. Online, one
transaction holds the whole upgrade: on SQLite it takes the write lock at BEGIN, so two processes
upgrading the same file queue instead of racing, and a failed upgrade leaves the file as it was.
"""

from __future__ import annotations

from alembic import context

from core.review.database import create_history_engine, metadata

OPTIONS = {"target_metadata": metadata, "render_as_batch": True, "compare_type": True}


def run_migrations_offline() -> None:
    """Write the upgrade's SQL instead of running it (`alembic upgrade --sql`)."""
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Upgrade through a pool-less engine in one transaction (SQLite's DDL included)."""
    engine = create_history_engine(context.config.get_main_option("sqlalchemy.url"), for_migrations=True)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, transactional_ddl=True, **OPTIONS)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
