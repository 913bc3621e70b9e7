"""Loading the pages for people: each page's reads of the database, handed as plain values to
``app.web.render``. The family-tree page reads the database once per request; nothing here
formats or draws.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.detection.service import latest_verdicts, recent_jobs
from app.lineage.service import relatives, tree_dict
from app.registry.service import list_models, to_dict
from app.web.render import Family, family_from_tree, render_catalog_page, render_family_page

CATALOG_PAGE_SIZE = 50
RECENT_JOBS = 20


def load_family(session: Session, name: str, depth: int) -> Family:
    """The family of ``name`` up to ``depth`` generations each way, with every shown model's
    record and latest audit verdict; ``UnknownModel`` if no model has that name."""
    # One generation more than shown: only to know whether a "more generations" link is due.
    family = relatives(session, name, depth + 1, shown_depth=depth)
    shown = [family.model]
    shown += [r.model for r in (*family.ancestors, *family.descendants) if r.depth <= depth]
    latest = latest_verdicts(session, family.names.keys())
    verdicts = {family.names[model_id]: verdict for model_id, verdict in latest.items()}
    tree = tree_dict(family, with_evidence=True)
    return family_from_tree(tree, depth, {m.name: to_dict(m) for m in shown}, verdicts)


def family_page(session: Session, name: str, depth: int, width: int, max_depth: int) -> str:
    """Load and render the family-tree page of ``name`` (``UnknownModel`` if none)."""
    depth = max(1, min(depth, max_depth))
    return render_family_page(load_family(session, name, depth), width=width, max_depth=max_depth)


def catalog_page(session: Session, q: str | None, page: int) -> str:
    """Load and render one page of the catalog with the most recent jobs."""
    offset = (page - 1) * CATALOG_PAGE_SIZE
    models, total = list_models(session, q, CATALOG_PAGE_SIZE, offset)
    jobs = recent_jobs(session, RECENT_JOBS)
    return render_catalog_page(
        [to_dict(m) for m in models], total, q, page, jobs, page_size=CATALOG_PAGE_SIZE
    )
