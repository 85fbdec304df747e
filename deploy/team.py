"""The team set-up on one machine, for a demonstration: PostgreSQL, Orthanc, N app replicas and nginx, on loopback.

    python deploy/team.py [--replicas 2] [--port 8080] [--folder data/team] [--model M.keras]   (make team)

1. PostgreSQL: a cluster of its own in FOLDER/postgres (Debian's `postgresql` binaries; created
   on first use, kept between runs), owned by the `postgres` user when run as root (initdb refuses
   root), listening on a free loopback port with its socket in the folder and `trust` for local
   connections - a demonstration, not a hardened server;
2. the database `brainscan`, deploy/postgres-init.sql for its roles, then
   `python -m core history upgrade` as brainscan_owner: the migrations run once, before any replica;
3. the scan archive: Orthanc with its DICOMweb plugin (`LocalOrthanc`, deploy/orthanc.json) in
   FOLDER/orthanc, or, where Orthanc is not installed, one scan folder the replicas share;
   the replicas: `streamlit run streamlit_app.py` on 127.0.0.1, each with
   BRAINSCAN_DATABASE_URL naming brainscan_app, the INSERT-and-SELECT role, and the archive's settings;
4. nginx on 127.0.0.1:PORT (deploy/nginx/team.conf.template): WebSocket upgrade, sticky routing
   by cookie, uploads up to BRAINSCAN_MAX_UPLOAD_MB.
Ctrl-C stops everything; the history stays in FOLDER/postgres, the scans in FOLDER/orthanc.

The test suite and bench/team.py start the same pieces through `LocalPostgres`, `LocalOrthanc`,
`replica_command` and `Nginx`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INIT_SQL = DEPLOY / "postgres-init.sql"
SUPERUSER, OWNER, APP = "postgres", "brainscan_owner", "brainscan_app"
DATABASE = "brainscan"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest of Debian's PostgreSQL binary folders (/usr/lib/postgresql/N/bin), else initdb's folder on PATH."""
    def version(folder: Path) -> float:
        try:
            return float(folder.parent.name)
        except ValueError:
            return 0.0

    folders = sorted((path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")), key=version)
    if folders:
        return folders[-1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Wait until 127.0.0.1:`port` accepts connections; raise RuntimeError if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.1)


class LocalPostgres:
    """A PostgreSQL server of its own in `folder` on a loopback port; a context manager that stops it.

    `fast=True` (tests) turns off fsync: the data would not survive a power cut, which no test
    makes. The benchmark and the demonstration keep PostgreSQL's durable defaults.
    """

    def __init__(self, folder: Path, port: int | None = None, *, fast: bool = False, bin_dir: Path | None = None):
        self.bin = bin_dir or postgres_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (make services)")
        self.folder = Path(folder).resolve()
        self.data = self.folder / "data"
        self.port = port or free_port()
        self.fast = fast
        self.log = self.folder / "postgres.log"

    # Commands that touch the data folder run as `postgres` when this process is root: initdb
    # refuses to run as root, and the server must own its files.
    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _run(self, command: list[str], **options) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, **options)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        return result

    def start(self) -> LocalPostgres:
        """Create the cluster on first use, then start the server and wait until it accepts connections."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.folder)]).returncode:
                raise RuntimeError(f"the postgres user cannot write {self.folder}: choose a folder whose parents it "
                                   "may enter (e.g. one made by tempfile.mkdtemp() in /tmp)")
        if not (self.data / "PG_VERSION").exists():
            self._run(self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                                      "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]))
        settings = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.folder}",
                    "-c max_connections=200"]
        if self.fast:
            settings += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                                  "-t", "60", "-o", " ".join(settings), "start"]))
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back open transactions, close connections, flush)."""
        if (self.data / "postmaster.pid").exists():
            self._run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]))

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def url(self, role: str = APP, database: str = DATABASE) -> str:
        """The SQLAlchemy URL of `database` as `role` (trusted on loopback: no password)."""
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{database}"

    def psql(self, *arguments: str, database: str = "postgres") -> str:
        """Run psql as the superuser over loopback; return its output."""
        command = [str(self.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                   "-p", str(self.port), "-U", SUPERUSER, "-d", database, *arguments]
        return self._run(command).stdout

    def database_exists(self, name: str) -> bool:
        """Whether a database of this name exists."""
        return self.psql("-tA", "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"

    def create_history(self, name: str = DATABASE, template: str | None = None) -> None:
        """Create a database with the app's roles and grants (deploy/postgres-init.sql); a copy of `template` if given."""
        if template:
            self.psql("-c", f'CREATE DATABASE "{name}" TEMPLATE "{template}" OWNER {OWNER}',
                      "-c", f'GRANT CONNECT ON DATABASE "{name}" TO {APP}')
            return
        self.psql("-c", f'CREATE DATABASE "{name}"')
        self.psql("-f", str(INIT_SQL), database=name)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exception) -> None:
        self.stop("immediate" if self.fast else "fast")


ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ARCHIVE_USER = "brainscan"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (a sentence naming what to install), or None when it can."""
    if not ORTHANC.exists():
        return "Orthanc is not installed (no /usr/sbin/Orthanc): run `make services` (apt-get install orthanc)"
    if not DICOMWEB_PLUGIN.exists():
        return "Orthanc's DICOMweb plugin is not installed: run `make services` (apt-get install orthanc-dicomweb)"
    return None


class LocalOrthanc:
    """Orthanc with its DICOMweb plugin as a plain process: its own configuration and storage in `folder`.

    The configuration is deploy/orthanc.json with the storage folder, a free loopback port and one
    user of its own (`brainscan` with a password generated on first start and kept in
    FOLDER/password, mode 0600). Authentication is on and the user is always registered, so
    Orthanc never creates its default orthanc/orthanc account; remote access is off, so clients
    other than loopback are refused (Orthanc 1.10.1 has no bind-address setting; deploy/README.md).
    """

    def __init__(self, folder: Path, port: int | None = None):
        reason = orthanc_missing()
        if reason:
            raise RuntimeError(reason)
        self.folder = Path(folder).resolve()
        self.port = port or free_port()
        self.config = self.folder / "orthanc.json"
        self.log = self.folder / "orthanc.log"
        self.user = ARCHIVE_USER
        self.process: subprocess.Popen | None = None

    @property
    def password(self) -> str:
        """The archive user's password, made on first use and kept beside the storage."""
        path = self.folder / "password"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    @property
    def url(self) -> str:
        """The DICOMweb root, as BRAINSCAN_DICOMWEB_URL takes it."""
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def environment(self) -> dict[str, str]:
        """The settings that point the app at this archive."""
        return {"BRAINSCAN_DICOMWEB_URL": self.url, "BRAINSCAN_DICOMWEB_USER": self.user,
                "BRAINSCAN_DICOMWEB_PASSWORD": self.password}

    def start(self, timeout: float = 60.0) -> LocalOrthanc:
        """Write the configuration, start Orthanc and wait until its DICOMweb root answers this user."""
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        settings = json.loads((DEPLOY / "orthanc.json").read_text().replace("@STORAGE@", str(storage)))
        settings.update(HttpPort=self.port, RegisteredUsers={self.user: self.password},
                        Plugins=[str(DICOMWEB_PLUGIN)])
        self.config.write_text(json.dumps(settings, indent=2))
        os.chmod(self.config, 0o600)  # It holds the password.
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.folder)
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/system")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop Orthanc (SIGTERM: it flushes its index and exits)."""
        if self.process is not None:
            stop_process(self.process, timeout=20)

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exception) -> None:
        self.stop()


