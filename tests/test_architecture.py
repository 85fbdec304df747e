"""The layer contracts in pyproject.toml: kept by the project, and each one broken by a deliberate violation.

`make test` runs `lint-imports` on the project itself; these tests also prove, on a copy of the
tree with one import added, that every contract would catch what it is there to catch.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (requirements-dev.txt)")


def lint(folder: Path) -> subprocess.CompletedProcess:
    """Run lint-imports with `folder` as the project root (it reads pyproject.toml and imports from there)."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=folder, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the project's Python packages, front door and contracts."""
    for name in ("core", "app", "pages"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "streamlit_app.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def add_line(path: Path, line: str) -> None:
    """Append one top-level statement to a module."""
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_project_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


STAGES = "A scan flows up through core's stages"
GLUE = "Pages reach the history store, the scan archive and model loading only through the app's glue"
FRONT_TO_BACK = "Pages sit on the app's glue, the glue on the core"


@pytest.mark.parametrize("module, line, contract, evidence", [
    ("core/scans/scan.py", "import streamlit", "The core must be unaware of user-facing toolkits",
     "core.scans.scan -> streamlit"),
    ("core/pipeline.py", "import app.review", "The core must be unaware of user-facing toolkits",
     "core.pipeline -> app.review"),
    ("core/review/identity.py", "from app import identity", "The core must be unaware of user-facing toolkits",
     "core.review.identity -> app.identity"),
    ("app/review.py", "from pages import history", FRONT_TO_BACK, "app.review -> pages.history"),
    ("app/identity.py", "from app import support", "No module imports another that imports it back",
     "No cycles are allowed in app"),
    ("app/support.py", "import sqlalchemy", "Only the history store talks to a database", "app.support -> sqlalchemy"),
    ("pages/second_reads.py", "from core.archive import folder", GLUE, "pages.second_reads -> core.archive"),
    ("core/model/card.py", "from core.training import metrics", STAGES, "core.model.card -> core.training.metrics"),
    ("core/review/records.py", "from core.training import metrics", STAGES,
     "core.review.records -> core.training.metrics"),
    ("core/scans/scan.py", "from core.scans import intake", "No module imports another that imports it back",
     "No cycles are allowed in core.scans"),
    ("core/pipeline.py", "import sqlite3", "Only the history store talks to a database", "core.pipeline -> sqlite3"),
    ("core/review/export.py", "import sqlalchemy", "Only the history store talks to a database",
     "core.review.export -> sqlalchemy"),
    ("pages/history.py", "from alembic import command", "Only the history store talks to a database",
     "pages.history -> alembic"),
    ("core/cli.py", "import psycopg", "Only the history store talks to a database", "core.cli -> psycopg"),
    ("pages/history.py", "from core.review.store import HistoryStore", GLUE, "pages.history -> core.review.store"),
    ("pages/model.py", "from core.model.inference import Classifier", GLUE, "pages.model -> core.model.inference"),
    ("pages/review.py", "import streamlit_app", GLUE, "pages.review -> streamlit_app"),
])
def test_a_deliberate_violation_breaks_its_contract(tree, module, line, contract, evidence):
    add_line(tree / module, line)
    result = lint(tree)
    assert result.returncode != 0
    broken = " ".join(result.stdout.split("Broken contracts", 1)[-1].split())  # undo the report's line wrapping
    assert contract in broken and evidence in broken, result.stdout


def test_a_new_core_subpackage_must_be_given_a_layer(tree):
    (tree / "core" / "reports").mkdir()
    (tree / "core" / "reports" / "__init__.py").write_text('"""A new stage nobody placed yet."""\n')
    result = lint(tree)
    assert result.returncode != 0
    assert "core.reports" in result.stdout


def test_pages_stay_thin():
    for page in sorted((ROOT / "pages").glob("*.py")):
        lines = len(page.read_text().splitlines())
        assert lines <= 250, f"{page.name} has {lines} lines: move logic to core/ or app/"


def top_level_imports(path: Path) -> set[str]:
    """Every module a file imports, as written (import-linter reads packages only, not single modules)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_review_and_identity_glue_reach_storage_only_through_support():
    # A layers contract allows app.review to import core.review.store directly; only app.support opens stores.
    for module in ("review.py", "identity.py"):
        imported = top_level_imports(ROOT / "app" / module)
        assert not {name for name in imported if name.startswith(("core.review.store", "core.review.database",
                                                                    "core.model.inference", "core.archive."))}, module
