"""The family-tree page in a real headless browser (Debian's Chromium, driven by Playwright)
against a running ``lineage serve``: a child's page shows its parent and its own children as
nodes, a node's link leads to the parent's page, the audit verdicts that detection wrote show as
badges on the edges, and a screenshot is saved with the test's output."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import torch

from app.engine.model_files import save_model
from scripts.processes import CHROMIUM, CHROMIUM_ARGS, served
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY

ROOT = Path(__file__).resolve().parents[1]


def files(folder: Path):
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


def moved(state: dict, step: float) -> dict:
    return {k: v + step for k, v in state.items()}


def jittered(state: dict, seed: int) -> dict:
    """A fine-tune stand-in: the state plus small seeded noise."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in state.items()}


# grandchild-b's model card names org/base as its base, while its weights descend from org/child.
MISDECLARED_CARD = "---\nbase_model: org/base\n---\n# grandchild-b\n"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """``lineage serve`` on a fresh SQLite file, with base → child → two grandchildren, every
    edge written by detection jobs through ``POST /detect``: child and grandchild-a declare no
    base (audit: undisclosed), grandchild-b declares the wrong one (audit: mismatch)."""
    database = f"sqlite:///{tmp_path / 'lineage.db'}"
    monkeypatch.setenv("LINEAGE_ADMIN_KEY", TEST_ADMIN_KEY)  # the operator's admin key
    with served(database, tmp_path / "storage") as base:
        state = tiny_mlp_state(0)
        family = {
            "org/base": state,
            "org/child": moved(state, 0.05),
            "org/grandchild-a": jittered(moved(state, 0.05), 1),
            "org/grandchild-b": jittered(moved(state, 0.05), 2),
        }
        with httpx.Client(base_url=base, timeout=60, headers=ADMIN_HEADERS) as client:
            for name, weights in family.items():
                folder = save_model(tmp_path / name.replace("/", "_"), weights, TINY_MLP_CONFIG)
                if name == "org/grandchild-b":
                    (folder / "README.md").write_text(MISDECLARED_CARD)
                if name == "org/base":
                    client.post("/parents", data={"name": name}, files=files(folder))
                    continue
                job = client.post(
                    "/detect",
                    data={"name": name, "register_as_parent": "true"},
                    files=files(folder),
                ).json()["job_id"]
                while client.get(f"/jobs/{job}").json()["status"] in ("queued", "running"):
                    time.sleep(0.05)
        yield base


def test_a_child_page_shows_its_family_and_links_to_the_parent(server, tmp_path):
    from playwright.sync_api import sync_playwright

    tree = httpx.get(f"{server}/lineage/org/child", headers={"Accept": "application/json"})
    edges = {(e["parent"], e["child"]) for e in tree.json()["edges"]}
    assert ("org/base", "org/child") in edges  # the family the page should draw

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(f"{server}/lineage/org/child")
        assert "text/html" in (page.evaluate("document.contentType") or "")
        graph = page.locator("svg")
        for relative in ("org/base", "org/grandchild-a", "org/grandchild-b"):
            node = graph.locator(f'a[href="/lineage/{relative}"]')
            assert node.count() >= 1, f"{relative} is not a node of the drawn tree"
        page.screenshot(path=str(tmp_path / "child-page.png"), full_page=True)
        graph.locator('a[href="/lineage/org/base"]').first.click()
        page.wait_for_url(f"{server}/lineage/org/base")
        assert "org/base" in page.locator("h1").inner_text()
        child_node = page.locator("svg").locator('a[href="/lineage/org/child"]')
        assert child_node.count() >= 1
        browser.close()
    assert (tmp_path / "child-page.png").stat().st_size > 10_000


def test_audit_badges_from_detection_show_on_the_edges(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(f"{server}/lineage/org/child")
        labels = page.locator("svg .edge-label")
        badges = {}
        for i in range(labels.count()):
            label = labels.nth(i)
            title = label.locator("title").text_content()  # "parent → child: inferred, ..."
            badge = label.locator(".badge")
            badges[title.split(":")[0]] = badge.text_content() if badge.count() else None
        browser.close()
    # Found by the weights, declared by nobody.
    assert badges["org/base → org/child"] == "undisclosed"
    assert badges["org/child → org/grandchild-a"] == "undisclosed"
    # Found by the weights beside a different declared base: both edges carry the mismatch.
    assert badges["org/child → org/grandchild-b"] == "mismatch"
    assert badges["org/base → org/grandchild-b"] == "mismatch"
