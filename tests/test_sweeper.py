"""No lost jobs, on both databases: a job is held by one named claim at a time, with a heartbeat;
the sweeper puts back jobs whose worker went silent, sends again jobs nobody took, fails jobs
that keep killing their workers, and removes the files of uploads that never committed."""

from __future__ import annotations

import os
import time
import uuid
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.core.config import Settings
from app.core.db import make_engine, session_factory, transaction, utcnow
from app.detection import service as detection
from app.detection.models import Job
from app.detection.repository import JobRepository
from app.detection.sweeper import sweep
from app.engine.model_files import save_model
from app.registry import service as registry
from app.registry.storage import UNCOMMITTED
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state


class Recorder:
    """A dispatcher that only records what it was handed."""

    def __init__(self):
        self.sent: list[str] = []

    def enqueue(self, job_id: str) -> None:
        self.sent.append(job_id)

    def close(self) -> None:
        pass


@pytest.fixture
def db(database_url, tmp_path):
    engine = make_engine(database_url)
    settings = Settings(database_url=database_url, storage_dir=tmp_path / "storage")
    yield session_factory(engine), settings
    engine.dispose()


def submit(db, tmp_path: Path, seed: int = 0) -> str:
    """A committed queued job for a freshly registered tiny model; its id."""
    factory, settings = db
    folder = save_model(tmp_path / f"model-{seed}", tiny_mlp_state(seed), TINY_MLP_CONFIG)
    with ExitStack() as files, transaction(factory) as session:
        upload = registry.Upload(
            [(p.name, files.enter_context(open(p, "rb"))) for p in sorted(folder.iterdir())]
        )
        submitted = detection.submit(session, settings, Recorder(), upload, name=f"m-{seed}")
    return submitted.job.id


def job(db, job_id: str) -> Job:
    with db[0]() as session:
        return session.get(Job, job_id)


def age(db, job_id: str, seconds: float, **columns: bool) -> None:
    """Move the job's ``columns`` (heartbeat_at, enqueued_at) ``seconds`` into the past."""
    then = utcnow() - timedelta(seconds=seconds)
    with transaction(db[0]) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**dict.fromkeys(columns, then)))


def claim(db, job_id: str, token: str, stale_after: float = 60) -> bool:
    with transaction(db[0]) as session:
        stale_before = utcnow() - timedelta(seconds=stale_after)
        return JobRepository(session).claim(job_id, token, stale_before) is not None


def test_a_job_is_held_by_one_claim_while_its_worker_beats(db, tmp_path):
    job_id = submit(db, tmp_path)
    assert detection.to_dict(job(db, job_id), None)["heartbeat_at"] is None
    assert claim(db, job_id, "worker-a")
    assert job(db, job_id).attempts == 1
    assert detection.to_dict(job(db, job_id), None)["heartbeat_at"] is not None  # GET /jobs
    # A second delivery while the first worker is alive: refused, nothing counted.
    assert not claim(db, job_id, "worker-b")
    assert (job(db, job_id).claimed_by, job(db, job_id).attempts) == ("worker-a", 1)
    # The same claim retried after a database fault takes it back: not a new attempt.
    assert claim(db, job_id, "worker-a")
    assert job(db, job_id).attempts == 1
    # Worker a falls silent: after the stale bound, b may take it, as attempt 2.
    age(db, job_id, 120, heartbeat_at=True)
    assert claim(db, job_id, "worker-b")
    assert (job(db, job_id).claimed_by, job(db, job_id).attempts) == ("worker-b", 2)
    # a's heartbeats now tell it the job is no longer its own.
    with transaction(db[0]) as session:
        assert not JobRepository(session).heartbeat(job_id, "worker-a")
        assert JobRepository(session).heartbeat(job_id, "worker-b", 0.5)
    assert job(db, job_id).progress == 0.5


def test_the_sweeper_requeues_a_job_whose_worker_went_silent(db, tmp_path):
    factory, settings = db
    job_id = submit(db, tmp_path)
    assert claim(db, job_id, "dead-worker")
    recorder = Recorder()
    assert not sweep(factory, recorder.enqueue, settings)  # alive: left alone
    age(db, job_id, settings.job_stale_after + 1, heartbeat_at=True)
    swept = sweep(factory, recorder.enqueue, settings)
    assert swept.requeued == [job_id] and recorder.sent == [job_id]
    assert (job(db, job_id).status, job(db, job_id).progress) == ("queued", 0.0)
    assert claim(db, job_id, "new-worker")  # the message sent finds it claimable
    assert job(db, job_id).attempts == 2


def test_a_job_that_keeps_killing_its_workers_is_failed_not_tried_for_ever(db, tmp_path):
    factory, settings = db
    job_id = submit(db, tmp_path)
    recorder = Recorder()
    for attempt in range(1, settings.job_max_attempts + 1):
        assert claim(db, job_id, f"worker-{attempt}")
        age(db, job_id, settings.job_stale_after + 1, heartbeat_at=True)
        swept = sweep(factory, recorder.enqueue, settings)
    assert swept.failed == [job_id] and swept.requeued == []
    assert recorder.sent == [job_id] * (settings.job_max_attempts - 1)
    finished = job(db, job_id)
    assert finished.status == "failed" and finished.error["code"] == "worker_lost"
    assert finished.attempts == settings.job_max_attempts


