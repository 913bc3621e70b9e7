"""No lost jobs and no orphan files under real faults, against real PostgreSQL, Redis and Celery
worker processes on 127.0.0.1:

- the database cut away from the worker mid-run (a TCP relay the test cuts and restores);
- a process killed between committing a job and sending it to the broker;
- a worker's main process killed with SIGKILL mid-job;
- an upload whose row cannot be committed because the database went away.

Every job must end ``succeeded`` or ``failed``, none stuck; the storage must hold exactly the
files of the registered models.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.core.db import migrate, transaction
from app.detection import service as detection
from app.detection.models import Job
from app.lineage.models import Edge
from app.registry import service as registry
from app.registry.models import Model
from scripts.processes import served
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from tests.services import postgres_database
from tests.test_database_outage import Relay
from tests.test_worker import MLP, ROOT, WIDE_MLP, Service, folder_upload, train_family
from worker.dispatch import CeleryDispatcher

FINISHED = ("succeeded", "failed")


@pytest.fixture
def service(tmp_path):
    with postgres_database() as url:
        migrate(url)
        service = Service(url, tmp_path)
        service.env.update(
            {
                "JOB_HEARTBEAT_INTERVAL": "0.5",
                "JOB_STALE_AFTER": "3",
                "JOB_RESEND_AFTER": "2",
                "SWEEP_INTERVAL": "1",
                "STAGING_MAX_AGE": "2",
            }
        )
        try:
            yield service
        finally:
            service.close()


def register_parents(service: Service, folders: dict[str, Path], parents: int) -> None:
    with ExitStack() as stack, transaction(service.factory) as session:
        for i in range(parents):
            source = folder_upload(folders[f"parent-{i}"], stack)
            registry.ingest(
                session, service.settings, source, name=f"org/parent-{i}", candidate=True
            )


def submit_child(service: Service, folder: Path, name: str) -> str:
    with ExitStack() as stack, transaction(service.factory) as session:
        submitted = detection.submit(
            session,
            service.settings,
            CeleryDispatcher(service.redis_url),
            folder_upload(folder, stack),
            name=name,
        )
    return submitted.job.id


def wait_all(service: Service, timeout: float) -> list[Job]:
    """Every job, once all are finished; fails naming those still unfinished at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with service.factory() as session:
            jobs = list(session.scalars(select(Job)))
        if all(job.status in FINISHED for job in jobs):
            return jobs
        if time.monotonic() > deadline:
            stuck = [
                (job.id[:8], job.status, job.attempts) for job in jobs if job.status not in FINISHED
            ]
            raise AssertionError(f"jobs stuck after {timeout} s: {stuck}")
        time.sleep(0.2)


def assert_no_orphan_files(service: Service) -> None:
    """Storage holds the registered models' folders and nothing else."""
    with service.factory() as session:
        registered = set(session.scalars(select(Model.sha256)))
    models = service.storage / "models"
    stored = {p.name for p in models.iterdir()} if models.is_dir() else set()
    staging = service.storage / "staging"
    leftovers = list(staging.iterdir()) if staging.is_dir() else []
    assert stored == registered and leftovers == []


def children(tmp_path: Path, base: Path, count: int) -> list[Path]:
    """``count`` distinct fine-tunes of the model in ``base`` (each a new upload)."""
    from safetensors.torch import load_file

    from app.engine.architectures import build_network
    from app.engine.model_files import save_model
    from app.engine.training import digits_task, train

    network = build_network(MLP)
    state = load_file(base / "model.safetensors")
    folders = []
    for i in range(count):
        child = train(network, state, *digits_task(network, 60 + i), steps=20, lr=2e-3, seed=60 + i)
        folders.append(save_model(tmp_path / f"child-{i}", child, MLP))
    return folders


def test_a_database_outage_mid_run_loses_no_job(service, tmp_path):
    """The worker reaches PostgreSQL through a relay that is cut for 8 s while its jobs are
    queued and running; afterwards every job finishes. Before, the worker took the queued tasks,
    failed on the database and acknowledged them: the jobs stayed queued or running for good."""
    folders = train_family(tmp_path / "zoo", MLP, parents=3, steps=40)
    register_parents(service, folders, parents=3)
    relay = Relay()
    relay.start()
    try:
        service.env["DATABASE_URL"] = service.url.replace(
            "127.0.0.1:5432", f"127.0.0.1:{relay.port}"
        )
        service.start_worker()
        ids = [
            submit_child(service, folder, f"org/child-{i}")
            for i, folder in enumerate(children(tmp_path, folders["parent-0"], 8))
        ]
        deadline = time.monotonic() + 60
        while service.job(ids[0]).status == "queued":  # the worker is at it
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        relay.cut()
        time.sleep(8)
        relay.start()
        jobs = wait_all(service, timeout=120)
    finally:
        relay.cut()
    assert {job.status for job in jobs} == {"succeeded"}, [job.error for job in jobs]
    for job in jobs:
        assert job.result["decision"]["parent"] == "org/parent-0"
    with service.factory() as session:
        assert session.scalar(select(func.count()).select_from(Edge)) == len(ids)
    assert_no_orphan_files(service)


