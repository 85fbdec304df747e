# The two promised commands: `make run` sets up and starts the app; `make test` sets up and runs all tests.
PYTHON ?= python3
PORT ?= 8501

.PHONY: setup setup-dev browser services run team test bench

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

# Debian's PostgreSQL, nginx and Orthanc with its DICOMweb plugin: the team history's and the scan
# archive's tests and `make team`; where apt is unavailable, the tests that need them are skipped, saying why.
services:
	@{ ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && \
	   [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } || { \
	  (command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql nginx orthanc orthanc-dicomweb >/dev/null) || \
	  echo "postgresql, nginx or orthanc could not be installed: the PostgreSQL, archive and team tests will be skipped"; }

# Local mode listens on 127.0.0.1 only. BRAINSCAN_LISTEN=0.0.0.0 (or another address) is the explicit
# opt-in to other interfaces, and prints a warning: local mode has no sign-in (docs/sign-in.md).
BRAINSCAN_LISTEN ?= 127.0.0.1
BRAINSCAN_MAX_UPLOAD_MB ?= 50

# The model is converted and checked for the fast runtime before the server starts (7-8 s once, then 0.6 s from
# the cache), so the first reader's page does not wait for it; should that fail, the app says why on its pages.
run: setup
	-$(PYTHON) -m core prepare-model
	@case "$(BRAINSCAN_LISTEN)" in 127.0.0.1|localhost|::1) ;; *) \
	  echo "WARNING: listening on $(BRAINSCAN_LISTEN): anyone who can reach this machine can use the app under" \
	       "any name. Without an [auth] section in .streamlit/secrets.toml there is no sign-in (docs/sign-in.md)." >&2;; esac
	$(PYTHON) -m streamlit run streamlit_app.py --server.port $(PORT) --server.headless true \
	  --server.address $(BRAINSCAN_LISTEN) --server.maxUploadSize $(BRAINSCAN_MAX_UPLOAD_MB)

# PostgreSQL, two replicas and nginx on loopback (deploy/team.py): http://127.0.0.1:8080 until Ctrl-C.
team: setup services
	$(PYTHON) deploy/team.py

# The layer contracts (pyproject.toml) first: a broken one fails the run before any test starts.
test: setup-dev browser services
	$(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())' --no-cache
	$(PYTHON) -m pytest -q

bench: setup-dev browser services
	$(PYTHON) bench/inference.py
	$(PYTHON) bench/app.py
	$(PYTHON) bench/team.py
