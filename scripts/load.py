"""A bounded load run of the service in production mode, on loopback: throughput and latency.

Starts, as separate processes, what a production deployment runs: ``lineage serve`` (uvicorn,
jobs sent through Redis) on a free port and one ``lineage worker`` (Celery), on a throwaway
PostgreSQL database, a Redis database number of their own and storage in a temporary folder.
Then it sends ``--requests`` requests (default 400) from ``--concurrency`` threads (default 8):
reads (``/healthz``, ``/models``, ``/models/{name}``, ``/lineage/{name}`` as JSON,
``/jobs/{id}``), uploads of small freshly made ``lineage-mlp`` models (``POST /parents``, and
``POST /detect``, which queues a job for the worker) and bad requests that must be answered
4xx. It stops by itself, waits (at most ``--job-timeout`` seconds) for every job it queued to
finish, prints a table and removes everything it started (processes, database, Redis database,
files), on Ctrl-C and on errors too.

An error is a 5xx answer or a request that got no answer; "unexpected" counts other answers that
are not the one the request should get (a 4xx for a good request, a 2xx for a bad one). Latency
is measured from before the request is sent until its answer has been read, in the client
thread; percentiles are nearest-rank. The exit status is 1 when there was an error, an
unexpected answer or a job left unfinished.

    python scripts/load.py [--requests 400] [--concurrency 8] [--markdown]

Needs PostgreSQL and Redis on 127.0.0.1 (``scripts/ensure-services.sh``); other servers through
``LINEAGE_TEST_POSTGRES_URL`` (an admin URL whose user may create databases) and
``LINEAGE_TEST_REDIS_URL``. The per-key rate limits stay on (their database upsert is part of
every upload's cost) but are set above the run's size, so they never refuse.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from processes import ROOT, free_port

POSTGRES_ADMIN_URL = os.environ.get(
    "LINEAGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_BASE_URL = os.environ.get("LINEAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
# Tiny networks: the load is on the service, not the engine (a job takes well under a second).
MLP_CONFIG = {"model_type": "lineage-mlp", "sizes": [16, 24, 4], "activation": "relu"}
SEED_PARENTS = 4
JSON_ACCEPT = {"Accept": "application/json"}
# Share of each kind of request in the mix (they add up to 1).
MIX = {
    "GET /healthz": 0.12,
    "GET /models": 0.14,
    "GET /models/{name}": 0.14,
    "GET /lineage/{name}": 0.14,
    "GET /jobs/{id}": 0.12,
    "POST /parents": 0.08,
    "POST /detect": 0.10,
    "bad request (4xx)": 0.16,
}


@dataclass
class Result:
    endpoint: str
    seconds: float
    status: int | None  # None: no answer (transport error)
    expected: bool  # the answer the request should get
    job_id: str | None = None


@dataclass
class Catalog:
    """What the requests can name, growing as uploads succeed (shared by the threads)."""

    models: list[str]
    jobs: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, rng: random.Random, which: str) -> str:
        with self.lock:
            return rng.choice(self.models if which == "models" else self.jobs)

    def add(self, which: str, value: str) -> None:
        with self.lock:
            (self.models if which == "models" else self.jobs).append(value)


# --- the services ---------------------------------------------------------------------------


def _postgres(admin_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(statement)


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    name = f"lineage_load_{uuid.uuid4().hex[:12]}"
    _postgres(POSTGRES_ADMIN_URL, f'CREATE DATABASE "{name}"')
    try:
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].removeprefix("postgresql://")
        yield f"postgresql+psycopg://{base}/{name}"
    finally:
        _postgres(POSTGRES_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_database() -> Iterator[str]:
    """An empty Redis database number (1-15, in random order), flushed afterwards."""
    import redis

    for number in random.sample(range(1, 16), 15):
        url = f"{REDIS_BASE_URL}/{number}"
        client = redis.Redis.from_url(url)
        # Claimed with a marker key (SET NX), so two runs never share a number.
        marker = "lineage-load:claimed"
        if client.dbsize() == 0 and client.set(marker, "1", nx=True):
            try:
                yield url
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    raise RuntimeError(f"no empty Redis database at {REDIS_BASE_URL} (1-15 are all in use)")


@contextlib.contextmanager
def started(name: str, args: list[str], env: dict, log: Path) -> Iterator[subprocess.Popen]:
    """``python -m app.cli *args`` in its own process group, logging to ``log``; stopped
    (SIGTERM, then SIGKILL after 15 s) with its children on exit."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the worker's pool goes with it
        )
    try:
        yield process
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Whatever the group left behind (a pool child that outlived its parent).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_until_healthy(base: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"lineage serve did not start (exit {process.poll()}):\n{tail}")
        time.sleep(0.1)


