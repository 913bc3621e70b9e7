"""Detection through a real Redis broker and real Celery worker processes on PostgreSQL: a job
runs, and a job whose worker is killed mid-run is finished by another worker (acks_late) with no
duplicated edge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory, transaction
from app.detection import service as detection
from app.detection.models import Job
from app.engine.architectures import build_network
from app.engine.model_files import save_model
from app.engine.training import digits_task, initial_state, train
from app.lineage.models import Edge
from app.registry import service as registry
from tests.services import postgres_database
from worker.dispatch import CeleryDispatcher, dispatcher_for

REDIS = os.environ.get("LINEAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
ROOT = Path(__file__).resolve().parents[1]


def train_family(out: Path, config: dict, parents: int, steps: int) -> dict[str, Path]:
    """root → parent-i (i < parents) → child of parent-0; saved as model folders."""
    network = build_network(config)
    root = train(
        network, initial_state(config, 0), *digits_task(network, None), steps=steps, lr=1e-2, seed=0
    )
    folders = {}
    states = {}
    for i in range(parents):
        states[i] = train(network, root, *digits_task(network, i), steps=steps, lr=3e-3, seed=i)
        folders[f"parent-{i}"] = out / f"parent-{i}"
        save_model(folders[f"parent-{i}"], states[i], config)
    child = train(network, states[0], *digits_task(network, 50), steps=steps, lr=2e-3, seed=50)
    folders["child"] = out / "child"
    save_model(folders["child"], child, config)
    return folders


def folder_upload(folder: Path, stack: ExitStack) -> registry.Upload:
    """A model folder's files as an upload (closed with ``stack``)."""
    return registry.Upload(
        [(p.name, stack.enter_context(open(p, "rb"))) for p in sorted(folder.iterdir())]
    )


class Service:
    """A migrated PostgreSQL database, a Redis database of its own, storage, and worker
    processes started on demand."""

    def __init__(self, url: str, tmp: Path):
        self.url = url
        self.redis_url = f"{REDIS}/{1 + uuid.uuid4().int % 15}"
        redis.Redis.from_url(self.redis_url).flushdb()
        self.storage = tmp / "storage"
        self.settings = Settings(
            database_url=url, redis_url=self.redis_url, storage_dir=self.storage
        )
        self.engine = make_engine(url)
        self.factory = session_factory(self.engine)
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "REDIS_URL": self.redis_url,
            "STORAGE_DIR": str(self.storage),
            # Redelivery after a worker's death waits this long; well above these jobs' length.
            "TASK_VISIBILITY_TIMEOUT": "4",
            "TASK_TIME_LIMIT": "120",
            # A silent worker is noticed within seconds, not the production minute.
            "JOB_HEARTBEAT_INTERVAL": "0.5",
            "JOB_STALE_AFTER": "3",
            "SWEEP_INTERVAL": "1",
        }
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--loglevel", "WARNING"],
            cwd=ROOT,
            env=self.env,
            start_new_session=True,  # its own process group: killing it kills its pool too
        )
        self.workers.append(process)
        return process

    def kill(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def job(self, job_id: str) -> Job:
        with self.factory() as session:
            return session.get(Job, job_id)

    def wait(self, job_id: str, statuses: tuple[str, ...], timeout: float = 90) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.status in statuses:
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {self.job(job_id).status} after {timeout} s")

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                self.kill(process)
        self.engine.dispose()
        redis.Redis.from_url(self.redis_url).flushdb()


@pytest.fixture
def service(tmp_path):
    with postgres_database() as url:
        migrate(url)
        service = Service(url, tmp_path)
        try:
            yield service
        finally:
            service.close()


def submit(service: Service, folders: dict[str, Path], parents: int) -> tuple[str, dict]:
    """Register the parents and submit the child through the services, as the API does; the
    job reaches the broker when the transaction commits."""
    ids = {}
    with ExitStack() as stack, transaction(service.factory) as session:
        for i in range(parents):
            source = folder_upload(folders[f"parent-{i}"], stack)
            parent = registry.ingest(
                session, service.settings, source, name=f"org/parent-{i}", candidate=True
            )
            ids[f"parent-{i}"] = parent.model.id
        submitted = detection.submit(
            session,
            service.settings,
            CeleryDispatcher(service.redis_url),
            folder_upload(folders["child"], stack),
            name="org/child",
        )
        ids["child"] = submitted.job.child_id
        job_id = submitted.job.id
    return job_id, ids


def edges(service: Service) -> list[tuple[int, int]]:
    with service.factory() as session:
        return [tuple(r) for r in session.execute(select(Edge.parent_id, Edge.child_id)).all()]


MLP = {"model_type": "lineage-mlp", "sizes": [64, 48, 48, 10], "activation": "relu"}


def test_a_celery_worker_runs_the_job_and_writes_the_edge(service, tmp_path):
    folders = train_family(tmp_path / "zoo", MLP, parents=3, steps=80)
    service.start_worker()
    job_id, ids = submit(service, folders, parents=3)
    job = service.wait(job_id, ("succeeded", "failed"))
    assert job.status == "succeeded", job.error
    assert job.result["decision"]["parent"] == "org/parent-0"
    assert edges(service) == [(ids["parent-0"], ids["child"])]


# Wide layers make each candidate's singular values cost enough that the job runs for seconds,
# long enough to kill its worker mid-run.
WIDE_MLP = {"model_type": "lineage-mlp", "sizes": [64, 768, 768, 10], "activation": "relu"}


def test_a_job_whose_worker_dies_is_finished_by_another_without_duplicates(service, tmp_path):
    folders = train_family(tmp_path / "zoo", WIDE_MLP, parents=5, steps=30)
    first = service.start_worker()
    job_id, ids = submit(service, folders, parents=5)
    service.wait(job_id, ("running",))
    service.kill(first)  # mid-run: the task was never acknowledged
    assert service.job(job_id).status == "running"
    assert service.job(job_id).attempts == 1
    service.start_worker()
    job = service.wait(job_id, ("succeeded", "failed"), timeout=120)
    assert job.status == "succeeded", job.error
    assert job.attempts == 2  # claimed by the dead worker, then by the second one
    assert edges(service) == [(ids["parent-0"], ids["child"])]
    with service.factory() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def upload(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (p.name, p.read_bytes(), "application/octet-stream"))
        for p in sorted(folder.iterdir())
    ]


