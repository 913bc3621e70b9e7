"""Detection jobs: submit, run, describe. No HTTP, no Celery and no commit here.

A job's life: ``queued`` (``submit`` stores the child and the job in the caller's transaction and
hands the job to the dispatcher only once that commits) → ``running`` (``claim``: one atomic
UPDATE, which also counts the attempt) → ``succeeded`` (``score`` runs the engine outside any
transaction; ``record`` writes the result, the edges and the audit in one transaction), or
``failed`` with ``{"code", "message"}``. Running a job twice is safe: a finished job is never
claimed again, and an edge write is an upsert of its (parent, child) pair.

No job is lost (``app.detection.sweeper``): a claim is named (``claimed_by``) and its worker
writes a heartbeat while it runs. A second delivery of a job whose worker is alive finds it taken;
a job whose worker went silent (killed, out of memory) is claimable again and put back in the
queue by the sweeper; a queued job no worker took is sent again. A database fault while claiming
or recording comes out of ``run_job`` (``DATABASE_UNAVAILABLE``) for the caller to retry with
the same claim, never as a failed or a forgotten job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.auth.service import Caller, Role, authorize
from app.core.config import Settings
from app.core.db import DATABASE_UNAVAILABLE, after_commit, transaction, utcnow
from app.detection.audit import audit_verdict
from app.detection.dispatch import Dispatcher
from app.detection.errors import QueueUnavailable, UnknownJob
from app.detection.models import Job, JobState
from app.detection.repository import JobRepository
from app.engine.architectures import open_trusted
from app.engine.decision import rank_candidates
from app.engine.errors import LineageError
from app.engine.methods import AUTO, get_method
from app.hub.declared import DeclaredParent, declared_parents
from app.lineage import service as lineage
from app.registry import service as registry
from app.registry.models import Model
from app.registry.service import ModelSource

log = logging.getLogger(__name__)

# Catalog models scored per job unless the settings say otherwise (``SHORTLIST_SIZE``), and the
# heartbeat's period and the silence after which a running job's worker counts as dead.
DEFAULT_SHORTLIST = Settings.model_fields["shortlist_size"].default
DEFAULT_HEARTBEAT = Settings.model_fields["job_heartbeat_interval"].default
DEFAULT_STALE_AFTER = Settings.model_fields["job_stale_after"].default
# Progress once the models are open, and once they are scored.
LOADED_PROGRESS = 0.3
SCORED_PROGRESS = 0.9


@dataclass(frozen=True)
class Submitted:
    """What ``submit`` did: the queued job, and whether the child's record is new."""

    job: Job
    child_created: bool
    child_name: str = ""
    notice: str | None = None


def submit(
    session: Session,
    settings: Settings,
    dispatcher: Dispatcher,
    source: ModelSource,
    *,
    name: str | None = None,
    method: str = AUTO,
    register_as_parent: bool = False,
    caller: Caller | None = None,
) -> Submitted:
    """Store the child (``registry.ingest``) and queue a detection job for it.

    The method is checked before anything is stored, so a typo leaves no model behind. The child
    is not a candidate yet: the job makes it one after detection when ``register_as_parent``, so
    it is never scored against itself or offered as a parent before its own lineage is known.
    The job reaches ``dispatcher`` once the caller's transaction commits, so a worker never looks
    for a row that is not there; if it cannot, the job is marked failed and ``QueueUnavailable``
    comes out of the commit.

    ``caller`` (the API key; None: the command line, trusted) must be a curator to ask for
    ``register_as_parent``. A job writes the graph (the inferred edge, and the declared edges of
    the model card this request sent) only when the caller owns the child (registered it, now or
    earlier) or is a curator: weights that are someone else's model get a result, but never an
    edge or a declaration on that model from a stranger.
    """
    get_method(method)  # UnknownMethod, listing the valid names
    if register_as_parent and caller is not None:
        authorize(caller, Role.CURATOR, "register_as_parent (promoting a model to a parent)")
    child = registry.ingest(session, settings, source, name=name, candidate=False, caller=caller)
    writes_graph = child.owned or caller is None or caller.has(Role.CURATOR)
    request = {
        "method": method,
        "register_as_parent": register_as_parent,
        "declared": [d.to_dict() for d in child.declared] if writes_graph else [],
        "write_edges": writes_graph,
    }
    job = JobRepository(session).add(
        Job(
            id=str(uuid.uuid4()),
            status=JobState.QUEUED,
            child_id=child.model.id,
            request=request,
            created_by=caller.id if caller is not None else None,
            enqueued_at=utcnow(),  # sent once this commits; the sweeper resends it if not
        )
    )
    after_commit(session, partial(_hand_over, session.get_bind(), dispatcher, job.id))
    notice = child.notice
    if not writes_graph:
        notice = (
            f"{notice}; it belongs to another key, so this job's result will not add edges "
            "to it and its model card here declares nothing (a curator or its owner can)"
        )
    return Submitted(job, child.created, child.model.name, notice)