def wait_for_worker(log: Path, process: subprocess.Popen, timeout: float) -> None:
    """Until Celery says it is ready (jobs sent before then wait in Redis anyway)."""
    deadline = time.monotonic() + timeout
    while b"ready." not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"lineage worker did not start (exit {process.poll()}):\n{tail}")
        time.sleep(0.1)


@contextlib.contextmanager
def production_service(requests: int) -> Iterator[tuple[str, str]]:
    """The API and one worker on their own database, Redis database and storage; yields the
    base URL and the admin key."""
    with contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="lineage-load-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        database_url = stack.enter_context(throwaway_database())
        redis_url = stack.enter_context(redis_database())
        admin_key = "lin_" + secrets.token_urlsafe(32)
        limit = str(max(120, 2 * requests))  # on, but never reached by this run
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "STORAGE_DIR": str(folder / "storage"),
            "LINEAGE_ADMIN_KEY": admin_key,
            "RATE_LIMIT_UPLOADS": limit,
            "RATE_LIMIT_JOBS": limit,
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(folder / "hf-cache"),
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve_log, worker_log = folder / "serve.log", folder / "worker.log"
        # serve first: it migrates the database the worker then uses.
        serve = stack.enter_context(
            started("serve", ["serve", "--port", str(port)], env, serve_log)
        )
        wait_until_healthy(base, serve, serve_log, timeout=90)
        worker = stack.enter_context(
            started("worker", ["worker", "--loglevel", "INFO"], env, worker_log)
        )
        wait_for_worker(worker_log, worker, timeout=90)
        yield base, admin_key


# --- the models -----------------------------------------------------------------------------


def model_files(state: dict) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The multipart ``files`` of a model with weights ``state`` and ``MLP_CONFIG``."""
    from safetensors.torch import save

    weights = save({k: v.contiguous() for k, v in state.items()})
    config = json.dumps(MLP_CONFIG).encode()
    return [
        ("files", ("model.safetensors", weights, "application/octet-stream")),
        ("files", ("config.json", config, "application/json")),
    ]


def stepped(state: dict, seed: int, scale: float = 0.02) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


# --- the requests ---------------------------------------------------------------------------


def plan(requests: int, rng: random.Random) -> list[str]:
    """The endpoint of each request, in a shuffled order with ``MIX``'s shares."""
    kinds = list(MIX)
    counts = {kind: int(requests * MIX[kind]) for kind in kinds}
    for kind in kinds[: requests - sum(counts.values())]:  # the rounding's remainder
        counts[kind] += 1
    order = [kind for kind in kinds for _ in range(counts[kind])]
    rng.shuffle(order)
    return order


def bad_requests(admin: dict) -> list[tuple[str, str, dict]]:
    """(method, path, httpx keyword arguments) of requests that must be answered 4xx."""
    pickle = [("files", ("pytorch_model.bin", b"\x80\x04.", "application/octet-stream"))]
    return [
        ("GET", f"/models/org/missing-{uuid.uuid4().hex[:8]}", {"headers": JSON_ACCEPT}),
        ("GET", f"/jobs/{uuid.uuid4()}", {}),
        ("GET", "/models?limit=0", {}),
        ("POST", "/detect", {"files": pickle}),  # no key: 401
        ("POST", "/detect", {"files": pickle, "headers": admin}),  # pickle: 400
        ("POST", "/parents", {"json": {"hub_id": "not a hub id!"}, "headers": admin}),  # 422
        ("POST", "/parents", {"content": b"weights", "headers": admin}),  # no media type: 415
    ]