# Run in a child process: submit a job, then die in the dispatcher, after the job's row has
# committed and before anything reaches the broker (as a process killed at that instant).
DIE_BEFORE_ENQUEUE = """
import os, sys
from contextlib import ExitStack
from pathlib import Path
from app.core.config import Settings
from app.core.db import make_engine, session_factory, transaction
from app.detection import service as detection
from app.registry import service as registry

class DiesBeforeSending:
    def enqueue(self, job_id):
        print(job_id, flush=True)
        os._exit(9)

settings = Settings()
factory = session_factory(make_engine(settings.database_url))
folder = Path(sys.argv[1])
with ExitStack() as files, transaction(factory) as session:
    upload = registry.Upload([(p.name, files.enter_context(open(p, "rb")))
                              for p in sorted(folder.iterdir())])
    detection.submit(session, settings, DiesBeforeSending(), upload, name="org/child")
"""


def test_a_job_committed_by_a_process_killed_before_sending_it_still_runs(service, tmp_path):
    folders = train_family(tmp_path / "zoo", MLP, parents=3, steps=40)
    register_parents(service, folders, parents=3)
    died = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DIE_BEFORE_ENQUEUE), str(folders["child"])],
        cwd=ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert died.returncode == 9, died.stderr
    job_id = died.stdout.strip()
    assert service.job(job_id).status == "queued"  # committed, and never sent
    service.start_worker()  # its sweeper sends it again
    [job] = wait_all(service, timeout=60)
    assert job.status == "succeeded", job.error
    assert job.result["decision"]["parent"] == "org/parent-0"
    assert_no_orphan_files(service)


def test_a_job_whose_worker_main_process_is_killed_is_finished(service, tmp_path):
    """SIGKILL to the worker's main process only (its pool process is orphaned). Before, the
    job stayed ``running`` for the whole visibility timeout (2 h by default)."""
    folders = train_family(tmp_path / "zoo", WIDE_MLP, parents=5, steps=30)
    register_parents(service, folders, parents=5)
    service.env["TASK_VISIBILITY_TIMEOUT"] = "7200"  # the default: the broker will not help
    first = service.start_worker()
    job_id = submit_child(service, folders["child"], "org/child")
    service.wait(job_id, ("running",))
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    service.start_worker()
    [job] = wait_all(service, timeout=120)
    assert job.status == "succeeded", job.error
    assert job.result["decision"]["parent"] == "org/parent-0"
    with service.factory() as session:
        assert session.scalar(select(func.count()).select_from(Edge)) == 1
    assert_no_orphan_files(service)


