"""Shared fixtures: a tiny untrained model with its card, and synthetic scans."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest

from tests.postgres import database_url, postgres_server  # noqa: F401  (fixtures: every history test runs on both engines)
from tests.orthanc import dicomweb_env, orthanc_server  # noqa: F401  (fixtures: the DICOMweb archive)
from tests.synthetic import encode, make_tiny_model, synthetic_slice


@pytest.fixture(autouse=True)
def _history_from_the_test_only(monkeypatch, tmp_path_factory):
    """A BRAINSCAN_DATABASE_URL in the shell (a team's database) must never receive a test's events.

    Likewise the scan archive: a test's scans go to a folder of its own, never to data/scans or
    a DICOMweb archive named in the shell or in .streamlit/secrets.toml.

    After the test, the history engines it opened are closed: each test has its own database, and
    pooled connections (three file handles each on SQLite) would otherwise pile up over the run.
    """
    monkeypatch.delenv("BRAINSCAN_DATABASE_URL", raising=False)
    for name in ("BRAINSCAN_DICOMWEB_URL", "BRAINSCAN_DICOMWEB_USER", "BRAINSCAN_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRAINSCAN_SCAN_DIR", str(tmp_path_factory.mktemp("scans")))
    monkeypatch.setenv("BRAINSCAN_SECRETS_FILE", str(tmp_path_factory.getbasetemp() / "no-secrets.toml"))
    yield
    store = sys.modules.get("core.review.store")
    if store is not None:
        store.dispose_engines()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """Path of a tiny `.keras` model with a valid card and a permissive gate (shared, read-only)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model_path):
    """The tiny model loaded as a `core.model.inference.Classifier`."""
    from core.model.inference import Classifier

    return Classifier.load(tiny_model_path)


@pytest.fixture
def history_path(tmp_path, tiny_model_path, monkeypatch):
    """Point the app at the tiny model and a fresh history database; return the database path."""
    path = tmp_path / "history.sqlite3"
    monkeypatch.setenv("BRAINSCAN_MODEL", str(tiny_model_path))
    monkeypatch.setenv("BRAINSCAN_HISTORY_DB", str(path))
    return path


@pytest.fixture
def scan_png() -> bytes:
    """PNG bytes of one synthetic head-like slice."""
    return encode(synthetic_slice(7, 96))
