"""Rendering the pages for people: the family-tree page, the catalog and the error page, as
pure functions of plain values (dicts, lists, the ``Family`` record). No database here: what a
page shows is loaded by ``app.web.loading``, so rendering can be timed or tested on its own.

Templates are Jinja2 with autoescaping on: every name, architecture or verdict that reaches the
page is escaped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app.lineage.schemas import DEFAULT_WIDTH, MAX_WIDTH
from app.web.layout import Layout, layered_layout, signed_levels

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

# The family-tree page's query parameters: generations each way, models drawn a level.
# Audit verdicts worth a warning badge; any other verdict is shown as plain text.
FLAGGED_VERDICTS = frozenset({"mismatch", "undisclosed"})
# Characters of a name that fit in a node box at the page's font size.
NODE_LABEL_CHARS = 26


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,  # a typo in a template is an error, not an empty string
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["timestamp"] = format_timestamp
    env.filters["parameters"] = format_parameters
    env.filters["score"] = format_score
    return env


# Formatting ---------------------------------------------------------------------------------


def format_timestamp(value: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM UTC`` (naive times are UTC, as stored)."""
    if not value:
        return "—"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def format_parameters(value: int | None) -> str:
    """A parameter count for people: ``124,439,808 (124.4 M)``."""
    if value is None:
        return "—"
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            return f"{value:,} ({value / size:.1f} {unit})"
    return f"{value:,}"


def format_score(value: float | None) -> str:
    """A score with 2 decimals, or ``—``."""
    return "—" if value is None else f"{value:.2f}"


def model_path(name: str) -> str:
    """The family-tree page of ``name`` (its ``/`` kept: names are paths)."""
    return f"/lineage/{quote(name, safe='/')}"


def page_url(name: str, depth: int, width: int) -> str:
    """The family-tree page of ``name`` at ``depth`` generations and ``width`` nodes a level."""
    return f"{model_path(name)}?{urlencode({'depth': depth, 'width': width})}"


def audit_verdict(payload: Mapping | None) -> str | None:
    """The audit verdict of a job result or an edge's evidence (``{"audit": {"verdict"}}``)."""
    audit = (payload or {}).get("audit")
    if isinstance(audit, Mapping) and isinstance(audit.get("verdict"), str):
        return audit["verdict"]
    return None


def _short(name: str, limit: int = NODE_LABEL_CHARS) -> str:
    """``name`` cut in the middle to ``limit`` characters: the organisation and the end of the
    model's name are what tell relatives apart."""
    if len(name) <= limit:
        return name
    head = (limit - 1) // 3
    return f"{name[:head]}…{name[-(limit - 1 - head) :]}"