def run_load(
    base: str,
    admin_key: str,
    requests: int,
    concurrency: int,
    seed: int = 0,
    job_timeout: float = 180,
) -> tuple[list[Result], float, dict[str, str]]:
    """Seed the catalog, send the planned requests, then wait for the jobs; returns every
    request's result, the wall time of the sending, and the last status of each job (the one
    queued before the run included)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    admin = {"Authorization": f"Bearer {admin_key}"}
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base, timeout=120, limits=limits) as client:
        return _run(client, admin, requests, concurrency, rng, job_timeout)


def _run(
    client: httpx.Client,
    admin: dict,
    requests: int,
    concurrency: int,
    rng: random.Random,
    job_timeout: float,
) -> tuple[list[Result], float, dict[str, str]]:
    from app.engine.training import initial_state

    roots = [initial_state(MLP_CONFIG, 1000 + i) for i in range(SEED_PARENTS)]
    catalog = Catalog(models=[], jobs=[])
    for i, state in enumerate(roots):  # not measured: what the reads will find
        answer = client.post(
            "/parents", data={"name": f"org/base-{i}"}, files=model_files(state), headers=admin
        )
        answer.raise_for_status()
        catalog.add("models", f"org/base-{i}")
    seed_child = stepped(roots[0], 1)
    answer = client.post(
        "/detect", data={"name": "org/seed-child"}, files=model_files(seed_child), headers=admin
    )
    answer.raise_for_status()
    catalog.add("jobs", answer.json()["job_id"])
    catalog.add("models", "org/seed-child")

    # Every request's inputs are made before the clock starts: the models too.
    order = plan(requests, rng)
    prepared: list[Callable[[], Result]] = []
    bad = bad_requests(admin)
    for number, kind in enumerate(order):
        prepared.append(_request(client, kind, number, rng, catalog, roots, admin, bad))

    started_at = time.perf_counter()
    pool = ThreadPoolExecutor(concurrency)
    try:
        results = list(pool.map(lambda send: send(), prepared))
    finally:
        # On Ctrl-C, drop the requests not yet sent rather than sending them all first.
        pool.shutdown(wait=False, cancel_futures=True)
    wall = time.perf_counter() - started_at

    job_ids = [r.job_id for r in results if r.job_id] + catalog.jobs[:1]
    return results, wall, wait_for_jobs(client, job_ids, job_timeout)


def _request(client, kind, number, rng, catalog, roots, admin, bad) -> Callable[[], Result]:
    """A function sending request ``number`` of kind ``kind`` and timing it."""
    own_rng = random.Random(rng.random())
    if kind == "POST /parents":
        files = model_files(stepped(roots[number % len(roots)], 10_000 + number, 0.05))
        name = f"org/parent-{number}"

        def send() -> Result:
            result = _timed(
                client,
                kind,
                "POST",
                "/parents",
                {201},
                data={"name": name},
                files=files,
                headers=admin,
            )
            if result.status == 201:
                catalog.add("models", name)
            return result

        return send
    if kind == "POST /detect":
        files = model_files(stepped(roots[number % len(roots)], 20_000 + number))
        name = f"org/child-{number}"

        def send() -> Result:
            result = _timed(
                client,
                kind,
                "POST",
                "/detect",
                {202},
                data={"name": name},
                files=files,
                headers=admin,
            )
            if result.job_id:
                catalog.add("jobs", result.job_id)
                catalog.add("models", name)
            return result

        return send
    if kind == "bad request (4xx)":
        method, path, kwargs = bad[number % len(bad)]
        return lambda: _timed(client, kind, method, path, range(400, 500), **kwargs)
    if kind == "GET /healthz":
        return lambda: _timed(client, kind, "GET", "/healthz", {200})
    if kind == "GET /models":
        return lambda: _timed(
            client, kind, "GET", f"/models?limit={own_rng.choice([10, 50])}", {200}
        )
    if kind == "GET /models/{name}":
        return lambda: _timed(
            client,
            kind,
            "GET",
            f"/models/{catalog.pick(own_rng, 'models')}",
            {200},
            headers=JSON_ACCEPT,
        )
    if kind == "GET /lineage/{name}":
        return lambda: _timed(
            client,
            kind,
            "GET",
            f"/lineage/{catalog.pick(own_rng, 'models')}",
            {200},
            headers=JSON_ACCEPT,
        )
    if kind == "GET /jobs/{id}":
        return lambda: _timed(client, kind, "GET", f"/jobs/{catalog.pick(own_rng, 'jobs')}", {200})
    raise ValueError(kind)


def _timed(client: httpx.Client, kind: str, method: str, path: str, expected, **kwargs) -> Result:
    start = time.perf_counter()
    try:
        answer = client.request(method, path, **kwargs)
        answer.read()
    except httpx.HTTPError:
        return Result(kind, time.perf_counter() - start, None, False)
    seconds = time.perf_counter() - start
    job_id = answer.json().get("job_id") if answer.status_code == 202 else None
    return Result(kind, seconds, answer.status_code, answer.status_code in expected, job_id)


def wait_for_jobs(client: httpx.Client, job_ids: list[str], timeout: float) -> dict[str, str]:
    """Each job's last status, polled until all have finished or ``timeout`` passed."""
    statuses = dict.fromkeys(job_ids, "unknown")
    deadline = time.monotonic() + timeout
    while True:
        for job_id, status in statuses.items():
            if status not in ("succeeded", "failed"):
                answer = client.get(f"/jobs/{job_id}")
                if answer.status_code == 200:
                    statuses[job_id] = answer.json()["status"]
        pending = [j for j, s in statuses.items() if s not in ("succeeded", "failed")]
        if not pending or time.monotonic() > deadline:
            return statuses
        time.sleep(0.5)