def _hand_over(bind, dispatcher: Dispatcher, job_id: str) -> None:
    try:
        dispatcher.enqueue(job_id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job_id)
        with Session(bind) as session, session.begin():
            mark_failed(session, job_id, QueueUnavailable.code, "the job could not be queued")
        raise QueueUnavailable(
            f"job {job_id} was stored but the workers cannot be reached ({type(exc).__name__}); "
            "try again later"
        ) from None


def mark_failed(session: Session, job_id: str, code: str, message: str) -> None:
    """Mark the job failed with ``{"code", "message"}`` in the caller's transaction, unless it
    succeeded already."""
    job = JobRepository(session).get(job_id)
    if job is not None and job.status != JobState.SUCCEEDED:
        job.status, job.finished_at = JobState.FAILED, utcnow()
        job.error = {"code": code, "message": message}


# Running a job: claim, score, record -------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A claimed job, with what scoring needs read out of the database: the child's id, name,
    files and SHA-256, the request, the candidate parents to score as (name, files, SHA-256),
    how many catalog models of the child's architecture the shortlist chose them from, and the
    claim's token."""

    job_id: str
    child_id: int
    child_name: str
    child_path: str
    child_sha256: str
    request: dict
    catalog: list[tuple[str, str, str]]
    catalog_size: int
    token: str = ""


def new_claim_token() -> str:
    """A name for one claim of a job: this host and process, and a nonce."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(
    factory: sessionmaker[Session],
    job_id: str,
    shortlist_size: int = DEFAULT_SHORTLIST,
    *,
    token: str | None = None,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> Claimed | None:
    """Claim the job in its own transaction, under ``token`` (default: a new one), with its
    candidates: at most ``shortlist_size`` catalog models of the child's architecture, those with
    the nearest weight sketches (0: all; see ``registry.candidates``). None when there is nothing
    to run: finished, unknown, held by a worker whose heartbeat is younger than ``stale_after``
    seconds, or its child was deleted (then it is marked failed)."""
    token = token or new_claim_token()
    with transaction(factory) as session:
        stale_before = utcnow() - timedelta(seconds=stale_after)
        job = JobRepository(session).claim(job_id, token, stale_before)
        if job is None:
            return None
        child = registry.get_by_id(session, job.child_id)
        if child is None:
            mark_failed(session, job_id, "unknown_model", "the job's model was deleted")
            return None
        found = registry.candidates(session, child, shortlist_size)
        catalog = [(m.name, m.storage_path, m.sha256) for m in found.models]
        return Claimed(
            job_id,
            child.id,
            child.name,
            child.storage_path,
            child.sha256,
            dict(job.request or {}),
            catalog,
            found.catalog_size,
            token,
        )


class ClaimLost(Exception):
    """The job is no longer this worker's: the sweeper gave it to another (this worker was
    silent too long), or another delivery finished it."""


class Heartbeat:
    """While a claimed job runs: a thread that writes the claim's heartbeat every ``interval``
    seconds, and ``progress`` for the scoring code, which writes progress with a heartbeat.

    A write that fails because the database is away is logged and skipped: scoring goes on, and
    the result is recorded (or retried) once it is back. When a write finds the job no longer
    held by this claim, the next ``progress`` call raises ``ClaimLost`` so the work stops."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, token: str, interval: float):
        self.factory, self.job_id, self.token, self.interval = factory, job_id, token, interval
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.interval))

    def _write(self, progress: float | None = None) -> None:
        try:
            with transaction(self.factory) as session:
                held = JobRepository(session).heartbeat(self.job_id, self.token, progress)
        except DATABASE_UNAVAILABLE as exc:
            log.warning("job %s: heartbeat not written (%s)", self.job_id, type(exc).__name__)
            return
        if not held:
            self.lost.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._write()

    def progress(self, value: float) -> None:
        """Record progress (0–1) and a heartbeat; ``ClaimLost`` if the job is not ours now."""
        if self.lost.is_set():
            raise ClaimLost(self.job_id)
        self._write(value)
        if self.lost.is_set():
            raise ClaimLost(self.job_id)