# The family-tree page -----------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """What the family-tree page shows, loaded once.

    ``ancestors`` and ``descendants``: (name, distance in edges), nearest first, at most
    ``depth`` away. ``edges``: the /lineage JSON edges among them, each with ``verdict`` (the
    audit verdict of its evidence, or None). ``records``: registry records by name (a model
    without one is drawn by name only). ``verdicts``: the audit verdict of each model's latest
    job. ``deeper_*``: whether relatives exist beyond ``depth``.
    """

    focus: str
    depth: int
    ancestors: list[tuple[str, int]]
    descendants: list[tuple[str, int]]
    edges: list[dict]
    records: dict[str, dict] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    deeper_ancestors: bool = False
    deeper_descendants: bool = False


def family_from_tree(
    tree: Mapping,
    depth: int,
    records: Mapping[str, dict] | None = None,
    verdicts: Mapping[str, str] | None = None,
) -> Family:
    """A ``Family`` from a tree in the shape of ``GET /lineage`` (``model``, ``ancestors``,
    ``descendants``, ``edges``; an edge may also carry its ``evidence``), walked at least
    ``depth + 1`` deep so that relatives beyond ``depth`` are known to exist."""
    ancestors = [(r["name"], r["depth"]) for r in tree["ancestors"] if r["depth"] <= depth]
    descendants = [(r["name"], r["depth"]) for r in tree["descendants"] if r["depth"] <= depth]
    shown = {tree["model"], *(n for n, _ in ancestors), *(n for n, _ in descendants)}
    edges = []
    for edge in tree["edges"]:
        if edge["parent"] in shown and edge["child"] in shown:
            public = {k: v for k, v in edge.items() if k != "evidence"}
            edges.append({**public, "verdict": audit_verdict(edge.get("evidence"))})
    return Family(
        focus=tree["model"],
        depth=depth,
        ancestors=ancestors,
        descendants=descendants,
        edges=edges,
        records=dict(records or {}),
        verdicts=dict(verdicts or {}),
        deeper_ancestors=any(r["depth"] > depth for r in tree["ancestors"]),
        deeper_descendants=any(r["depth"] > depth for r in tree["descendants"]),
    )


def _generation(distance: int, up: bool) -> str:
    names = (
        ("Parents", "Grandparents", "Great-grandparents")
        if up
        else ("Children", "Grandchildren", "Great-grandchildren")
    )
    if distance <= len(names):
        return names[distance - 1]
    return f"{distance} generations {'up' if up else 'down'}"


def _grouped(relatives: list[tuple[str, int]], records: Mapping[str, dict], up: bool) -> list:
    groups: dict[int, list[dict]] = defaultdict(list)
    for name, distance in relatives:
        architecture = records.get(name, {}).get("architecture")
        groups[distance].append({"name": name, "href": model_path(name), "arch": architecture})
    return [
        {"title": _generation(distance, up), "members": sorted(members, key=lambda m: m["name"])}
        for distance, members in sorted(groups.items())
    ]


def _curve(points: list[tuple[float, float]]) -> str:
    """An SVG path through ``points``: one vertical-tangent cubic per segment, so an edge
    leaves its parent and enters its child straight down."""
    (x0, y0), *rest = points
    d = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        middle = (y0 + y1) / 2
        d.append(f"C{x0:.1f},{middle:.1f} {x1:.1f},{middle:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(d)


def _edge_label(edge: Mapping) -> str:
    parts = []
    if edge.get("score") is not None:
        parts.append(format_score(edge["score"]))
    if edge.get("method"):
        parts.append(edge["method"])
    if not parts:
        parts.append(edge.get("relation") or "declared")
    return " · ".join(parts)


def _drawing(family: Family, layout: Layout, levels: Mapping[str, int], width: int) -> dict:
    """The SVG's nodes and edges as plain values for the template."""
    records = family.records
    level_sizes = Counter(levels.values())
    nodes, more = [], []
    for box in layout.nodes.values():
        left, top = box.x - box.width / 2, box.y - box.height / 2
        if box.kind == "more":
            wider = min(MAX_WIDTH, max(width + 1, level_sizes[box.level]))
            more.append(
                {
                    "x": left,
                    "y": top,
                    "cx": box.x,
                    "width": box.width,
                    "height": box.height,
                    "hidden": box.hidden,
                    "href": page_url(family.focus, family.depth, wider),
                    "aria": f"{box.hidden} more models on this level: show up to {wider} a level",
                }
            )
            continue
        record = records.get(box.id, {})
        architecture = record.get("architecture")
        verdict = family.verdicts.get(box.id)
        flagged = verdict in FLAGGED_VERDICTS
        aria = f"{box.id}, {architecture or 'unknown architecture'}"
        if flagged:
            aria += f", audit: {verdict}"
        title = box.id
        if architecture:
            title += f" ({architecture})"
        if record.get("num_parameters") is not None:
            title += f", {format_parameters(record['num_parameters'])} parameters"
        if verdict:
            title += f"; audit verdict: {verdict}"
        nodes.append(
            {
                "name": box.id,
                "href": model_path(box.id),
                "label": _short(box.id),
                "arch": _short(architecture or "unknown architecture"),
                "aria": aria,
                "title": title,
                "focus": box.id == family.focus,
                "verdict": verdict if flagged else None,
                "x": left,
                "y": top,
                "cx": box.x,
                "cy": box.y,
                "width": box.width,
                "height": box.height,
            }
        )
    by_pair = {(e["parent"], e["child"]): e for e in family.edges}
    edges = []
    for route in layout.routes:
        edge = by_pair[(route.parent, route.child)]
        # The label sits halfway along the middle segment of the route.
        i = (len(route.points) - 2) // 2
        (x0, y0), (x1, y1) = route.points[i], route.points[i + 1]
        kind = "declared" if edge.get("declared") else "inferred"
        label = _edge_label(edge)
        verdict = edge.get("verdict") if edge.get("verdict") in FLAGGED_VERDICTS else None
        edges.append(
            {
                "d": _curve(route.points),
                "declared": bool(edge.get("declared")),
                "label": label,
                "lx": (x0 + x1) / 2,
                "ly": (y0 + y1) / 2,
                # Room for the label's background (the font is not measured on the server).
                "label_width": 6.5 * len(label) + 8,
                "title": f"{route.parent} → {route.child}: {kind}, {label}",
                "verdict": verdict,
                "badge_width": 12 + 7 * len(verdict or ""),
            }
        )
    focus_box = layout.nodes.get(family.focus)
    focus_point = (focus_box.x, focus_box.y) if focus_box else None
    return {"nodes": nodes, "more": more, "edges": edges, "focus_point": focus_point}


