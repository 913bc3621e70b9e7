"""The layer rules of docs/architecture.md, checked by ``scripts/import_graph.py`` over the real
tree, and the checker itself on small trees made to break each rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

from scripts.import_graph import (
    import_graph,
    layer_of,
    main,
    mermaid,
    package_graph,
    violations,
)


def test_the_shipped_packages_keep_the_layers():
    graph = import_graph()
    assert violations(graph) == []
    # What the rules are about is really in the graph (a checker reading nothing passes too).
    assert "app.detection.service" in graph["worker.tasks"]
    assert "app.registry.service" in graph["app.detection.service"]
    assert {"app.api", "app.registry", "app.engine"} <= set(package_graph(graph))


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Files (path → source) under ``root``, with the packages' ``__init__.py``."""
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if str(parent) != ".":
                (root / parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
    (root / "worker").mkdir(exist_ok=True)
    (root / "worker" / "__init__.py").touch()
    return root


def test_an_upward_import_even_inside_a_function_is_refused(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "app/engine/metric.py": """
                def score():
                    from app.api.app import create_app  # lazy, but an arrow all the same
                    return create_app
            """,
            "app/api/app.py": "def create_app(): ...\n",
        },
    )
    problems = violations(import_graph(root))
    assert problems == [
        "app.engine.metric (engine) imports app.api.app (api): imports point down the layers only"
    ]
    assert main(["--root", str(root)]) == 1


def test_a_domain_importing_the_pages_is_refused(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "app/lineage/endpoints.py": "from app.web.render import page\n",
            "app/web/render.py": "page = 1\n",
            "app/web/pages.py": "from app.lineage import endpoints\n",
        },
    )
    problems = violations(import_graph(root))
    assert any("app.lineage.endpoints imports app.web.render" in p for p in problems)
    assert not any(p.startswith("app.web.pages") for p in problems)  # the pages may look down


def test_cycles_between_modules_and_between_packages_are_refused(tmp_path):
    root = write_tree(
        tmp_path,
        {
            # Modules: a → b → a, relative imports resolved.
            "app/engine/a.py": "from . import b\n",
            "app/engine/b.py": "from .a import thing\nthing = 1\n",
            # Packages: no two modules form a cycle, but registry ↔ lineage do.
            "app/registry/service.py": "from app.lineage.models import Edge\n",
            "app/lineage/models.py": "Edge = 1\n",
            "app/lineage/service.py": "from app.registry.models import Model\n",
            "app/registry/models.py": "Model = 1\n",
        },
    )
    problems = violations(import_graph(root))
    assert "import cycle among modules: app.engine.a, app.engine.b" in problems
    assert "import cycle among packages: app.lineage, app.registry" in problems
    assert len(problems) == 2


def test_every_module_has_a_layer_and_the_drawing_names_the_packages():
    graph = import_graph()
    assert {layer_of(m) for m in graph} == {"process", "api", "domain", "core", "engine"}
    drawing = mermaid(graph)
    assert drawing.startswith("flowchart TD")
    assert "app_detection --> app_registry" in drawing
    assert "app_engine --> app_api" not in drawing


def test_the_architecture_doc_draws_the_current_graph():
    """docs/architecture.md shows what `python scripts/import_graph.py --mermaid` prints now:
    an arrow added or removed without redrawing fails here."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert f"```mermaid\n{mermaid(import_graph())}\n```" in doc
