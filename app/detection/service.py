"""Detection jobs: create, claim, run, describe. No HTTP and no Celery here.

A job's life: ``queued`` (created by the API in the same transaction as the child's record;
enqueued only after that commits) → ``running`` (claimed by one atomic UPDATE, which also counts
the attempt) → ``succeeded`` with its result and edge written in one transaction, or ``failed``
with ``{"code", "message"}``. Running a job twice is safe: a finished job is never claimed again,
and the edge write is an upsert of the (parent, child) pair. A job left ``running`` by a worker
that died is claimable again, so the broker's redelivery (``acks_late``) finishes it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import transaction, utcnow
from app.detection.audit import audit_verdict
from app.detection.models import Job
from app.engine.architectures import open_model
from app.engine.decision import rank_candidates
from app.engine.errors import LineageError
from app.hub.declared import DeclaredParent, declared_parents
from app.lineage.errors import CycleRefused, SelfEdge
from app.lineage.repository import LineageRepository
from app.registry.models import Model
from app.registry.service import candidates, get_by_name

log = logging.getLogger(__name__)


def create_job(session: Session, child: Model, request: dict) -> Job:
    """A queued job for ``child`` (the caller commits, then enqueues ``job.id``)."""
    job = Job(id=str(uuid.uuid4()), status="queued", child_id=child.id, request=request)
    session.add(job)
    session.flush()
    return job


def claim(session: Session, job_id: str) -> Job | None:
    """Atomically mark the job running and count the attempt; None if it is already finished
    (or unknown). A job still ``running`` is claimable: its previous worker died."""
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("queued", "running")))
        .values(status="running", attempts=Job.attempts + 1, started_at=utcnow(), progress=0.05)
    ).rowcount
    return session.get(Job, job_id) if claimed else None


def _fail(factory: sessionmaker[Session], job_id: str, code: str, message: str) -> None:
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        if job is not None and job.status != "succeeded":
            job.status, job.error, job.finished_at = (
                "failed",
                {"code": code, "message": message},
                utcnow(),
            )


def report_progress(factory: sessionmaker[Session], job_id: str, value: float) -> None:
    """Record a running job's progress (0–1) in its own short transaction."""
    with transaction(factory) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == "running").values(progress=value)
        )


def run_job(factory: sessionmaker[Session], job_id: str, *, device: str = "cpu") -> None:
    """Claim and run one job; its outcome is written to the database, never raised."""

    def progress(value: float) -> None:
        report_progress(factory, job_id, value)

    with transaction(factory) as session:
        job = claim(session, job_id)
        if job is None:
            return
        child = session.get(Model, job.child_id)
        if child is None:
            job.status, job.finished_at = "failed", utcnow()
            job.error = {"code": "unknown_model", "message": "the job's model was deleted"}
            return
        request = dict(job.request or {})
        child_row = (child.id, child.name, child.storage_path)
        catalog = [(m.name, m.storage_path) for m in candidates(session, child.id)]
    try:
        child_model = open_model(child_row[2], child_row[1])
        parents = [open_model(path, name) for name, path in catalog]
        progress(0.3)
        if parents:
            ranking = rank_candidates(
                child_model, parents, request.get("method", "auto"), device=device
            )
            result = ranking.to_dict()
        else:
            result = {
                "child": child_row[1],
                "decision": {
                    "parent": None,
                    "confidence": 1.0,
                    "method": "auto",
                    "best": None,
                    "margin": 0.0,
                    "calibrated": False,
                },
                "candidates": [],
                "skipped": [],
                "note": "the catalog holds no candidate parents",
            }
        progress(0.9)
    except LineageError as exc:
        _fail(factory, job_id, exc.code, exc.message)
        return
    except OSError as exc:
        _fail(factory, job_id, "storage_error", f"cannot read model files: {exc}")
        return
    except Exception as exc:
        # A bug or a time limit (Celery's SoftTimeLimitExceeded): the job must not stay
        # "running" forever; record the failure, and let the caller see the exception.
        log.exception("detection job %s crashed", job_id)
        timed_out = type(exc).__name__ == "SoftTimeLimitExceeded"
        _fail(
            factory,
            job_id,
            "time_limit" if timed_out else "internal",
            "the job ran past its time limit (TASK_TIME_LIMIT)"
            if timed_out
            else f"detection crashed: {type(exc).__name__}",
        )
        raise
    if "declared" in request:  # what the request's own files declared
        declared = [DeclaredParent(**d) for d in request["declared"]]
    else:
        declared = declared_parents(Path(child_row[2]))
    with transaction(factory) as session:
        job = session.get(Job, job_id)
        if job is None or job.status == "succeeded":
            return  # another delivery finished it first
        decision = result["decision"]
        repository = LineageRepository(session)
        refused = []

        def write_edge(parent: Model, **fields) -> None:
            try:
                with session.begin_nested():
                    repository.add_edge(parent.id, child_row[0], **fields)
            except (CycleRefused, SelfEdge) as exc:
                refused.append({"parent": parent.name, "code": exc.code, "message": exc.message})

        catalog = catalog_names(session, [d.name for d in declared])
        declared_in_catalog = {catalog[d.name]: d for d in declared if d.name in catalog}
        if decision["parent"] is not None:
            parent = get_by_name(session, decision["parent"])
            best = next(c for c in result["candidates"] if c["parent"] == decision["parent"])
            also_declared = declared_in_catalog.pop(parent.name, None)
            write_edge(
                parent,
                score=decision["confidence"],
                method=decision["method"],
                scores=best["scores"],
                evidence={k: decision[k] for k in ("confidence", "margin", "calibrated")},
                relation=also_declared.relation if also_declared else "finetune",
                declared=also_declared is not None,
            )
        # Declared parents the weights did not confirm still enter the graph, marked declared,
        # so the family tree shows what the uploader claimed beside what was found.
        for name, stated in declared_in_catalog.items():
            write_edge(
                get_by_name(session, name),
                relation=stated.relation,
                declared=True,
                evidence={"source": stated.source},
            )
        if refused:
            result["edges_refused"] = refused
        result["audit"] = audit_verdict(decision["parent"], declared, catalog, decision)
        if request.get("register_as_parent"):
            session.get(Model, child_row[0]).is_candidate = True
        job.status, job.result, job.progress, job.finished_at = "succeeded", result, 1.0, utcnow()
        job.verdict = result["audit"]["verdict"]


def catalog_names(session: Session, names: list[str]) -> dict[str, str]:
    """Map each of ``names`` that a catalog model carries as its name or hub ID to that model's
    name."""
    if not names:
        return {}
    found: dict[str, str] = {}
    models = session.scalars(
        select(Model).where(or_(Model.name.in_(names), Model.hub_id.in_(names)))
    )
    for model in models:
        for name in names:
            if name in (model.name, model.hub_id):
                found.setdefault(name, model.name)
    return found


def audit_list(session: Session, verdict: str, limit: int, offset: int) -> list[dict]:
    """Finished jobs with this audit verdict, newest first: an operator's review queue."""
    rows = session.execute(
        select(Job, Model.name)
        .join(Model, Job.child_id == Model.id)
        .where(Job.verdict == verdict)
        .order_by(Job.finished_at.desc(), Job.id)
        .limit(limit)
        .offset(offset)
    ).all()
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
        for job, name in rows
    ]


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
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
