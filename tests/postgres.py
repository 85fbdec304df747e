"""A real PostgreSQL server for the test run, and the `database_url` fixture that runs a test on both engines.

The server is Debian's `postgresql` (the newest /usr/lib/postgresql/N/bin), a cluster initdb'd in
a temporary folder outside pytest's own (whose parent only root may enter) and owned by the
`postgres` user when the run is root, as CI's is: initdb refuses root. It listens on a free
loopback port with its socket in that folder, holds the app's roles from deploy/postgres-init.sql,
and is stopped and removed at the end of the session. Each test gets a fresh database copied
from one already upgraded to head (a template copy takes milliseconds; the migrations, a second),
and connects as brainscan_app, the role granted only INSERT and SELECT.

Where PostgreSQL is not installed, the PostgreSQL cases are skipped saying so (`make services`
installs it); where it is installed but will not start, they fail.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.team import APP, OWNER, LocalPostgres, postgres_bin

TEMPLATE = "brainscan_head"
ENGINES = ("sqlite", "postgresql")
_databases = itertools.count(1)


def _why_no_postgres() -> str | None:
    if postgres_bin() is None:
        return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run `make services`"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no `postgres` user to own the cluster (initdb refuses root)"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start PostgreSQL as the `postgres` user"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A running PostgreSQL server with the app's roles and an upgraded template database; skips when not installed."""
    reason = _why_no_postgres()
    if reason:
        pytest.skip(reason)
    from core.review.store import upgrade_history

    folder = Path(tempfile.mkdtemp(prefix="brainscan-test-postgres-"))
    server = LocalPostgres(folder, fast=True)
    try:
        server.start()
        server.create_history(TEMPLATE)
        upgrade_history(server.url(OWNER, TEMPLATE))
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def fresh_postgres_history(server: LocalPostgres, upgraded: bool = True) -> str:
    """A new database (at head when `upgraded`, else empty but with the roles' grants); its URL as brainscan_app."""
    name = f"history_{next(_databases)}"
    if upgraded:
        server.create_history(name, template=TEMPLATE)
    else:
        server.create_history(name)
    return server.url(APP, name)


def owner_url(app_url: str) -> str:
    """The same database as the owning role (it may run migrations; triggers still refuse it changes)."""
    return app_url.replace(f"//{APP}@", f"//{OWNER}@", 1)


def superuser_url(app_url: str) -> str:
    """The same database as the superuser, who can do anything, e.g. disable the triggers and tamper."""
    return app_url.replace(f"//{APP}@", "//postgres@", 1)


@pytest.fixture(params=ENGINES)
def database_url(request, tmp_path) -> str:
    """A fresh, empty history at head, once on SQLite (a file in a folder yet to exist) and once on PostgreSQL.

    The engines a test opens are closed after it by conftest's autouse fixture.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'history.sqlite3'}"
    return fresh_postgres_history(request.getfixturevalue("postgres_server"))