def empty_catalog_result(child: str) -> dict:
    """The result of a job whose catalog holds no candidate parent."""
    return {
        "child": child,
        "decision": {
            "parent": None,
            "confidence": 1.0,
            "method": AUTO,
            "best": None,
            "margin": 0.0,
            "calibrated": False,
        },
        "candidates": [],
        "skipped": [],
        "note": "the catalog holds no candidate parents",
    }


def score(claimed: Claimed, device: str, progress: Callable[[float], None]) -> dict:
    """Open the child and its candidates and rank them with the engine: the job's result.
    Raises what the engine raises (``LineageError`` for bad input, ``OSError`` for files).

    Every model was validated, hashed and summarised when it was registered and its stored
    files never change, so they are opened trusted: nothing is hashed or validated again, and
    the stored weight statistics are reused."""
    child = open_trusted(claimed.child_path, claimed.child_name, claimed.child_sha256)
    parents = [open_trusted(path, name, sha256) for name, path, sha256 in claimed.catalog]
    progress(LOADED_PROGRESS)
    if not parents:
        return empty_catalog_result(claimed.child_name)
    method = claimed.request.get("method", AUTO)
    reached = LOADED_PROGRESS

    def scored(done: int, total: int) -> None:
        # Per candidate, between loading and recording; only forward: auto may fall back from
        # the detector to its own components and go over the candidates a second time.
        nonlocal reached
        value = LOADED_PROGRESS + (SCORED_PROGRESS - LOADED_PROGRESS) * done / total
        if value > reached:
            reached = value
            progress(value)

    result = rank_candidates(child, parents, method, device=device, progress=scored).to_dict()
    result["shortlist"] = {"catalog": claimed.catalog_size, "scored": len(parents)}
    return result


def record(factory: sessionmaker[Session], claimed: Claimed, result: dict) -> None:
    """Write the result, the audit and the edges in one transaction (nothing if another
    delivery of the job finished it first).

    The inferred parent gets an edge with the decision's scores; declared parents in the catalog
    that the weights did not confirm get declared edges, so the family tree shows the claim
    beside the finding. Each edge's evidence carries the job's audit verdict, which the family
    tree shows on the edge. Edges the graph refuses (a cycle) are listed in the result and
    recorded as conflicts for review (``GET /audit?verdict=conflict``).

    A job whose caller neither owns the child nor is a curator (``write_edges`` false) writes no
    edge: its result says so (``edges_withheld``)."""
    request = claimed.request
    writes_graph = request.get("write_edges", True)  # jobs from before keys: as they were
    if "declared" in request:  # what the request's own files declared
        declared = [DeclaredParent(**d) for d in request["declared"]]
    else:
        declared = declared_parents(Path(claimed.child_path))
    with transaction(factory) as session:
        job = JobRepository(session).get(claimed.job_id)
        if job is None or job.status == JobState.SUCCEEDED:
            return
        child = registry.get_by_id(session, claimed.child_id)
        if child is None:  # deleted while it was being scored: nothing to attach a result to
            mark_failed(session, claimed.job_id, "unknown_model", "the job's model was deleted")
            return
        decision = result["decision"]
        catalog = registry.catalog_names(session, [d.name for d in declared])
        audit = audit_verdict(decision["parent"], declared, catalog, decision)
        stamp = {"audit": {"verdict": audit["verdict"], "job_id": claimed.job_id}}
        declared_in_catalog = {catalog[d.name]: d for d in declared if d.name in catalog}
        refused = []

        def write_edge(parent: Model, **fields) -> None:
            refusal = lineage.add_edge(session, parent, child, **fields)
            if refusal is not None:
                refused.append(refusal)
                if refusal["code"] == "cycle":  # kept for review, not dropped silently
                    lineage.record_conflict(
                        session,
                        parent,
                        child,
                        claimed.job_id,
                        refusal,
                        result.get("direction"),
                    )

        if not writes_graph:
            result["edges_withheld"] = (
                "the child belongs to another key and this job's key is not a curator: "
                "the finding is reported here, not written to the graph"
            )
        elif decision["parent"] is not None:
            parent = registry.get_by_name(session, decision["parent"])
            best = next(c for c in result["candidates"] if c["parent"] == decision["parent"])
            also_declared = declared_in_catalog.pop(parent.name, None)
            write_edge(
                parent,
                score=decision["confidence"],
                method=decision["method"],
                scores=best["scores"],
                evidence={
                    **{k: decision[k] for k in ("confidence", "margin", "calibrated")},
                    **stamp,
                },
                relation=also_declared.relation if also_declared else "finetune",
                declared=also_declared is not None,
            )
        for name, stated in declared_in_catalog.items() if writes_graph else ():
            write_edge(
                registry.get_by_name(session, name),
                relation=stated.relation,
                declared=True,
                evidence={"source": stated.source, **stamp},
            )
        if refused:
            result["edges_refused"] = refused
        result["audit"] = audit
        if request.get("register_as_parent"):
            registry.promote(session, claimed.child_id)
        job.status, job.result, job.progress, job.finished_at = (
            JobState.SUCCEEDED,
            result,
            1.0,
            utcnow(),
        )
        job.verdict = audit["verdict"]