# --- the report -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def report(results: list[Result], wall: float, jobs: dict, markdown: bool) -> tuple[str, dict]:
    """The tables as text, and the totals."""
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        groups[r.endpoint].append(r)
    rows = []
    for name in ["all", *[k for k in MIX if k in groups]]:
        group = results if name == "all" else groups[name]
        times = sorted(r.seconds * 1000 for r in group)
        errors = sum(1 for r in group if r.status is None or r.status >= 500)
        unexpected = sum(
            1 for r in group if not r.expected and r.status is not None and r.status < 500
        )
        statuses = Counter(str(r.status or "none") for r in group)
        rows.append(
            [
                name,
                str(len(group)),
                str(errors),
                str(unexpected),
                f"{percentile(times, 50):.1f}",
                f"{percentile(times, 95):.1f}",
                f"{percentile(times, 99):.1f}",
                f"{max(times):.1f}",
                " ".join(f"{s}×{n}" for s, n in sorted(statuses.items())),
            ]
        )
    finished = Counter(jobs.values())
    totals = {
        "requests": len(results),
        "errors": int(rows[0][2]),
        "unexpected": int(rows[0][3]),
        "throughput": len(results) / wall if wall else math.nan,
        "seconds": wall,
        "p99_ms": float(rows[0][6]),
        "jobs": len(jobs),
        "succeeded": finished["succeeded"],
        "failed": finished["failed"],
        "stuck": len(jobs) - finished["succeeded"] - finished["failed"],
    }
    header = [
        "endpoint",
        "requests",
        "errors",
        "unexpected",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "statuses",
    ]
    summary = [
        ["requests", str(totals["requests"])],
        ["errors (5xx or no answer)", str(totals["errors"])],
        ["unexpected answers", str(totals["unexpected"])],
        ["wall time", f"{wall:.2f} s"],
        ["throughput", f"{totals['throughput']:.1f} req/s"],
        ["jobs submitted (1 before the run)", str(totals["jobs"])],
        ["jobs succeeded", str(totals["succeeded"])],
        ["jobs failed", str(totals["failed"])],
        ["jobs stuck (unfinished)", str(totals["stuck"])],
    ]
    out = io.StringIO()
    for table_header, table in ((["figure", "value"], summary), (header, rows)):
        out.write(_table(table_header, table, markdown) + "\n")
    return out.getvalue(), totals


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(
        f"{{:<{w}}}" if i in (0, len(header) - 1) else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests to send (400)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (8)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--seed", type=int, default=0, help="of the mix and the models (0)")
    parser.add_argument(
        "--job-timeout", type=float, default=180, help="longest wait for the jobs, in s (180)"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")

    def interrupted(signum, _frame):  # SIGTERM: unwind like Ctrl-C, so everything is removed
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    # Ctrl-C raises KeyboardInterrupt even where SIGINT came in ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        f"starting lineage serve + 1 worker on PostgreSQL and Redis ({platform.node()}, "
        f"{os.cpu_count()} CPUs); {args.requests} requests from {args.concurrency} threads",
        file=sys.stderr,
    )
    try:
        with production_service(args.requests) as (base, admin_key):
            results, wall, jobs = run_load(
                base, admin_key, args.requests, args.concurrency, args.seed, args.job_timeout
            )
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped and removed", file=sys.stderr)
        return 130
    text, totals = report(results, wall, jobs, args.markdown)
    print(text, end="")
    print(
        "summary: "
        + " ".join(
            f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in totals.items()
        )
    )
    failed = totals["errors"] or totals["unexpected"] or totals["stuck"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