def test_an_upload_whose_row_cannot_commit_leaves_no_file(service, tmp_path, monkeypatch):
    """The database goes away while an upload is being received: the answer is 503, and the
    weights already moved into storage for a row that never committed are removed by the
    sweeper once the database is back."""
    folders = train_family(tmp_path / "zoo", MLP, parents=1, steps=20)
    relay = Relay()
    relay.start()
    url = service.url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    for name in ("JOB_HEARTBEAT_INTERVAL", "SWEEP_INTERVAL", "STAGING_MAX_AGE"):
        monkeypatch.setenv(name, service.env[name])
    monkeypatch.setenv("LINEAGE_ADMIN_KEY", TEST_ADMIN_KEY)
    files = sorted(folders["parent-0"].iterdir())
    try:
        with served(url, service.storage) as base:

            def body():
                # The multipart body in two halves, the database cut in between: the key was
                # checked before the body, the row is written after it.
                boundary = b"--lineage-test"
                parts = (
                    boundary + b'\r\nContent-Disposition: form-data; name="name"\r\n\r\n'
                    b"org/parent-0\r\n"
                )
                for path in files:
                    parts += (
                        boundary + b'\r\nContent-Disposition: form-data; name="files"; '
                        b'filename="' + path.name.encode() + b'"\r\n'
                        b"Content-Type: application/octet-stream\r\n\r\n"
                        + path.read_bytes()
                        + b"\r\n"
                    )
                parts += boundary + b"--\r\n"
                yield parts[: len(parts) // 2]
                time.sleep(1)  # the server has checked the key by now
                relay.cut()
                yield parts[len(parts) // 2 :]

            answer = httpx.post(
                f"{base}/parents",
                content=body(),
                headers={
                    **ADMIN_HEADERS,
                    "Content-Type": "multipart/form-data; boundary=lineage-test",
                },
                timeout=60,
            )
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "database_unavailable"
            # The weights were stored before the row failed: an orphan, until the sweeper.
            assert [p.name for p in (service.storage / "models").iterdir()] != []
            relay.start()
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert_no_orphan_files(service)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            # And the same upload, now the database is back, is stored once.
            again = httpx.post(
                f"{base}/parents",
                data={"name": "org/parent-0"},
                files=[("files", (p.name, p.read_bytes())) for p in files],
                headers=ADMIN_HEADERS,
                timeout=60,
            )
            assert again.status_code == 201, again.text
    finally:
        relay.cut()
    assert_no_orphan_files(service)


def pool_process(worker: subprocess.Popen, timeout: float = 60) -> int:
    """The pid of a Celery worker's (only) pool process, once it is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.2)
    raise AssertionError("the worker started no pool process")


def data_limit(pid: int) -> str:
    [line] = [x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if "data" in x]
    return line


def vm_data(pid: int) -> int:
    [line] = [x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if "VmData" in x]
    return int(line.split()[1]) * 1024


# Wide enough that scoring one job needs well over 64 MB beyond what an idle worker holds.
WIDER_MLP = {"model_type": "lineage-mlp", "sizes": [64, 2048, 2048, 10], "activation": "relu"}


def test_a_job_past_the_worker_memory_limit_fails_cleanly(service, tmp_path):
    """``WORKER_MEMORY_LIMIT`` becomes each pool process's heap limit; a job that needs more
    ends ``failed`` with ``memory_limit`` (not a killed worker and a job stuck ``running``), and
    the same worker runs the next job."""
    import resource

    folders = train_family(tmp_path / "zoo", WIDER_MLP, parents=3, steps=5)
    register_parents(service, folders, parents=3)
    service.env["WORKER_MEMORY_LIMIT"] = str(8 * 2**30)
    worker = service.start_worker()
    pool = pool_process(worker)
    assert str(8 * 2**30) in data_limit(pool)  # the setting reached the pool process
    # Tighten it to 64 MB above what the idle pool process holds.
    time.sleep(2)  # let it settle after start-up
    tight = vm_data(pool) + 64 * 2**20
    resource.prlimit(pool, resource.RLIMIT_DATA, (tight, 8 * 2**30))  # soft limit only
    job_id = submit_child(service, folders["child"], "org/child")
    job = service.wait(job_id, FINISHED, timeout=120)
    assert job.status == "failed" and job.error["code"] == "memory_limit", job.error
    # The worker lives on: with room again, it runs the next job.
    resource.prlimit(pool, resource.RLIMIT_DATA, (8 * 2**30, 8 * 2**30))
    assert worker.poll() is None
    other = folders["parent-2"]  # any registered weights: a job runs on the existing record
    second = service.wait(submit_child(service, other, "org/again"), FINISHED, timeout=120)
    assert second.status == "succeeded", second.error


def test_a_job_past_the_time_limit_fails_cleanly(service, tmp_path, monkeypatch):
    """``TASK_TIME_LIMIT`` becomes Celery's hard limit and, 30 s earlier, its soft limit, whose
    ``SoftTimeLimitExceeded`` ends the job ``failed`` with ``time_limit``, not ``running`` for
    good. The exception is raised inside scoring here rather than by a worker's clock: a job of
    a size this suite can afford finishes within the smallest soft limit (1 s) on a fast
    machine, so a timed job would not fail reliably."""
    from celery.exceptions import SoftTimeLimitExceeded

    from app.core.config import Settings
    from worker.celery_app import make_celery

    monkeypatch.setattr("worker.celery_app.get_settings", lambda: Settings(task_time_limit=31))
    limits = make_celery(service.redis_url).conf
    assert (limits.task_time_limit, limits.task_soft_time_limit) == (31, 1)

    folders = train_family(tmp_path / "zoo", MLP, parents=3, steps=20)
    register_parents(service, folders, parents=3)
    job_id = submit_child(service, folders["child"], "org/child")

    def past_the_limit(*_args, **_kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(detection, "score", past_the_limit)
    with pytest.raises(SoftTimeLimitExceeded):  # raised on, for Celery to log
        detection.run_job(service.factory, job_id)
    job = service.job(job_id)
    assert job.status == "failed" and job.error["code"] == "time_limit", job.error
