"""Real processes for the tests and the scripts (not shipped with the package): ``lineage
serve`` in a child process on a free port (stopped afterwards), and how to start Debian's
Chromium headless on this kind of machine. Tests import it as ``scripts.processes``; the
scripts beside it as ``processes``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless as root, without reaching for the network (the machine's network is closed: without
# these, Chromium's background connections are refused at every start).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(database_url: str, storage_dir: Path, timeout: float = 60) -> Iterator[str]:
    """Start ``lineage serve`` (embedded worker: no ``REDIS_URL``) on ``database_url`` and yield
    its base URL once ``/healthz`` answers; terminate it on exit."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "STORAGE_DIR": str(storage_dir)}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lineage serve did not start (exit code {process.poll()})")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(15)
