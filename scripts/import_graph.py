"""The import graph of the shipped packages (``app``, ``worker``) and its layer rules.

    python scripts/import_graph.py            # check: list every violation, exit 1 if any
    python scripts/import_graph.py --mermaid  # the package graph as a Mermaid drawing
    python scripts/import_graph.py --dot      # the same as Graphviz DOT

Every ``import`` and ``from ... import`` in a module counts, those inside functions too (a lazy
import is still an arrow). The layers, top to bottom (docs/architecture.md):

    process  app.cli, app.service_demo, worker
    api      app.api
    domain   app.registry, app.detection, app.auth, app.lineage, app.hub, app.web; the research
             tools app.bench and app.demo
    core     app.core
    engine   app.engine, and the root package ``app`` (its version)

The rules: a module imports only its own layer or layers below; a domain never imports
``app.web`` (the pages sit on top of the domains they show); and there is no import cycle,
neither between modules nor between packages (``app.registry`` ↔ ``app.lineage`` would be one
even if no two modules formed it).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "worker")
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("process", ("app.cli", "app.service_demo", "worker")),
    ("api", ("app.api",)),
    (
        "domain",
        (
            "app.registry",
            "app.detection",
            "app.auth",
            "app.lineage",
            "app.hub",
            "app.web",
            "app.bench",
            "app.demo",
        ),
    ),
    ("core", ("app.core",)),
    ("engine", ("app.engine", "app")),
]
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}
# Domains that only the pages, the API and the processes may import.
TOP_DOMAINS = ("app.web",)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    """``app/registry/service.py`` → ``app.registry.service``; a package's ``__init__`` is the
    package itself."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that the source at ``path`` imports, anywhere in the file.

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            # `import a.b.c` names a module; keep the longest known prefix.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Every module of ``packages`` under ``root`` and the modules of those packages it
    imports."""
    paths = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            paths[module_name(path, root)] = path
    known = set(paths)
    return {module: imports_of(path, module, known) for module, path in paths.items()}


def layer_of(module: str) -> str:
    """The layer a module belongs to: the one listing its longest matching prefix."""
    best, best_length = None, -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > best_length:
                best, best_length = layer, len(prefix)
    if best is None:
        raise ValueError(f"{module} is in no layer: add it to LAYERS in scripts/import_graph.py")
    return best


def package_of(module: str) -> str:
    """The package an arrow between packages is drawn from: ``app.<name>`` or ``worker``;
    ``app``'s own top-level modules (``app.cli``) count as packages of their own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "app" and len(parts) > 1 else parts[0]


def package_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The arrows between packages implied by the module graph."""
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        source = package_of(module)
        packages[source]
        for target in targets:
            if package_of(target) != source:
                packages[source].add(package_of(target))
    return dict(packages)


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted: every
    import cycle lies within one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    """Every broken rule of the module graph, one readable line each (empty: all is well)."""
    problems = []
    for module in sorted(graph):
        source = layer_of(module)
        for target in sorted(graph[module]):
            destination = layer_of(target)
            if RANK[destination] < RANK[source]:
                problems.append(
                    f"{module} ({source}) imports {target} ({destination}): "
                    "imports point down the layers only"
                )
            elif (
                source == "domain"
                and any(_within(target, p) for p in TOP_DOMAINS)
                and not any(_within(module, p) for p in TOP_DOMAINS)
            ):
                problems.append(f"{module} imports {target}: a domain never imports the pages")
    for component in cycles(graph):
        problems.append(f"import cycle among modules: {', '.join(component)}")
    for component in cycles(package_graph(graph)):
        problems.append(f"import cycle among packages: {', '.join(component)}")
    return problems


def mermaid(graph: Mapping[str, set[str]]) -> str:
    """The package graph as a Mermaid flowchart, one subgraph per layer, top layer first."""
    packages = package_graph(graph)
    ident = {p: p.replace(".", "_") for p in packages}
    lines = ["flowchart TD"]
    for layer, _ in LAYERS:
        members = sorted(p for p in packages if layer_of(p) == layer)
        if members:
            lines.append(f"  subgraph {layer}")
            lines += [f"    {ident[p]}[{p}]" for p in members]
            lines.append("  end")
    for source in sorted(packages):
        for target in sorted(packages[source]):
            lines.append(f"  {ident[source]} --> {ident[target]}")
    return "\n".join(lines)


def dot(graph: Mapping[str, set[str]]) -> str:
    """The package graph as Graphviz DOT (``dot -Tsvg``), ranked by layer."""
    packages = package_graph(graph)
    lines = ["digraph imports {", "  rankdir=TB; node [shape=box];"]
    for layer, _ in LAYERS:
        members = sorted(p for p in packages if layer_of(p) == layer)
        if members:
            lines.append("  { rank=same; " + " ".join(f'"{p}";' for p in members) + " }")
    for source in sorted(packages):
        for target in sorted(packages[source]):
            lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Check the layers, or print the package graph."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mermaid", action="store_true", help="print the graph as Mermaid")
    parser.add_argument("--dot", action="store_true", help="print the graph as Graphviz DOT")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository's root")
    args = parser.parse_args(argv)
    graph = import_graph(args.root)
    if args.mermaid or args.dot:
        print(mermaid(graph) if args.mermaid else dot(graph))
        return 0
    problems = violations(graph)
    for problem in problems:
        print(problem)
    modules = len(graph)
    arrows = sum(len(t) for t in graph.values())
    print(f"{modules} modules, {arrows} imports: {len(problems) or 'no'} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
