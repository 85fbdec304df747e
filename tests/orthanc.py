"""A real Orthanc with its DICOMweb plugin for the test run (Debian's `orthanc` and `orthanc-dicomweb`).

One server for the session, started as a plain process with its own configuration (deploy/orthanc.json
with a generated user) and storage in a temporary folder, stopped and removed at the end. Tests
that store objects make objects of their own (fresh UIDs), so they never see each other's.
Where Orthanc is not installed, the cases that need it are skipped saying so (`make services`
installs it); where it is installed but will not start, they fail.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.team import LocalOrthanc, orthanc_missing


@pytest.fixture(scope="session")
def orthanc_server() -> Iterator[LocalOrthanc]:
    """A running Orthanc on a loopback port, with DICOMweb at `.url`; skips when Orthanc is not installed."""
    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)
    folder = Path(tempfile.mkdtemp(prefix="brainscan-test-orthanc-"))
    server = LocalOrthanc(folder)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def dicomweb_env(orthanc_server, monkeypatch) -> LocalOrthanc:
    """The app and the command line pointed at the test Orthanc through the environment."""
    for name, value in orthanc_server.environment().items():
        monkeypatch.setenv(name, value)
    return orthanc_server