def _parent_scores(family: Family) -> dict:
    """The table of per-method scores of the edges into the focused model: one column per
    parent, one row per method."""
    into = sorted(
        (e for e in family.edges if e["child"] == family.focus), key=lambda e: e["parent"]
    )
    methods = sorted({m for e in into for m in (e.get("scores") or {})})
    return {
        "parents": [
            {
                "name": e["parent"],
                "href": model_path(e["parent"]),
                "score": e.get("score"),
                "method": e.get("method"),
                "declared": bool(e.get("declared")),
                "verdict": e.get("verdict"),
            }
            for e in into
        ],
        "rows": [
            {"method": m, "scores": [(e.get("scores") or {}).get(m) for e in into]} for m in methods
        ],
    }


def render_family_page(
    family: Family,
    *,
    width: int = DEFAULT_WIDTH,
    max_depth: int = 16,
) -> str:
    """The HTML family-tree page of ``family``: a layered SVG (ancestors above, descendants
    below, at most ``width`` nodes a level), the focused model's facts, and the same relatives
    as plain lists. ``max_depth`` caps the "more generations" link."""
    names = [n for n, _ in family.ancestors], [n for n, _ in family.descendants]
    pairs = [(e["parent"], e["child"]) for e in family.edges]
    levels = signed_levels(family.focus, names[0], names[1], pairs)
    layout = layered_layout(levels, pairs, max_width=width)
    deeper = family.deeper_ancestors or family.deeper_descendants
    more_generations = None
    if deeper and family.depth < max_depth:
        more_generations = page_url(family.focus, min(family.depth + 2, max_depth), width)
    record = family.records.get(family.focus, {})
    return (
        _environment()
        .get_template("family.html")
        .render(
            focus=family.focus,
            record=record,
            verdict=family.verdicts.get(family.focus),
            flagged=FLAGGED_VERDICTS,
            depth=family.depth,
            width=width,
            max_depth=max_depth,
            max_width=MAX_WIDTH,
            ancestors=_grouped(family.ancestors, family.records, up=True),
            descendants=_grouped(family.descendants, family.records, up=False),
            edges=sorted(family.edges, key=lambda e: (e["parent"], e["child"])),
            counts={"ancestors": len(family.ancestors), "descendants": len(family.descendants)},
            drawing=_drawing(family, layout, levels, width),
            canvas={"width": layout.width, "height": layout.height},
            hidden=sum(layout.hidden.values()),
            deeper=deeper,
            more_generations=more_generations,
            parent_scores=_parent_scores(family),
            model_path=model_path,
        )
    )


# The catalog --------------------------------------------------------------------------------


def _job_row(job: Mapping) -> dict:
    """A row of the jobs table from a job's plain values: ``id``, ``status``, ``child`` (the
    child's name, None if it was deleted), ``result`` and ``created_at`` (ISO, or None), as in
    a job's public JSON."""
    result = job["result"]
    decision = (result or {}).get("decision") or {}
    finished = job["status"] == "succeeded"
    parent = decision.get("parent") if finished else None
    child = job["child"]
    return {
        "id": job["id"],
        "status": job["status"],
        "child": child,
        "child_href": model_path(child) if child else None,
        "parent": parent,
        "parent_href": model_path(parent) if parent else None,
        # "none" only when detection ran and found no parent; unfinished jobs have no answer.
        "parent_text": parent or ("none" if finished else "—"),
        "confidence": decision.get("confidence") if finished else None,
        "verdict": audit_verdict(result),
        "created_at": job["created_at"],
    }


def render_catalog_page(
    models: list[dict],
    total: int,
    q: str | None,
    page: int,
    jobs: list[dict],
    *,
    page_size: int,
) -> str:
    """The HTML catalog: a search form, page ``page`` of ``page_size`` models (``models``:
    its registry records) out of ``total`` matching ``q``, and the recent detection ``jobs``
    (as ``_job_row`` takes them), newest first."""
    pages = max(1, -(-total // page_size))

    def link(number: int) -> str:
        query = {"q": q, "page": number} if q else {"page": number}
        return f"/?{urlencode(query)}"

    first = (page - 1) * page_size + 1 if models else 0
    return (
        _environment()
        .get_template("catalog.html")
        .render(
            models=[{**m, "href": model_path(m["name"])} for m in models],
            total=total,
            q=q or "",
            page=page,
            pages=pages,
            first=first,
            last=first + len(models) - 1 if models else 0,
            previous=link(page - 1) if page > 1 else None,
            next=link(page + 1) if page < pages else None,
            jobs=[_job_row(job) for job in jobs],
            flagged=FLAGGED_VERDICTS,
        )
    )


def render_error_page(status: int, title: str, message: str) -> str:
    """An HTML error page (the pages' answer where the API answers the JSON error shape)."""
    return (
        _environment()
        .get_template("error.html")
        .render(status=status, title=title, message=message)
    )