def test_a_queued_job_nobody_took_is_sent_again_once(db, tmp_path):
    factory, settings = db
    job_id = submit(db, tmp_path)
    fresh = submit(db, tmp_path, seed=1)
    assert job(db, job_id).enqueued_at is not None  # submit records its sending
    recorder = Recorder()
    assert not sweep(factory, recorder.enqueue, settings)  # sent just now: not again
    age(db, job_id, settings.job_resend_after + 1, enqueued_at=True)
    first, second = Recorder(), Recorder()
    sweep(factory, first.enqueue, settings)
    sweep(factory, second.enqueue, settings)  # a second sweeper right after: nothing to do
    assert first.sent == [job_id] and second.sent == []
    assert fresh not in first.sent


def test_the_sweeper_keeps_the_job_when_it_cannot_reach_the_broker(db, tmp_path):
    factory, settings = db
    job_id = submit(db, tmp_path)
    age(db, job_id, settings.job_resend_after + 1, enqueued_at=True)

    def broker_down(_job_id):
        raise ConnectionError("redis is away")

    swept = sweep(factory, broker_down, settings)
    assert swept.resent == [job_id]
    assert job(db, job_id).status == "queued"  # still there for the next sweep


def test_a_job_running_under_a_lost_claim_stops(db, tmp_path):
    """The heartbeat tells a worker the sweeper gave its job away: its next progress report
    raises ClaimLost, so two workers do not both run the job to the end."""
    factory, _ = db
    job_id = submit(db, tmp_path)
    assert claim(db, job_id, "slow-worker")
    beat = detection.Heartbeat(factory, job_id, "slow-worker", interval=3600)
    beat.progress(0.4)
    age(db, job_id, 3600, heartbeat_at=True)
    assert claim(db, job_id, "other-worker")
    with pytest.raises(detection.ClaimLost):
        beat.progress(0.6)
    assert job(db, job_id).progress != 0.6


def stale(path: Path, seconds: float = 7200) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


def test_the_sweeper_removes_what_failed_uploads_left_and_nothing_else(db, tmp_path):
    factory, settings = db
    submit(db, tmp_path)  # one registered model: its folder is kept
    storage = settings.storage_dir
    [kept] = list((storage / "models").iterdir())
    stale(kept)
    # An upload cut off mid-stream (process killed) and one whose row never committed.
    cut = storage / "staging" / uuid.uuid4().hex
    cut.mkdir(parents=True)
    (cut / "model.safetensors").write_bytes(b"partial")
    orphan = storage / "models" / ("f" * 64)
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"weights")
    (orphan / UNCOMMITTED).touch()
    # Stored weights no row of *this* database names, but committed once (no marker): a
    # service pointed at the wrong database must not empty its storage.
    foreign = storage / "models" / ("e" * 64)
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"someone's weights")
    stale(foreign)
    # The same, but recent: possibly a request still in progress.
    recent = storage / "staging" / uuid.uuid4().hex
    recent.mkdir()
    (recent / "model.safetensors").write_bytes(b"streaming")
    stale(cut)
    stale(orphan)
    # A staging folder created long ago whose file is still being written is in use.
    streaming = storage / "staging" / uuid.uuid4().hex
    streaming.mkdir()
    (streaming / "model.safetensors").write_bytes(b"x")
    stale(streaming)
    os.utime(streaming / "model.safetensors")

    swept = sweep(factory, Recorder().enqueue, settings)
    assert sorted(swept.removed) == sorted([f"staging/{cut.name}", f"models/{orphan.name}"])
    assert kept.is_dir() and recent.is_dir() and streaming.is_dir() and foreign.is_dir()
    assert not (kept / UNCOMMITTED).exists()  # its row committed: the marker went
    assert not cut.exists() and not orphan.exists()


def test_the_sweeper_leaves_a_folder_a_request_is_still_working_in(db, tmp_path):
    """Validating and summarising a large upload can outlast the age bound: the folder is held
    (a shared lock that follows it through its move into storage) and the sweeper skips it."""
    from app.registry.storage import _in_use

    factory, settings = db
    busy = settings.storage_dir / "staging" / uuid.uuid4().hex
    busy.mkdir(parents=True)
    (busy / "model.safetensors").write_bytes(b"being summarised")
    stale(busy)
    with _in_use(busy):
        assert sweep(factory, Recorder().enqueue, settings).removed == []
        assert busy.is_dir()
    assert sweep(factory, Recorder().enqueue, settings).removed == [f"staging/{busy.name}"]


def test_a_marker_left_on_a_committed_folder_is_cleared_not_the_folder(db, tmp_path):
    """The process stopped between the row's commit and the marker's removal: the sweeper sees
    the row and removes only the marker."""
    factory, settings = db
    submit(db, tmp_path)
    [kept] = list((settings.storage_dir / "models").iterdir())
    (kept / UNCOMMITTED).touch()
    stale(kept)
    assert sweep(factory, Recorder().enqueue, settings).removed == []
    assert kept.is_dir() and not (kept / UNCOMMITTED).exists()
