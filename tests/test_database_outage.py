"""A database that stops answering is a 503 ``database_unavailable`` on every endpoint, with
``Retry-After``, never a 500; and the service answers again once the database is back. The
outage is real: the API talks to the local PostgreSQL through a TCP relay on 127.0.0.1 that the
test cuts (every connection dropped, new ones refused) and restores on the same port."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from functools import partial

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import migrate
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from tests.services import postgres_database
from worker.in_process import InProcessDispatcher


class Relay:
    """Forwards 127.0.0.1:``port`` to PostgreSQL's 127.0.0.1:5432 until ``cut``."""

    def __init__(self):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(("127.0.0.1", 5432))
            self._open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and drop every open one, as a database that went away."""
        if self._listener is not None:
            # shutdown, not only close: it wakes the thread blocked in accept()
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for end in self._open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self._open = []


@pytest.fixture
def relayed(tmp_path) -> Iterator[tuple[TestClient, Relay]]:
    relay = Relay()
    relay.start()
    with postgres_database() as direct:
        migrate(direct)
        url = direct.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
        assert url != direct
        settings = Settings(
            database_url=url,
            storage_dir=tmp_path / "storage",
            redis_url=None,
            lineage_admin_key=TEST_ADMIN_KEY,
        )
        with TestClient(
            create_app(settings, partial(InProcessDispatcher, settings=settings)),
            headers=ADMIN_HEADERS,
        ) as client:
            yield client, relay
        relay.cut()
        client.app.state.engine.dispose()


def test_a_database_outage_is_503_everywhere_and_passes(relayed):
    client, relay = relayed
    assert client.get("/models").status_code == 200
    relay.cut()
    for method, path, body in (
        ("GET", "/models", None),
        ("GET", "/models/nothing", None),
        ("GET", "/", None),
        ("GET", "/jobs/nothing", None),
        ("GET", "/lineage/nothing", None),
        ("GET", "/audit?verdict=conflict", None),
        ("GET", "/keys", None),
        ("POST", "/keys", {"role": "reader", "name": "x"}),
        ("POST", "/parents", {"hub_id": "org/model"}),
    ):
        answer = client.request(method, path, json=body, headers={"Accept": "application/json"})
        assert answer.status_code == 503, (method, path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "database_unavailable", (method, path, error)
        assert answer.headers["Retry-After"] == "5"
        assert "5432" not in error["message"] and str(relay.port) not in error["message"]
    assert client.get("/healthz").status_code == 503
    relay.start()  # the database is back: so is the service, without a restart
    assert client.get("/models").status_code == 200
    assert client.get("/healthz").status_code == 200