def replica_command(port: int, upload_mb: float = 50.0) -> list[str]:
    """`streamlit run streamlit_app.py` on 127.0.0.1:`port`, headless, uploads capped at the app's own limit."""
    return [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
            "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.maxUploadSize", str(max(1, round(upload_mb)))]


def wait_until_healthy(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 90.0) -> None:
    """Wait until a replica's /_stcore/health answers 200; raise RuntimeError with its log's tail otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a child process, killing it if it does not end within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Nginx:
    """nginx in front of loopback replicas, every file inside `prefix`; a context manager that stops it."""

    def __init__(self, prefix: Path, port: int, replica_ports: list[int], upload_mb: float = 50.0):
        self.executable = shutil.which("nginx") or "/usr/sbin/nginx"
        self.prefix = Path(prefix).resolve()
        self.port = port
        self.config = self.prefix / "nginx.conf"
        servers = "\n".join(f"        server 127.0.0.1:{replica} max_fails=1 fail_timeout=10s;"
                            for replica in replica_ports)
        text = (DEPLOY / "nginx" / "team.conf.template").read_text()
        for name, value in (("PREFIX", str(self.prefix)), ("DEPLOY", str(DEPLOY)), ("SERVERS", servers),
                            ("PORT", str(port)), ("UPLOAD_MB", str(max(1, round(upload_mb))))):
            text = text.replace(f"@{name}@", value)
        self.text = text
        self.process: subprocess.Popen | None = None

    def _command(self, *extra: str) -> list[str]:
        return [self.executable, "-p", str(self.prefix), "-c", str(self.config), "-e", str(self.prefix / "error.log"),
                *extra]

    def start(self) -> Nginx:
        """Write the configuration, check it (nginx -t), start nginx in the foreground and wait for its port."""
        for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "temp" / folder).mkdir(parents=True, exist_ok=True)
            # Workers run as an unprivileged user when the master is root; they buffer large uploads here.
            os.chmod(self.prefix / "temp" / folder, 0o777)
        self.config.write_text(self.text)
        check = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused {self.config}: {check.stderr.strip()}")
        with open(self.prefix / "stderr.log", "wb") as errors:  # The child keeps its own descriptor.
            self.process = subprocess.Popen(self._command("-g", "daemon off;"), stdout=subprocess.DEVNULL,
                                            stderr=errors)
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        """Stop nginx (SIGQUIT: finish requests in flight, then exit)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exception) -> None:
        self.stop()


