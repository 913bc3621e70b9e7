"""``scripts/load.py`` runs end to end at a tiny size: the production processes start, the
requests are answered without a 5xx, every job finishes, and everything is removed afterwards.
(Its figures are for docs/security.md, not asserted here.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg

from tests.services import ADMIN_URL

ROOT = Path(__file__).resolve().parents[1]


def _load_databases() -> set[str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'lineage_load_%'")
        return {name for (name,) in rows}


def test_the_load_script_runs_small_without_errors_and_cleans_up():
    before = _load_databases()
    run = subprocess.run(
        [sys.executable, "scripts/load.py", "--requests", "20", "--concurrency", "4", "--markdown"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = dict(
        pair.split("=") for pair in run.stdout.splitlines()[-1].removeprefix("summary: ").split()
    )
    assert summary["requests"] == "20"
    assert summary["errors"] == "0" and summary["unexpected"] == "0", run.stdout
    assert summary["stuck"] == "0" and int(summary["jobs"]) >= 1, run.stdout
    assert "| POST /detect |" in run.stdout  # the per-endpoint table, as markdown
    assert _load_databases() <= before  # its throwaway database was dropped
