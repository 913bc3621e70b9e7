"""``lineage serve`` as a user starts it: a real server process on the embedded default (SQLite
file, in-process worker), driven over HTTP; and its refusal of a bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.engine.model_files import save_model
from scripts.processes import free_port, served
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY

ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path):
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


def test_serve_runs_the_whole_service_on_the_embedded_default(tmp_path, monkeypatch):
    parent = save_model(tmp_path / "parent", tiny_mlp_state(0), TINY_MLP_CONFIG)
    child_state = {k: v + 0.01 for k, v in tiny_mlp_state(0).items()}
    child = save_model(tmp_path / "child", child_state, TINY_MLP_CONFIG)
    database = f"sqlite:///{tmp_path / 'lineage.db'}"
    monkeypatch.setenv("LINEAGE_ADMIN_KEY", TEST_ADMIN_KEY)  # the operator's admin key
    with served(database, tmp_path / "storage") as base:
        deadline = time.monotonic() + 60
        refused = httpx.post(f"{base}/parents", data={"name": "org/base"}, files=files(parent))
        assert refused.status_code == 401, refused.text
        created = httpx.post(
            f"{base}/parents", data={"name": "org/base"}, files=files(parent), headers=ADMIN_HEADERS
        )
        assert created.status_code == 201, created.text
        queued = httpx.post(
            f"{base}/detect", data={"name": "org/tuned"}, files=files(child), headers=ADMIN_HEADERS
        )
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["job_id"]
        while (job := httpx.get(f"{base}/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        tree = httpx.get(f"{base}/lineage/org/tuned", headers={"Accept": "application/json"})
        assert [e["parent"] for e in tree.json()["edges"]] == ["org/base"]
        assert (tmp_path / "lineage.db").is_file()  # the schema was migrated into the file


def test_serve_refuses_a_bad_database_url_with_one_line(tmp_path):
    env = {**os.environ, "DATABASE_URL": "mysql://nowhere/db"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: bad configuration: database_url")
    assert "Traceback" not in result.stderr
