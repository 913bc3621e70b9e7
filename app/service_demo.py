"""``lineage serve --demo``: fill a fresh embedded service with a demo family through its API.

Trains the demo zoo (``app.demo``: a root, parents fine-tuned from it, their children), registers
the parents with ``POST /parents`` (all but one, whose children are orphans), submits every child
to ``POST /detect``, waits for the jobs, prints each answer beside the truth and the pages to
open. Everything goes through HTTP, as a client would. (Children are not registered as parents
here: siblings in the catalog would then compete with the true parents.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from app.demo import HELD_OUT, build_demo_zoo


def _files(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [
        ("files", (path.name, path.read_bytes()))
        for path in sorted(folder.iterdir())
        if path.name in ("model.safetensors", "config.json")
    ]


def run_service_demo(
    base_url: str, out: Path, say: Callable[[str], None] = print, key: str | None = None
) -> None:
    """Build the demo zoo in ``out`` and push it through the service at ``base_url``, with the
    API ``key`` (a curator's: it registers parents)."""
    say(f"training the demo zoo in {out} ...")
    manifest = build_demo_zoo(out, "cnn")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=base_url, timeout=120, headers=headers) as client:
        for name, entry in manifest["models"].items():
            if entry["role"] == "parent" and name != HELD_OUT:
                response = client.post(
                    "/parents", data={"name": f"demo/{name}"}, files=_files(out / name)
                )
                response.raise_for_status()
        jobs = {}
        for name, entry in manifest["models"].items():
            if entry["role"] == "parent":
                continue
            response = client.post(
                "/detect",
                data={"name": f"demo/{name}"},
                files=_files(out / name),
            )
            response.raise_for_status()
            truth = entry["parent"] if entry["parent"] != HELD_OUT else None
            jobs[name] = (response.json()["job_id"], f"demo/{truth}" if truth else None)
        say(f"submitted {len(jobs)} children; waiting for the worker ...")
        say(f"  {'child':<24} {'detected':<16} {'truth':<16}")
        for name, (job_id, truth) in jobs.items():
            while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
                time.sleep(0.2)
            found = ((job.get("result") or {}).get("decision") or {}).get("parent")
            verdict = "ok" if found == truth else f"WRONG ({job['status']})"
            say(f"  demo/{name:<19} {found or 'none':<16} {truth or 'none':<16} {verdict}")
    say("")
    say(f"open {base_url}/ for the catalog, {base_url}/docs for the API,")
    say(f"and {base_url}/lineage/demo/parent-0 for a family (Ctrl-C stops the service)")
