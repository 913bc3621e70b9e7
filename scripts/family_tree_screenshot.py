"""Make docs/family-tree.png: a real family tree drawn by the service, in Debian's Chromium.

Starts `lineage serve` on a throwaway SQLite database, registers a zoo's root and parents, sends
its descendants through POST /detect (each registered as a parent in turn, so the tree grows
generation by generation), and screenshots /lineage/<focus>.

    python scripts/family_tree_screenshot.py [ZOO] [--out docs/family-tree.png] [--focus NAME]

ZOO is a zoo folder from `lineage zoo build mlp --out ZOO` (built into a temporary folder when
omitted).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from processes import CHROMIUM, CHROMIUM_ARGS, served

ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path):
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="?", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "family-tree.png")
    parser.add_argument("--focus", default="zoo/parent-0", help="Whose family tree to show.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lineage-shot-"))
    zoo = args.zoo
    if zoo is None:
        zoo = work / "zoo"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "app.cli",
                "zoo",
                "build",
                "mlp",
                "--out",
                str(zoo),
                "--size",
                "tiny",
                "--quiet",
            ],
            check=True,
            cwd=ROOT,
        )
    models = json.loads((zoo / "manifest.json").read_text())["models"]
    # Writes need a key: this run's own admin key, given to the server it starts.
    key = os.environ.setdefault("LINEAGE_ADMIN_KEY", "lin_" + secrets.token_urlsafe(32))
    with served(f"sqlite:///{work / 'l.db'}", work / "storage") as base:
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, timeout=120, headers=auth) as client:
            for name, record in models.items():
                if record["role"] in ("root", "parent"):
                    client.post(
                        "/parents", data={"name": f"zoo/{name}"}, files=files(zoo / name)
                    ).raise_for_status()
            # Generation by generation, so each child's parent is in the catalog before it.
            order = sorted(
                (n for n, r in models.items() if r["role"] in ("standard", "generation", "kd")),
                key=lambda n: models[n]["generation"],
            )
            for name in order:
                response = client.post(
                    "/detect",
                    data={"name": f"zoo/{name}", "register_as_parent": "true"},
                    files=files(zoo / name),
                )
                job_id = response.json()["job_id"]
                while client.get(f"/jobs/{job_id}").json()["status"] in ("queued", "running"):
                    time.sleep(0.1)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 840})
            page.goto(f"{base}/lineage/{args.focus}?depth=3")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))  # the first screen: title, graph, facts
            browser.close()
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