def fail(factory: sessionmaker[Session], job_id: str, code: str, message: str) -> None:
    """Mark the job failed with ``{"code", "message"}`` in its own transaction (unless another
    delivery already finished it)."""
    with transaction(factory) as session:
        mark_failed(session, job_id, code, message)


def run_job(
    factory: sessionmaker[Session],
    job_id: str,
    *,
    device: str = "cpu",
    shortlist_size: int = DEFAULT_SHORTLIST,
    token: str | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> None:
    """Claim (under ``token``; default: a new claim), score and record one job; its outcome is
    written to the database. Bad input fails the job, and so does running out of memory; a bug
    or a time limit fails it too and is raised for the caller to log.

    The database being away (``DATABASE_UNAVAILABLE``) while claiming or recording is raised
    with the job left as it was (queued, or running under ``token``): the caller retries with
    the same token, and the retry takes the job back without counting a new attempt."""
    token = token or new_claim_token()
    claimed = claim(factory, job_id, shortlist_size, token=token, stale_after=stale_after)
    if claimed is None:
        return
    with Heartbeat(factory, job_id, token, heartbeat_interval) as beat:
        try:
            result = score(claimed, device, beat.progress)
        except ClaimLost:
            log.warning("job %s was taken over by another worker; stopping this run", job_id)
            return
        except LineageError as exc:
            fail(factory, job_id, exc.code, exc.message)
            return
        except OSError as exc:
            fail(factory, job_id, "storage_error", f"cannot read model files: {exc}")
            return
        except DATABASE_UNAVAILABLE:
            raise  # not the job's fault: retried, never failed
        except Exception as exc:
            if out_of_memory(exc):
                log.warning("job %s ran out of memory: %s", job_id, exc)
                fail(
                    factory,
                    job_id,
                    "memory_limit",
                    "the job needed more memory than its worker may use (WORKER_MEMORY_LIMIT, "
                    "or the machine's)",
                )
                return
            # A bug or a time limit (Celery's SoftTimeLimitExceeded): the job must not stay
            # "running" forever; record the failure, and let the caller see the exception.
            log.exception("detection job %s crashed", job_id)
            timed_out = type(exc).__name__ == "SoftTimeLimitExceeded"
            fail(
                factory,
                job_id,
                "time_limit" if timed_out else "internal",
                "the job ran past its time limit (TASK_TIME_LIMIT)"
                if timed_out
                else f"detection crashed: {type(exc).__name__}",
            )
            raise
    record(factory, claimed, result)


# How a worker retries a job whose claim or record met a database fault: this many tries,
# waiting 1, 2, 4 … seconds (at most MAX_RETRY_DELAY) in between, about 4 minutes in all; after
# that, the sweeper takes the job over.
DATABASE_RETRIES = 8
MAX_RETRY_DELAY = 60


def retry_delay(tries: int) -> int:
    """Seconds to wait before try ``tries + 1`` of a job that met a database fault."""
    return min(MAX_RETRY_DELAY, 2**tries)


def run_job_as_configured(
    settings: Settings, factory: sessionmaker[Session], job_id: str, token: str
) -> None:
    """``run_job`` with a worker's settings (device, shortlist, heartbeat) under claim
    ``token``."""
    run_job(
        factory,
        job_id,
        device=settings.device,
        shortlist_size=settings.shortlist_size,
        token=token,
        heartbeat_interval=settings.job_heartbeat_interval,
        stale_after=settings.job_stale_after,
    )


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation refused (Python's and numpy's ``MemoryError``, PyTorch's
    CPU allocator's ``RuntimeError`` and CUDA's ``OutOfMemoryError``)."""
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
    )


# Deleting a model --------------------------------------------------------------------------

# The reason every record a deletion leaves behind gives (the graph's log, the failed jobs).
MODEL_DELETED = "model deleted"


def delete_model(session: Session, name: str, *, key_id: int | None = None) -> dict:
    """Delete the model called ``name`` in the caller's transaction (an admin's right; ``key_id``
    is the admin's key, None from the command line); ``UnknownModel`` if none is.

    Here, because a model is known to three domains and this one sits above the other two: its
    edges go, each kept in the graph's log with ``key_id`` and the reason "model deleted"
    (``lineage.remove_edges_of``); its queued and running jobs fail with ``unknown_model`` and
    every job keeps its row without the model; then its row goes, and its files once the
    transaction commits (``registry.delete_record``). A job being scored meanwhile finds its
    model gone when it records (``record``) and ends failed too. Answers ``{"name", "sha256",
    "edges_removed", "jobs_failed"}``."""
    model = registry.get_by_name(session, name)
    summary = {"name": model.name, "sha256": model.sha256}
    summary["edges_removed"] = lineage.remove_edges_of(session, model, key_id, MODEL_DELETED)
    jobs = JobRepository(session)
    summary["jobs_failed"] = jobs.fail_unfinished_of(
        model.id, "unknown_model", "the job's model was deleted"
    )
    jobs.release_child(model.id)
    registry.delete_record(session, model)
    log.info("key %s deleted model %s (%s)", key_id, name, summary)
    return summary


# Reading jobs ------------------------------------------------------------------------------


def get_job(session: Session, job_id: str) -> dict:
    """The public JSON of job ``job_id`` (``GET /jobs/{id}``); ``UnknownJob`` if none."""
    job = JobRepository(session).get(job_id)
    if job is None:
        raise UnknownJob(f"no job with id {job_id!r}")
    child = registry.get_by_id(session, job.child_id)
    return to_dict(job, child.name if child is not None else None)


def audit_list(session: Session, verdict: str, limit: int, offset: int) -> list[dict]:
    """Finished jobs with this audit verdict, newest first: an operator's review queue."""
    return [
        {
            "job_id": job.id,
            "child": name,
            "verdict": job.verdict,
            "inferred": (job.result or {}).get("audit", {}).get("inferred"),
            "declared": (job.result or {}).get("audit", {}).get("declared", []),
            "confidence": (job.result or {}).get("audit", {}).get("confidence"),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        }
        for job, name in JobRepository(session).with_verdict(verdict, limit, offset)
    ]


def recent_jobs(session: Session, limit: int) -> list[dict]:
    """The ``limit`` newest jobs as their public JSON, newest first."""
    return [to_dict(job, name) for job, name in JobRepository(session).recent(limit)]


def latest_verdicts(session: Session, model_ids) -> dict[int, str]:
    """The audit verdict of each model's newest succeeded job, by model id."""
    verdicts = {}
    for model_id, result in JobRepository(session).latest_results(model_ids).items():
        verdict = (result.get("audit") or {}).get("verdict")
        if isinstance(verdict, str):
            verdicts[model_id] = verdict
    return verdicts


def to_dict(job: Job, child_name: str | None) -> dict:
    """The public JSON of a job (``GET /jobs/{id}``)."""
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "child": child_name,
        "attempts": job.attempts,
        "verdict": job.verdict,
        "error": job.error,
        "result": job.result,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
