"""A real Orthanc with its DICOMweb plugin for the test run (Debian's `orthanc` and `orthanc-dicomweb`).

One server for the session, started as a plain process with its own configuration (deploy/orthanc.json
with a generated user) and storage in a temporary folder, stopped and removed at the end. Tests
that store objects make objects of their own (fresh UIDs), so they never see each other's.
Where Orthanc is not installed, the cases that need it are skipped saying so (`make services`
installs it); where it is installed but will not start, they fail.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


# A WADO-RS retrieve of one instance: GET .../studies/S/series/R/instances/I (a QIDO search ends in /instances).
_RETRIEVE = re.compile(rb"^GET [^ ]*/studies/[^/ ]+/series/[^/ ]+/instances/[^/? ]+ ", re.MULTILINE)


@contextmanager
def cutting_proxy(url: str, cut_at_retrieve: int, keep_bytes: int = 200) -> Iterator[str]:
    """A loopback TCP relay to the server at `url` that cuts the `cut_at_retrieve`-th instance retrieve off halfway.

    Everything passes through unchanged until that retrieve's request is seen; then only the first
    `keep_bytes` of its response reach the client and both sockets close, as a network cut would
    leave them. Yields `url` with its host and port replaced by the relay's.
    """
    parts = urlsplit(url)
    upstream = (parts.hostname, parts.port)
    listener = socket.create_server(("127.0.0.1", 0))
    state = {"retrieves": 0}
    lock = threading.Lock()

    def relay(client: socket.socket) -> None:
        server = socket.create_connection(upstream)
        cut = threading.Event()

        def upward() -> None:
            try:
                while data := client.recv(65536):
                    with lock:
                        state["retrieves"] += len(_RETRIEVE.findall(data))
                        if state["retrieves"] >= cut_at_retrieve and not cut.is_set() and _RETRIEVE.search(data):
                            cut.set()
                    server.sendall(data)
            except OSError:
                pass

        thread = threading.Thread(target=upward, daemon=True)
        thread.start()
        sent = 0
        try:
            while data := server.recv(65536):
                if cut.is_set():
                    client.sendall(data[:max(0, keep_bytes - sent)])
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for end in (client, server):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    host, port = listener.getsockname()
    try:
        yield urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))
    finally:
        listener.close()
