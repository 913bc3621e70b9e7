"""The pages for people: the family-tree page served to browsers by ``GET /lineage/{name}``
(content negotiation), its layout, the catalog at ``/``, and escaping. A real app on a real
SQLite database (schema by migrations); every model, edge, job and audit verdict the pages show
was written by the service itself, through ``POST /parents`` and ``POST /detect``."""

from __future__ import annotations

import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory
from app.engine.model_files import save_model
from app.registry.models import Model
from app.web import loading
from app.web.layout import count_crossings, layered_layout, more_id, signed_levels
from app.web.render import Family, family_from_tree, render_catalog_page, render_family_page
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state
from tests.keys import ADMIN_HEADERS, TEST_ADMIN_KEY
from worker.dispatch import dispatcher_for
from worker.in_process import InProcessDispatcher

HTML = {"Accept": "text/html"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
SVG = "{http://www.w3.org/2000/svg}"
REDIS = os.environ.get("LINEAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379")

# root → parent-a, parent-b → child-a (of a), child-b (of b), merge, detected (of child-b).
# Each child is a seeded step away from its true parent (a fine-tune stand-in) and detected in
# turn, registered as a parent for the next generation. Nobody declares a base (audit:
# undisclosed) but merge, whose model card names parent-b while its weights descend from
# parent-a (audit: mismatch, and a declared edge parent-b → merge beside the inferred one).
FAMILY = ("org/root", "org/parent-a", "org/parent-b", "org/child-a", "org/child-b", "org/merge")
TRUTH = {
    "org/parent-a": ("org/root", 1, 0.3),
    "org/parent-b": ("org/root", 2, 0.3),
    "org/child-a": ("org/parent-a", 3, 0.1),
    "org/child-b": ("org/parent-b", 4, 0.1),
    "org/merge": ("org/parent-a", 5, 0.1),
    "org/detected": ("org/child-b", 6, 0.03),
}
MERGE_CARD = "---\nbase_model: org/parent-b\n---\n# merge\n"


def files_of(folder: Path) -> list:
    """The multipart ``files`` of a model folder."""
    return [
        ("files", (p.name, p.read_bytes(), "application/octet-stream"))
        for p in sorted(folder.iterdir())
    ]


def stepped(state: dict, seed: int, scale: float) -> dict:
    """``state`` plus seeded Gaussian noise of ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in state.items()}


@dataclass
class Site:
    """The running app, the database behind it, and each detection job by child."""

    client: TestClient
    factory: object
    jobs: dict[str, dict]

    def edge(self, parent: str, child: str) -> dict:
        """The ``/lineage`` JSON of the edge parent → child."""
        tree = self.client.get(f"/lineage/{child}", headers=JSON).json()
        return next(e for e in tree["edges"] if (e["parent"], e["child"]) == (parent, child))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """The app on a migrated SQLite file: the root registered through ``/parents``, every other
    model detected through ``/detect`` by the in-process worker, and one more job for child-b
    submitted through a second API in production mode whose workers are not running, so it
    stays queued."""
    folder = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{folder / 'lineage.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        storage_dir=folder / "storage",
        redis_url=None,
        lineage_admin_key=TEST_ADMIN_KEY,
    )
    states = {"org/root": tiny_mlp_state(0)}
    jobs = {}
    client = TestClient(
        create_app(settings, partial(InProcessDispatcher, settings=settings)), headers=ADMIN_HEADERS
    )
    with client:
        root = save_model(folder / "root", states["org/root"], TINY_MLP_CONFIG)
        response = client.post("/parents", data={"name": "org/root"}, files=files_of(root))
        assert response.status_code == 201, response.text
        for name, (parent, seed, scale) in TRUTH.items():
            states[name] = stepped(states[parent], seed, scale)
            model = save_model(folder / name.replace("/", "_"), states[name], TINY_MLP_CONFIG)
            if name == "org/merge":
                (model / "README.md").write_text(MERGE_CARD)
            fields = {"name": name, "register_as_parent": str(name != "org/detected").lower()}
            response = client.post("/detect", data=fields, files=files_of(model))
            assert response.status_code == 202, response.text
            client.app.state.dispatcher.join()
            jobs[name] = client.get(f"/jobs/{response.json()['job_id']}").json()
            assert jobs[name]["status"] == "succeeded", jobs[name]["error"]
            assert jobs[name]["result"]["decision"]["parent"] == parent, name
        production = settings.model_copy(
            update={"redis_url": f"{REDIS}/{1 + uuid.uuid4().int % 15}"}
        )
        api_app = create_app(production, dispatcher_for(production))
        with TestClient(api_app, headers=ADMIN_HEADERS) as api:
            model = folder / "org_child-b"
            response = api.post("/detect", data={"name": "org/child-b"}, files=files_of(model))
            assert response.status_code == 202, response.text
        redis.Redis.from_url(production.redis_url).flushdb()
        engine = make_engine(url)
        yield Site(client, session_factory(engine), jobs)
        engine.dispose()


def svg_of(page: str) -> ET.Element:
    """The page's drawing, parsed as XML (so it is well-formed, too)."""
    match = re.search(r"<svg xmlns=.*?</svg>", page, re.S)
    assert match, "no inline SVG on the page"
    return ET.fromstring(match.group(0))


def node_links(svg: ET.Element) -> dict[str, ET.Element]:
    """The drawn models' links by href."""
    return {a.get("href"): a for a in svg.iter(f"{SVG}a") if "more" not in a.get("class", "")}


def test_browsers_get_the_page_and_programs_the_json(site):
    client = site.client
    response = client.get("/lineage/org/parent-a", headers=BROWSER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["vary"] == "Accept"
    page = response.text
    assert '<html lang="en">' in page and "<main" in page and 'href="#main"' in page
    assert re.search(r"<h1>.*org/parent-a</h1>", page)
    assert 'href="/static/style.css"' in page and "<script" not in page and "https://" not in page

    svg = svg_of(page)
    links = node_links(svg)
    # The focused model, its parent and its children are nodes, each a link to its own page.
    for relative in ("org/parent-a", "org/root", "org/child-a", "org/merge"):
        assert f"/lineage/{relative}" in links, relative
    assert "/lineage/org/child-b" not in links  # a cousin, neither ancestor nor descendant
    focus = links["/lineage/org/parent-a"]
    assert "focus" in focus.get("class") and focus.get("aria-current") == "page"
    # Found by detection, declared by nobody: its latest job's audit says so.
    assert focus.get("aria-label") == "org/parent-a, lineage-mlp, audit: undisclosed"
    assert focus.find(f"{SVG}title").text.startswith("org/parent-a (lineage-mlp)")
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    edge = site.edge("org/root", "org/parent-a")
    assert f"{edge['score']:.2f} · auto" in labels  # score with two decimals and method
    # The same relatives as plain links outside the drawing, for screen readers and no-SVG.
    lists = page[page.index('id="relatives-heading"') :]
    for relative in ("org/root", "org/child-a", "org/merge"):
        assert f'<a href="/lineage/{relative}">{relative}</a>' in lists

    # Programs get the JSON as before: asked for, with */*, or with no Accept at all.
    as_json = client.get("/lineage/org/parent-a", headers=JSON)
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.headers["vary"] == "Accept"
    tree = as_json.json()
    assert set(tree) == {"model", "ancestors", "descendants", "edges"}
    assert tree["ancestors"] == [{"name": "org/root", "depth": 1}]
    assert {r["name"] for r in tree["descendants"]} == {"org/child-a", "org/merge"}
    for accept in ("*/*", "application/json, text/html;q=0.5", "text/html;q=0"):
        response = client.get("/lineage/org/parent-a", headers={"Accept": accept})
        assert response.json() == tree, accept
    request = client.build_request("GET", "/lineage/org/parent-a")
    del request.headers["accept"]  # no Accept header at all
    assert client.send(request).json() == tree

    # The detected child drawn under the parent detection found for it.
    links = node_links(svg_of(client.get("/lineage/org/child-b", headers=HTML).text))
    assert {"/lineage/org/detected", "/lineage/org/parent-b"} <= set(links)


def test_merges_declared_edges_audits_and_facts(site):
    page = site.client.get("/lineage/org/merge", headers=HTML).text
    svg = svg_of(page)
    links = node_links(svg)
    assert {"/lineage/org/parent-a", "/lineage/org/parent-b", "/lineage/org/root"} <= set(links)
    # Two incoming edges (a merge); the declared one dashed, the inferred one solid.
    inferred = site.edge("org/parent-a", "org/merge")
    label = f"{inferred['score']:.2f} · auto"
    paths = [p for p in svg.iter(f"{SVG}path") if "edge-line" in p.get("class", "")]
    titles = {p.find(f"{SVG}title").text: p.get("class") for p in paths}
    assert titles[f"org/parent-a → org/merge: inferred, {label}"] == "edge-line"
    declared = next(t for t in titles if t.startswith("org/parent-b → org/merge"))
    assert titles[declared] == "edge-line declared"
    # Audit verdicts as visible badges: on each edge, the verdict of the job that wrote it; on
    # each model, its latest job's.
    edge_badges = {}
    for group in svg.iter(f"{SVG}g"):
        if group.get("class") == "edge-label":
            badge = next((g for g in group.iter(f"{SVG}g") if g.get("class") == "badge"), None)
            pair = group.find(f"{SVG}title").text.split(":")[0]
            edge_badges[pair] = "".join(badge.itertext()).strip() if badge is not None else None
    assert edge_badges == {
        "org/root → org/parent-a": "undisclosed",
        "org/root → org/parent-b": "undisclosed",
        "org/parent-a → org/merge": "mismatch",
        "org/parent-b → org/merge": "mismatch",
    }
    assert links["/lineage/org/merge"].get("aria-label") == (
        "org/merge, lineage-mlp, audit: mismatch"
    )
    assert links["/lineage/org/parent-a"].get("aria-label") == (
        "org/parent-a, lineage-mlp, audit: undisclosed"
    )
    assert links["/lineage/org/root"].get("aria-label") == "org/root, lineage-mlp"  # no job
    assert "declared by the uploader" in page  # the legend

    # The facts panel: record and the per-method scores of both parent edges.
    with site.factory() as session:
        record = session.scalars(select(Model).where(Model.name == "org/merge")).one()
    facts = page[page.index('id="facts-heading"') : page.index('id="relatives-heading"')]
    assert record.sha256 in facts and "lineage-mlp" in facts
    assert f"{record.num_parameters:,}" in facts
    assert "<dt>Hub ID</dt><dd>—</dd>" in facts and "<dt>Revision</dt><dd>—</dd>" in facts
    assert "UTC</time>" in facts
    scores = facts[facts.index('<table class="scores">') :]
    assert scores.count('<th scope="col"><a href="/lineage/org/parent-') == 2
    assert set(inferred["scores"]) == set(
        site.jobs["org/merge"]["result"]["candidates"][0]["scores"]
    )
    for method, value in inferred["scores"].items():  # the declared edge has no scores
        assert f'<th scope="row">{method}</th><td>{value:.2f}</td><td>—</td>' in scores
    flagged = '<span class="verdict flagged">mismatch</span>'
    assert (
        f'<th scope="row">decision</th><td>{inferred["score"]:.2f} (auto) {flagged}</td>'
        f"<td>declared {flagged}</td>"
    ) in scores


def test_depth_and_width_limits_link_to_more(site):
    client = site.client
    page = client.get("/lineage/org/root", headers=HTML, params={"depth": 1}).text
    links = node_links(svg_of(page))
    assert {"/lineage/org/parent-a", "/lineage/org/parent-b"} <= set(links)
    assert "/lineage/org/merge" not in links  # two generations down
    assert 'href="/lineage/org/root?depth=3&amp;width=12">Show more generations' in page

    narrow = client.get("/lineage/org/root", headers=HTML, params={"width": 1}).text
    svg = svg_of(narrow)
    more = [a for a in svg.iter(f"{SVG}a") if "more" in a.get("class", "")]
    texts = sorted("".join(a.itertext()).strip().splitlines()[-1].strip() for a in more)
    assert "+1 more" in texts
    hrefs = {a.get("href") for a in more}
    assert "/lineage/org/root?depth=3&width=2" in hrefs
    # Depth is capped by MAX_LINEAGE_DEPTH; out-of-range parameters are refused, not a 500.
    assert client.get("/lineage/org/root", headers=HTML, params={"depth": 200}).status_code == 200
    assert client.get("/lineage/org/root", headers=HTML, params={"width": 0}).status_code == 422


def test_an_unknown_model_is_a_404_in_either_form(site):
    page = site.client.get("/lineage/org/nobody", headers=BROWSER)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "org/nobody" in page.text and '<html lang="en">' in page.text
    error = site.client.get("/lineage/org/nobody")
    assert error.status_code == 404 and error.json()["error"]["code"] == "unknown_model"


def test_the_catalog_lists_searches_and_pages(site, monkeypatch):
    client = site.client
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for name in FAMILY:
        assert f'<a href="/lineage/{name}">{name}</a>' in page
    assert 'href="/docs"' in page and "Showing 1–7 of 7 models" in page
    assert "lineage-mlp" in page and "UTC</time>" in page
    # The jobs: status, child, detected parent, confidence, audit verdict.
    jobs = page[page.index('id="jobs-heading"') :]
    assert "succeeded" in jobs and "queued" in jobs
    merge = site.jobs["org/merge"]["result"]["decision"]
    assert '<a href="/lineage/org/parent-a">org/parent-a</a>' in jobs
    assert f"{merge['confidence']:.2f}" in jobs
    assert '<span class="verdict flagged">mismatch</span>' in jobs
    # The real job: its child, the parent detection found, its confidence.
    detected = jobs[jobs.index('<a href="/lineage/org/detected">') :].split("</tr>")[0]
    assert '<a href="/lineage/org/child-b">org/child-b</a>' in detected
    assert re.search(r'<td class="number">[01]\.\d\d</td>', detected)

    found = client.get("/", params={"q": "parent"}).text
    models = found[: found.index('id="jobs-heading"')]
    assert "org/parent-a</a>" in models and "org/parent-b</a>" in models
    assert "org/child-a</a>" not in models and "org/root</a>" not in models
    assert 'value="parent"' in found

    monkeypatch.setattr(loading, "CATALOG_PAGE_SIZE", 4)
    first = client.get("/").text
    assert "Page 1 of 2" in first and 'href="/?page=2"' in first
    second = client.get("/", params={"page": 2}).text
    assert "Showing 5–7 of 7" in second and 'href="/?page=1"' in second
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def _synthetic_family(count: int, fanout: int = 3) -> Family:
    """A tree of ``count`` models (``fanout`` children each) plus merges, focused on a model in
    the middle, as a ``/lineage``-shaped tree."""
    names = [f"org/m{i:04d}" for i in range(count)]
    edges = []
    for i in range(1, count):
        parent = (i - 1) // fanout
        edges.append((names[parent], names[i]))
        if i % 7 == 0 and parent > 0:
            edges.append((names[parent - 1], names[i]))
    focus = names[1]
    children: dict[str, list[str]] = {}
    parents: dict[str, list[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
        parents.setdefault(child, []).append(parent)

    def walk(step):
        depth, frontier = {focus: 0}, [focus]
        while frontier:
            nxt = []
            for node in frontier:
                for other in step.get(node, []):
                    if other not in depth:
                        depth[other] = depth[node] + 1
                        nxt.append(other)
            frontier = nxt
        return [{"name": n, "depth": d} for n, d in depth.items() if d]

    tree = {
        "model": focus,
        "ancestors": walk(parents),
        "descendants": walk(children),
        "edges": [
            {
                "parent": p,
                "child": c,
                "score": 0.9,
                "method": "auto",
                "relation": "finetune",
                "declared": i % 5 == 0,
                "scores": {"cka": 0.5},
            }
            for i, (p, c) in enumerate(edges)
        ],
    }
    shown = {focus} | {r["name"] for r in tree["ancestors"] + tree["descendants"]}
    tree["edges"] = [e for e in tree["edges"] if e["parent"] in shown and e["child"] in shown]
    return family_from_tree(tree, depth=16)


def test_the_layout_draws_edges_down_without_overlaps():
    family = _synthetic_family(120)
    pairs = [(e["parent"], e["child"]) for e in family.edges]
    levels = signed_levels(
        family.focus, [n for n, _ in family.ancestors], [n for n, _ in family.descendants], pairs
    )
    assert levels[family.focus] == 0
    assert all(levels[p] < levels[c] for p, c in pairs)  # every edge goes down a level or more
    layout = layered_layout(levels, pairs)
    assert layout.hidden == {} and len(layout.nodes) == len(levels)
    for route in layout.routes:
        ys = [y for _, y in route.points]
        assert ys == sorted(ys) and ys[0] < ys[-1]
        assert layout.nodes[route.parent].level < layout.nodes[route.child].level
    by_row: dict[float, list] = {}
    for box in layout.nodes.values():
        by_row.setdefault(box.y, []).append(box)
        assert box.x - box.width / 2 >= 0 and box.x + box.width / 2 <= layout.width
    for boxes in by_row.values():
        boxes.sort(key=lambda b: b.x)
        for left, right in zip(boxes, boxes[1:], strict=False):
            assert left.x + left.width / 2 < right.x - right.width / 2  # no two boxes overlap
    assert len(by_row) == len(set(levels.values()))


def test_a_grandparent_that_is_also_a_parent_sits_above_the_parent():
    # g → p → f and g → f: nearest distance puts g and p both at -1; longest paths do not.
    levels = signed_levels("f", ["p", "g"], [], [("g", "p"), ("p", "f"), ("g", "f")])
    assert levels == {"f": 0, "p": -1, "g": -2}
    layout = layered_layout(levels, [("g", "p"), ("p", "f"), ("g", "f")])
    [long_edge] = [r for r in layout.routes if (r.parent, r.child) == ("g", "f")]
    assert len(long_edge.points) == 3  # routed through the parents' level
    with pytest.raises(ValueError):
        layered_layout({"a": 1, "b": 1}, [("a", "b")])


def test_barycenter_sweeps_untangle_and_the_width_limit_adds_a_more_node():
    # Two parents whose children are named in the opposite order: name order crosses.
    levels = {"r": 0, "a": 1, "b": 2, "z": 1, "y": 2, "c": 2, "x": 2}
    edges = [("r", "a"), ("r", "z"), ("a", "y"), ("a", "x"), ("z", "b"), ("z", "c")]
    down: dict[str, list[str]] = {}
    for p, c in edges:
        down.setdefault(p, []).append(c)
    assert count_crossings([["r"], ["a", "z"], ["b", "c", "x", "y"]], down) > 0
    layout = layered_layout(levels, edges)
    assert layout.crossings == 0

    limited = layered_layout(levels, edges, max_width=2)
    more = limited.nodes[more_id(2)]
    assert more.kind == "more" and more.hidden == 2 and limited.hidden == {2: 2}
    shown = [n for n in limited.nodes.values() if n.level == 2 and n.kind == "node"]
    assert len(shown) == 2 and max(n.x for n in shown) < more.x
    assert all(r.parent in limited.nodes and r.child in limited.nodes for r in limited.routes)


def test_a_family_of_200_renders_within_the_width_limit():
    # How long it takes is measured by scripts/bench_tree.py (docs/benchmarks.md), not here.
    family = _synthetic_family(200, fanout=4)
    svg = svg_of(render_family_page(family, width=32))  # well-formed
    rows: dict[str, int] = {}
    for link in node_links(svg).values():
        y = link.find(f"{SVG}rect[@class='box']").get("y")
        rows[y] = rows.get(y, 0) + 1
    assert max(rows.values()) == 32  # the widest levels are cut at the width asked for
    more = [a for a in svg.iter(f"{SVG}a") if "more" in a.get("class", "")]
    hidden = [int(re.search(r"\+(\d+) more", "".join(a.itertext())).group(1)) for a in more]
    # Every model is drawn or counted in its level's "+K more" box.
    total = 1 + len(family.ancestors) + len(family.descendants)
    assert hidden and sum(rows.values()) + sum(hidden) == total


def test_names_and_text_are_escaped():
    hostile = '<script>alert("x")</script>'
    tree = {
        "model": hostile,
        "ancestors": [{"name": "org/a&b", "depth": 1}],
        "descendants": [],
        "edges": [
            {
                "parent": "org/a&b",
                "child": hostile,
                "score": 0.5,
                "method": "<b>m</b>",
                "relation": "finetune",
                "declared": False,
                "scores": {"<i>": 0.1},
            }
        ],
    }
    records = {hostile: {"architecture": '"><img src=x>'}}
    page = render_family_page(family_from_tree(tree, 3, records, {hostile: "<u>mismatch"}))
    assert "<script>" not in page and "<b>m</b>" not in page and "<img" not in page
    assert "<i>" not in page and "<u>" not in page
    assert "&lt;script&gt;" in page and "org/a&amp;b" in page
    svg_of(page)  # still well-formed
    catalog = render_catalog_page([], 0, "<b>q</b>", 1, [], page_size=50)
    assert "<b>q</b>" not in catalog and "&lt;b&gt;q&lt;/b&gt;" in catalog
