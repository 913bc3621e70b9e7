"""Schema fuzzing: schemathesis generates requests for every operation of the app's own OpenAPI
schema (valid ones and, in its negative mode, ones that break the schema) and checks each answer:
never a 5xx, and a status, content type and body that the schema documents.

The app is the real one (``create_app``) on a throwaway PostgreSQL database, migrated, with
storage in a temporary folder and a dispatcher that keeps the jobs it is given instead of running
them (the workers are not started, as in production with the workers down). A few models, a
queued job, an edge and a key are made first, and a third of the cases of an operation with
path parameters (and of ``DELETE /edges``) name them, so lookups hit existing rows as well as
missing ones. Every case is sent twice: with the admin key (so the write endpoints are exercised
past 401) and with no key.

Each operation is its own test, driven by Hypothesis through schemathesis' strategies
(``operation.as_strategy``) rather than its pytest plugin: the plugin's schema-from-a-fixture
(``schemathesis.pytest.from_fixture``) fails under pytest 9 (it reads ``Function._nodeid``), and
the app needs a fixture, its database. The regressions found by the fuzzing follow, at the end.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.api.app import create_app
from app.auth import service as auth
from app.core.config import Settings
from app.core.db import migrate, transaction
from app.engine.model_files import save_model
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from tests.services import postgres_database

# Per operation; every case is sent twice (admin key, no key). LINEAGE_FUZZ_EXAMPLES runs a
# longer search (the default keeps the file to about 20 s on a 2-core machine).
EXAMPLES = int(os.environ.get("LINEAGE_FUZZ_EXAMPLES", "50"))


def no_server_error(ctx, response, case):
    """``not_a_server_error``, except the 503 ``hub_offline`` of a request naming a hub model:
    the tests never reach the hub (offline, empty cache), and that is the documented answer of
    a hub that cannot be reached."""
    if response.status_code == 503 and _error_code(response) == "hub_offline":
        return True
    return not_a_server_error(ctx, response, case)


def _error_code(response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


# schemathesis' negative_data_rejection and positive_data_acceptance are left out: they judge
# a case by the mode that made it, which the two sends per case (and the multipart file arrays
# it serialises without their files) confuse.
CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Every operation of the schema (checked against it below), fuzzed one test each.
OPERATIONS = [
    "GET /healthz",
    "GET /metrics",
    "POST /parents",
    "POST /detect",
    "GET /models",
    "GET /models/{name}",
    "GET /jobs/{job_id}",
    "GET /audit",
    "GET /lineage/{name}",
    "POST /edges",
    "GET /graph/log",
    "GET /keys",
    "POST /keys",
    # Last, as they delete the rows made for the others.
    "DELETE /edges",
    "DELETE /keys/{key_id}",
    "DELETE /models/{name}",
]
# Cases sent, by operation and key (printed at the end of the module with `-s`).
SENT: collections.Counter[str] = collections.Counter()


class KeptJobs:
    """A dispatcher whose workers are not running: it keeps the ids it is handed."""

    def __init__(self, _factory):
        self.job_ids: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.job_ids.append(job_id)

    def close(self) -> None:
        pass


@dataclass
class Seeded:
    """The app under test and the names of the rows made before the fuzzing."""

    app: FastAPI
    models: list[str]
    job_ids: list[str]
    key_ids: list[int]
    edges: list[tuple[str, str]]


def files_of(folder: Path) -> list:
    return [
        ("files", (p.name, p.read_bytes(), "application/octet-stream"))
        for p in sorted(folder.iterdir())
    ]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Iterator[Seeded]:
    root = tmp_path_factory.mktemp("schemathesis")
    with postgres_database() as url:
        migrate(url)
        settings = Settings(
            database_url=url,
            storage_dir=root / "storage",
            redis_url=None,
            # Hub IDs are resolved from an empty local cache: never the network.
            hf_hub_offline=True,
            hf_hub_cache=root / "hf-cache",
            lineage_admin_key=TEST_ADMIN_KEY,
            # The fuzzing sends far more uploads than a key may in a minute; 429 is tested
            # elsewhere (tests/test_auth.py), here the uploads should reach the body checks.
            rate_limit_uploads=0,
            rate_limit_jobs=0,
        )
        app = create_app(settings, KeptJobs)
        client = TestClient(app, headers=ADMIN_HEADERS)  # no lifespan: schemathesis runs it
        models = ["org/root", "org/child", "plain"]
        parent = save_model(root / "parent", tiny_mlp_state(0), TINY_MLP_CONFIG)
        answer = client.post("/parents", data={"name": models[0]}, files=files_of(parent))
        assert answer.status_code == 201, answer.text
        child = save_model(root / "child", tiny_mlp_state(1), TINY_MLP_CONFIG)
        answer = client.post("/detect", data={"name": models[1]}, files=files_of(child))
        assert answer.status_code == 202, answer.text
        job_ids = [answer.json()["job_id"]]
        other = save_model(root / "other", tiny_mlp_state(2), TINY_MLP_CONFIG)
        answer = client.post("/parents", data={"name": models[2]}, files=files_of(other))
        assert answer.status_code == 201, answer.text
        answer = client.post(
            "/edges", json={"parent": models[0], "child": models[1], "reason": "seeded"}
        )
        assert answer.status_code == 201, answer.text
        answer = client.post("/keys", json={"role": "reader", "name": "seeded"})
        assert answer.status_code == 201, answer.text
        key_ids = [answer.json()["id"]]
        yield Seeded(app, models, job_ids, key_ids, [(models[0], models[1])])
        shutdown_lifespans()  # the app's, started by schemathesis' first request
        app.state.engine.dispose()
    print("\nschemathesis cases sent:", sum(SENT.values()))
    for name, count in sorted(SENT.items()):
        print(f"  {count:5d}  {name}")


@pytest.fixture(scope="module")
def api_schema(seeded: Seeded) -> BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", seeded.app)


def _strategy(operation, seeded: Seeded) -> st.SearchStrategy:
    """Cases of ``operation``: valid and invalid ones, and valid ones that name existing rows."""
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(mode) for mode in modes]
    existing = {"name": seeded.models, "job_id": seeded.job_ids, "key_id": seeded.key_ids}
    names = [p.name for p in operation.path_parameters]
    if names and all(n in existing for n in names):
        rows = st.fixed_dictionaries({n: st.sampled_from(existing[n]) for n in names})
        strategies.append(rows.flatmap(lambda row: operation.as_strategy(path_parameters=row)))
    if operation.label == "DELETE /edges":
        edges = st.sampled_from(seeded.edges).map(
            lambda e: {"parent": e[0], "child": e[1], "reason": "fuzzed"}
        )
        strategies.append(edges.flatmap(lambda q: operation.as_strategy(query=q)))
    return st.one_of(strategies)


def _restore_admin_key(app: FastAPI) -> None:
    # DELETE /keys/{key_id} may revoke the admin key the cases are sent with; restore it, as a
    # restart does, so that the cases after it are still exercised past 401.
    with transaction(app.state.session_factory) as session:
        auth.ensure_admin_key(session, TEST_ADMIN_KEY)


def send(case, seeded: Seeded) -> None:
    """Send ``case`` with the admin key, then with no key; check both answers."""
    anonymous = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    case.headers = {**anonymous, **ADMIN_HEADERS}
    SENT[f"{case.operation.label} admin"] += 1
    case.call_and_validate(checks=CHECKS)
    if case.operation.label.startswith("DELETE /keys"):
        _restore_admin_key(seeded.app)
    case.headers = anonymous
    SENT[f"{case.operation.label} anonymous"] += 1
    case.call_and_validate(checks=CHECKS)


def test_the_fuzzed_operations_are_all_of_the_schema(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_operation_answers_as_documented_and_never_5xx(label, seeded, api_schema):
    operation = api_schema.find_operation_by_label(label)

    @given(case=_strategy(operation, seeded))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        send(case, seeded)

    fuzz()


# Regressions: what the fuzzing found, each checked directly.


@pytest.fixture
def client(seeded: Seeded) -> TestClient:
    return TestClient(seeded.app, headers=ADMIN_HEADERS, raise_server_exceptions=False)


@pytest.mark.parametrize(
    "method, url",
    [
        ("GET", "/models/org%00root"),
        ("GET", "/models?q=org%00"),
        ("GET", "/lineage/org/ro%00ot"),
        ("GET", "/jobs/%00"),
        ("DELETE", "/edges?parent=org/root%00&child=org/child&reason=fuzzed"),
        ("GET", "/?q=%00"),
    ],
)
def test_a_nul_character_in_the_url_is_422_not_500(client, method, url):
    # PostgreSQL text cannot hold NUL: the driver's DataError was a 500 on every lookup.
    for accept in ("application/json", "text/html"):
        answer = client.request(method, url, headers={"Accept": accept})
        assert answer.status_code == 422, (url, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "invalid_request"
        assert "NUL" in error["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/keys", {"role": "reader", "name": "a\x00b"}),
        ("/edges", {"parent": "org/root\x00", "child": "org/child", "reason": "x"}),
        ("/edges", {"parent": "org/root", "child": "org/child", "reason": "\x00"}),
    ],
)
def test_a_nul_character_in_a_json_body_is_422_not_500(client, path, body):
    answer = client.post(path, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("path", ["/keys", "/edges", "/parents"])
def test_a_json_body_that_is_not_utf8_is_malformed_json_everywhere(client, path):
    # FastAPI answered it with an undocumented bare 400 on the routes whose body it parses.
    answer = client.post(
        path, content=b'{"role": "\xff"}', headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("body: malformed JSON")


def test_a_hub_that_cannot_be_reached_is_a_documented_answer(client, seeded):
    # The test service has no hub (offline, empty cache): a hub ID is 503 hub_offline, which
    # POST /parents did not document.
    for path in ("/parents", "/detect"):
        answer = client.post(path, json={"hub_id": "org/not-cached"})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "hub_offline"
        assert "503" in seeded.app.openapi()["paths"][path]["post"]["responses"]
