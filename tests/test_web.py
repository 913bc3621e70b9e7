"""The pages for people: the family-tree page served to browsers by ``GET /lineage/{name}``
(content negotiation), its layout, the catalog at ``/``, and escaping. A real app on a real
SQLite database (schema by migrations) with uploaded models; the merge, the declared edge and
the audit verdicts are written through the repository, as the hub and audit code will."""

from __future__ import annotations

import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.api.app import create_app
from app.core.config import Settings
from app.core.db import make_engine, migrate, session_factory, transaction
from app.detection.dispatch import InProcessDispatcher
from app.detection.models import Job
from app.engine.model_files import save_model
from app.lineage.repository import LineageRepository
from app.registry.models import Model
from app.web import pages
from app.web.layout import count_crossings, layered_layout, more_id, signed_levels
from app.web.pages import Family, family_from_tree, render_catalog_page, render_family_page
from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state

HTML = {"Accept": "text/html"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
SVG = "{http://www.w3.org/2000/svg}"

# root → parent-a, parent-b → child-a (of a), child-b (of b), merge (of a and b); the edge
# parent-b → merge is declared; root → parent-b carries an "undisclosed" audit in its evidence,
# and merge's latest job a "mismatch" one.
FAMILY = ("org/root", "org/parent-a", "org/parent-b", "org/child-a", "org/child-b", "org/merge")
EDGES = {
    ("org/root", "org/parent-a"): {},
    ("org/root", "org/parent-b"): {"evidence": {"audit": {"verdict": "undisclosed"}}},
    ("org/parent-a", "org/child-a"): {},
    ("org/parent-b", "org/child-b"): {},
    ("org/parent-a", "org/merge"): {},
    ("org/parent-b", "org/merge"): {"declared": True},
}


def files_of(folder: Path) -> list:
    """The multipart ``files`` of a model folder."""
    return [
        ("files", (p.name, p.read_bytes(), "application/octet-stream"))
        for p in sorted(folder.iterdir())
    ]


@dataclass
class Site:
    """The running app and the database behind it."""

    client: TestClient
    factory: object


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """The app on a migrated SQLite file with the family above uploaded through ``/parents``,
    its edges and two jobs written directly."""
    folder = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{folder / 'lineage.db'}"
    migrate(url)
    settings = Settings(database_url=url, storage_dir=folder / "storage", redis_url=None)
    engine = make_engine(url)
    factory = session_factory(engine)
    client = TestClient(create_app(settings, InProcessDispatcher(factory)))
    with client:
        for seed, name in enumerate(FAMILY):
            model = save_model(folder / f"m{seed}", tiny_mlp_state(seed), TINY_MLP_CONFIG)
            response = client.post("/parents", data={"name": name}, files=files_of(model))
            assert response.status_code == 201, response.text
        with transaction(factory) as session:
            ids = dict(session.execute(select(Model.name, Model.id)).tuples().all())
            repository = LineageRepository(session)
            for (parent, child), extra in EDGES.items():
                declared = extra.get("declared", False)
                repository.add_edge(
                    ids[parent],
                    ids[child],
                    score=None if declared else 0.9312,
                    method=None if declared else "auto",
                    scores=None if declared else {"weight-cosine": 0.987, "cka": 0.5},
                    evidence=extra.get("evidence"),
                    declared=declared,
                )
            decision = {"parent": "org/parent-a", "confidence": 0.8765, "method": "auto"}
            session.add_all(
                [
                    Job(
                        id=str(uuid.uuid4()),
                        status="succeeded",
                        child_id=ids["org/merge"],
                        result={"decision": decision, "audit": {"verdict": "mismatch"}},
                    ),
                    Job(id=str(uuid.uuid4()), status="queued", child_id=ids["org/child-b"]),
                ]
            )
        # A real detection job too: a small step away from child-b's weights.
        moved = {k: v + 0.01 for k, v in tiny_mlp_state(FAMILY.index("org/child-b")).items()}
        model = save_model(folder / "detected", moved, TINY_MLP_CONFIG)
        response = client.post("/detect", data={"name": "org/detected"}, files=files_of(model))
        job_id = response.json()["job_id"]
        client.app.state.dispatcher.join()
        assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
        yield Site(client, factory)
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
    assert focus.get("aria-label") == "org/parent-a, lineage-mlp"
    assert focus.find(f"{SVG}title").text.startswith("org/parent-a (lineage-mlp)")
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "0.93 · auto" in labels  # score with two decimals and method
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
    paths = [p for p in svg.iter(f"{SVG}path") if "edge-line" in p.get("class", "")]
    titles = {p.find(f"{SVG}title").text: p.get("class") for p in paths}
    assert titles["org/parent-a → org/merge: inferred, 0.93 · auto"] == "edge-line"
    declared = next(t for t in titles if t.startswith("org/parent-b → org/merge"))
    assert titles[declared] == "edge-line declared"
    # Audit verdicts as visible badges: the model's latest job, the edge's evidence.
    badges = [
        "".join(g.itertext()).strip() for g in svg.iter(f"{SVG}g") if g.get("class") == "badge"
    ]
    assert sorted(badges) == ["mismatch", "undisclosed"]
    assert links["/lineage/org/merge"].get("aria-label") == (
        "org/merge, lineage-mlp, audit: mismatch"
    )
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
    assert '<th scope="row">weight-cosine</th><td>0.99</td><td>—</td>' in scores
    assert '<th scope="row">decision</th><td>0.93 (auto)</td><td>declared</td>' in scores


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
    assert '<a href="/lineage/org/parent-a">org/parent-a</a>' in jobs and "0.88" in jobs
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

    monkeypatch.setattr(pages, "CATALOG_PAGE_SIZE", 4)
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


def test_a_family_of_200_renders_well_under_a_second():
    family = _synthetic_family(200, fanout=4)
    started = time.perf_counter()
    page = render_family_page(family, width=64)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, elapsed
    assert len(node_links(svg_of(page))) > 64


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
    catalog = render_catalog_page([], 0, "<b>q</b>", 1, [])
    assert "<b>q</b>" not in catalog and "&lt;b&gt;q&lt;/b&gt;" in catalog
