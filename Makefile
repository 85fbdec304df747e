# The two promised commands: `make run` sets up and starts the app; `make test` sets up and runs all tests.
PYTHON ?= python3
PORT ?= 8501

.PHONY: setup setup-dev browser run test bench

# The project itself goes in editable, without dependencies (requirements*.txt pin those), so that
# `python -m core` and `brainscan` work from any folder and find the bundled model in models/.
setup:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

setup-dev:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .

# Debian's Chromium drives the real-browser tests; skipped quietly where apt is unavailable.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed: browser tests will be skipped"; }

run: setup
	$(PYTHON) -m streamlit run streamlit_app.py --server.port $(PORT) --server.headless true

# The layer contracts (pyproject.toml) first: a broken one fails the run before any test starts.
test: setup-dev browser
	$(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-cache
	$(PYTHON) -m pytest -q

bench: setup-dev browser
	$(PYTHON) bench/inference.py
	$(PYTHON) bench/app.py