def prepare_history(server: LocalPostgres, name: str = DATABASE) -> None:
    """Create the database (roles and grants) if missing and upgrade it as the owner, as an operator would."""
    if not server.database_exists(name):
        server.create_history(name)
    else:
        server.psql("-f", str(INIT_SQL), database=name)  # Idempotent: grants on tables added since.
    subprocess.run([sys.executable, "-m", "core", "history", "upgrade", "--database", server.url(OWNER, name)],
                   cwd=ROOT, check=True, timeout=120)


def _interrupt(*_signal) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demonstration as Ctrl-C does, through the same clean-up.


def main(argv: list[str] | None = None) -> int:
    """Start PostgreSQL, the scan archive, the replicas and nginx on loopback; stop them all on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="app processes behind nginx (default 2)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1 (default 8080)")
    parser.add_argument("--folder", default=str(ROOT / "data" / "team"), help="PostgreSQL's, Orthanc's and nginx's files")
    parser.add_argument("--model", help="model file (default: $BRAINSCAN_MODEL or the bundled model)")
    arguments = parser.parse_args(argv)
    folder = Path(arguments.folder).resolve()
    upload_mb = float(os.environ.get("BRAINSCAN_MAX_UPLOAD_MB") or 50)
    replicas: list[subprocess.Popen] = []
    with LocalPostgres(folder / "postgres") as server, contextlib.ExitStack() as archive:
        prepare_history(server)
        environment = dict(os.environ, BRAINSCAN_DATABASE_URL=server.url(APP), TF_CPP_MIN_LOG_LEVEL="3",
                           BRAINSCAN_TEAM_DEMO="1")
        if orthanc_missing():
            # Replicas on one machine can share a folder; a team on several machines needs the archive.
            print(f"{orthanc_missing()}; the replicas share the scan folder {folder / 'scans'} instead",
                  file=sys.stderr)
            environment["BRAINSCAN_SCAN_DIR"] = str(folder / "scans")
            archive_line = f"scan folder {folder / 'scans'}"
        else:
            orthanc = archive.enter_context(LocalOrthanc(folder / "orthanc"))
            environment.update(orthanc.environment())
            archive_line = f"Orthanc at {orthanc.url} (user {orthanc.user}, password in {orthanc.folder}/password)"
        if arguments.model:
            environment["BRAINSCAN_MODEL"] = str(Path(arguments.model).resolve())
        ports = [free_port() for _ in range(arguments.replicas)]
        try:
            for index, port in enumerate(ports, start=1):
                with open(folder / f"replica-{index}.log", "wb") as log:
                    replicas.append(subprocess.Popen(replica_command(port, upload_mb), cwd=ROOT, env=environment,
                                                     stdout=log, stderr=subprocess.STDOUT))
            for process, port, index in zip(replicas, ports, range(1, len(ports) + 1)):
                wait_until_healthy(f"http://127.0.0.1:{port}", process, folder / f"replica-{index}.log")
            with Nginx(folder / "nginx", arguments.port, ports, upload_mb):
                print(f"BrainScan Review: http://127.0.0.1:{arguments.port}  ({len(ports)} replicas on ports "
                      f"{', '.join(map(str, ports))}; PostgreSQL on {server.port}, logs in {folder})")
                print(f"scan archive: {archive_line}")
                print(f"verify the history: python -m core audit verify --database {server.url(APP)}")
                print("Ctrl-C stops nginx, the replicas, the archive and PostgreSQL.", flush=True)
                signal.signal(signal.SIGTERM, _interrupt)
                while all(process.poll() is None for process in replicas):
                    time.sleep(1)
                print("a replica exited; stopping", file=sys.stderr)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
        finally:
            for process in replicas:
                stop_process(process)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