def test_restarting_the_api_and_the_worker_between_steps_loses_nothing(service, tmp_path):
    """Parents registered by one API process; the child submitted by a second while no worker
    runs; the job run by a worker started afterwards; the answer read from a third API. Each API
    is a fresh application on the same database, broker and storage, as after a restart."""
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.core.config import Settings
    from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY

    folders = train_family(tmp_path / "zoo", MLP, parents=3, steps=80)
    settings = Settings(
        database_url=service.url,
        redis_url=service.redis_url,
        storage_dir=service.storage,
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    worker = service.start_worker()
    with TestClient(create_app(settings, dispatcher_for(settings)), headers=ADMIN_HEADERS) as api:
        for i in range(3):
            response = api.post(
                "/parents", data={"name": f"org/parent-{i}"}, files=upload(folders[f"parent-{i}"])
            )
            assert response.status_code == 201, response.text
    worker.terminate()  # a graceful stop between steps
    worker.wait(30)
    with TestClient(create_app(settings, dispatcher_for(settings)), headers=ADMIN_HEADERS) as api:
        response = api.post("/detect", data={"name": "org/child"}, files=upload(folders["child"]))
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
    assert service.job(job_id).status == "queued"  # no worker: it waits in Redis
    service.start_worker()
    job = service.wait(job_id, ("succeeded", "failed"))
    assert job.status == "succeeded", job.error
    with TestClient(create_app(settings, dispatcher_for(settings)), headers=ADMIN_HEADERS) as api:
        tree = api.get("/lineage/org/child", headers={"Accept": "application/json"}).json()
        assert [a["name"] for a in tree["ancestors"]] == ["org/parent-0"]
        assert [(e["parent"], e["child"]) for e in tree["edges"]] == [("org/parent-0", "org/child")]
        assert api.get("/models").json()["total"] == 4
