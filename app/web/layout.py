"""A layered drawing of a family tree: levels, order within levels, coordinates. No HTML here.

The classic Sugiyama pipeline, kept linear so that a family of hundreds of models lays out in
milliseconds:

1. ``signed_levels``: the focused model at level 0, each ancestor at minus the *longest* path
   from it down to the focus, each descendant at plus the longest path from the focus. Longest
   paths (not the nearest distance the graph walk reports) guarantee that every edge goes from a
   smaller level to a larger one, so every edge is drawn downward.
2. ``layered_layout``: at most ``max_width`` nodes per level (the rest become one "+K more"
   node); an edge spanning several levels gets a virtual node on each level it crosses, so all
   segments join adjacent levels; the order within each level comes from barycenter sweeps
   (each node moves to the mean position of its neighbours on the adjacent level), keeping the
   order with the fewest crossings; x coordinates are the closest to each node's neighbours
   that keeps nodes apart (isotonic regression, solved exactly by pool-adjacent-violators).

Every sweep and every coordinate pass is O(nodes + edges) plus sorting each level; counting
crossings is O(edges · log nodes).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Geometry:
    """Sizes of the drawing, in pixels."""

    node_width: float = 200.0
    node_height: float = 48.0
    more_width: float = 120.0
    gap: float = 28.0  # between two nodes side by side
    virtual_gap: float = 14.0  # around an edge passing through a level
    level_gap: float = 84.0  # between levels, room for the edges' labels
    margin: float = 24.0


@dataclass(frozen=True)
class Placed:
    """A box of the drawing, by its centre. ``kind``: ``node`` (a model) or ``more`` (the
    ``hidden`` models of a level over the width limit)."""

    id: str
    level: int
    x: float
    y: float
    width: float
    height: float
    kind: str = "node"
    hidden: int = 0


@dataclass(frozen=True)
class Route:
    """An edge's path: from the bottom of ``parent`` through the levels it crosses to the top of
    ``child``; ``points`` has one more point per crossed level."""

    parent: str
    child: str
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class Layout:
    """Where everything goes: boxes by id, edges' routes, the canvas size, and per level how
    many nodes were hidden by the width limit."""

    nodes: dict[str, Placed]
    routes: list[Route]
    width: float
    height: float
    hidden: dict[int, int] = field(default_factory=dict)
    crossings: int = 0


def more_id(level: int) -> str:
    """The id of the "+K more" box of ``level`` (model names never start with ``+``)."""
    return f"+more:{level}"


def _longest_paths(start: str, members: set[str], successors: Mapping[str, list[str]]) -> dict:
    """Longest path length from ``start`` to each of ``members`` along ``successors`` (a DAG),
    by Kahn's topological order restricted to ``start`` and ``members``: O(V + E)."""
    nodes = members | {start}
    indegree = dict.fromkeys(nodes, 0)
    for node in nodes:
        for nxt in successors.get(node, ()):
            if nxt in nodes:
                indegree[nxt] += 1
    # Only ``start`` should have no predecessor; other sources (inconsistent input) start at 1.
    distance = {node: (0 if node == start else 1) for node in nodes if indegree[node] == 0}
    queue = deque(distance)
    while queue:
        node = queue.popleft()
        for nxt in successors.get(node, ()):
            if nxt not in nodes:
                continue
            distance[nxt] = max(distance.get(nxt, 0), distance[node] + 1)
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                queue.append(nxt)
    return distance


def signed_levels(
    focus: str,
    ancestors: Iterable[str],
    descendants: Iterable[str],
    edges: Iterable[tuple[str, str]],
) -> dict[str, int]:
    """Level of each model: 0 for ``focus``, minus the longest path to it for ``ancestors``,
    plus the longest path from it for ``descendants`` (``edges`` are (parent, child) pairs).

    With these levels every edge among the models goes from a smaller level to a larger one.
    """
    up, down = set(ancestors), set(descendants)
    children: dict[str, list[str]] = defaultdict(list)
    parents: dict[str, list[str]] = defaultdict(list)
    for parent, child in edges:
        children[parent].append(child)
        parents[child].append(parent)
    levels = {focus: 0}
    for name, length in _longest_paths(focus, up, parents).items():
        if name != focus:
            levels[name] = -length
    for name, length in _longest_paths(focus, down, children).items():
        if name != focus:
            levels[name] = length
    return levels


def _check_downward(levels: Mapping[str, int], edges: Iterable[tuple[str, str]]) -> None:
    """``ValueError`` unless every edge goes from a smaller level to a larger one: the layering
    assumes it (each edge is drawn downward, through one virtual node per level it crosses)."""
    for parent, child in edges:
        if levels[parent] >= levels[child]:
            raise ValueError(
                f"edge {parent!r} → {child!r} does not go down: levels "
                f"{levels[parent]} → {levels[child]}"
            )


def _limit_width(
    levels: Mapping[str, int], edges: Sequence[tuple[str, str]], max_width: int
) -> tuple[dict[str, int], list[tuple[str, str]], dict[int, int]]:
    """The levels and edges kept when each level shows at most ``max_width`` nodes, and how
    many nodes each level hides (edges to hidden nodes are dropped).

    Levels are filled outward from level 0, so the kept family stays connected: a node is a
    candidate only if an edge joins it to a kept node nearer level 0 (the nodes of level 0 are
    candidates by right); candidates are kept in name order. A node reachable only through
    hidden nodes is hidden too, rather than drawn floating without its edges.
    """
    neighbours: dict[str, list[str]] = defaultdict(list)
    for parent, child in edges:
        neighbours[parent].append(child)
        neighbours[child].append(parent)
    by_level: dict[int, list[str]] = defaultdict(list)
    for name, level in levels.items():
        by_level[level].append(name)
    kept: set[str] = set()
    hidden: dict[int, int] = {}
    for level in sorted(by_level, key=lambda lv: (abs(lv), lv)):
        names = sorted(by_level[level])
        if level != 0:
            names = [
                n
                for n in names
                if any(m in kept and abs(levels[m]) < abs(level) for m in neighbours[n])
            ]
        kept.update(names[:max_width])
        if len(by_level[level]) > min(len(names), max_width):
            hidden[level] = len(by_level[level]) - min(len(names), max_width)
    kept_levels = {n: lv for n, lv in levels.items() if n in kept}
    kept_edges = [(p, c) for p, c in edges if p in kept and c in kept]
    return kept_levels, kept_edges, hidden


def _count_inversions(values: list[int], size: int) -> int:
    """Pairs i < j with values[i] > values[j] (a Fenwick tree over 0..size-1)."""
    tree = [0] * (size + 1)
    inversions = 0
    for seen, value in enumerate(values):
        # How many earlier values are <= value; the rest are larger: inversions.
        i, not_larger = value + 1, 0
        while i > 0:
            not_larger += tree[i]
            i -= i & -i
        inversions += seen - not_larger
        i = value + 1
        while i <= size:
            tree[i] += 1
            i += i & -i
    return inversions


def count_crossings(order: Sequence[Sequence[str]], down: Mapping[str, Sequence[str]]) -> int:
    """Edge crossings of a layered drawing: ``order`` lists the nodes of each level top to
    bottom, ``down`` each node's neighbours on the next level. Two segments between the same
    pair of levels cross when their ends are in opposite orders (Barth, Jünger and Mutzel's
    reduction to counting inversions)."""
    position = {n: i for level in order for i, n in enumerate(level)}
    total = 0
    for upper, lower in zip(order, order[1:], strict=False):
        ends = sorted(
            (position[u], position[v]) for u in upper for v in down.get(u, ()) if v in position
        )
        total += _count_inversions([v for _, v in ends], max(len(lower), 1))
    return total


def _sweep(
    order: list[list[str]], neighbours: Mapping[str, Sequence[str]], rows: Iterable[int]
) -> None:
    """Reorder each level of ``rows`` (in that sequence) by the barycenter of each node's
    ``neighbours`` on the level just swept; nodes without such neighbours keep their place."""
    position = {n: i for level in order for i, n in enumerate(level)}
    for row in rows:
        keyed = []
        for index, node in enumerate(order[row]):
            near = neighbours.get(node, ())
            key = sum(position[m] for m in near) / len(near) if near else float(index)
            keyed.append((key, index, node))
        keyed.sort()
        order[row] = [node for _, _, node in keyed]
        for i, node in enumerate(order[row]):
            position[node] = i


def _isotonic_place(desired: list[float], separation: list[float]) -> list[float]:
    """x closest to ``desired`` (least squares) with x[i+1] - x[i] >= separation[i].

    Substituting y[i] = x[i] - (separation[0] + ... + separation[i-1]) turns the gaps into
    y[i+1] >= y[i]: isotonic regression, solved exactly in O(n) by pool-adjacent-violators.
    """
    offsets = [0.0]
    for gap in separation:
        offsets.append(offsets[-1] + gap)
    blocks: list[list[float]] = []  # [sum, count] of pooled targets
    for target in (d - o for d, o in zip(desired, offsets, strict=True)):
        blocks.append([target, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    y = []
    for total, count in blocks:
        y.extend([total / count] * int(count))
    return [value + offset for value, offset in zip(y, offsets, strict=True)]


@dataclass
class _Layers:
    """The layered graph being laid out. Row 0 is level ``top``; ``order`` lists each row's
    nodes left to right, virtual ones included; ``up`` and ``down``: each node's neighbours on
    the row above and below; ``chains``: each edge as its parent, its virtual nodes, its child;
    ``row_of``: the row of each real node."""

    top: int
    order: list[list[str]]
    up: dict[str, list[str]]
    down: dict[str, list[str]]
    chains: list[list[str]]
    virtual: set[str]
    row_of: dict[str, int]


def _layers(
    levels: Mapping[str, int], edges: Sequence[tuple[str, str]], top: int, rows: int
) -> _Layers:
    """The rows of ``levels`` (real nodes in name order) with a virtual node on each level an
    edge passes through, so that every segment joins adjacent rows."""
    row_of = {n: lv - top for n, lv in levels.items()}
    up: dict[str, list[str]] = defaultdict(list)
    down: dict[str, list[str]] = defaultdict(list)
    chains: list[list[str]] = []
    order: list[list[str]] = [[] for _ in range(rows)]
    for name in sorted(levels):
        order[row_of[name]].append(name)
    virtual: set[str] = set()
    for index, (parent, child) in enumerate(edges):
        chain = [parent]
        for row in range(row_of[parent] + 1, row_of[child]):
            node = f"\0{index}:{row}"  # NUL: never part of a model's name
            virtual.add(node)
            order[row].append(node)
            chain.append(node)
        chain.append(child)
        chains.append(chain)
        for a, b in zip(chain, chain[1:], strict=False):
            down[a].append(b)
            up[b].append(a)
    return _Layers(top, order, up, down, chains, virtual, row_of)


def _order_rows(layers: _Layers, sweeps: int) -> int:
    """Reorder ``layers`` in place to the order with the fewest crossings seen, and return that
    count: first outward from level 0 (each row by its neighbours nearer the focus; level 0
    keeps its name order), then up to ``sweeps`` rounds down and up."""
    order, up, down = layers.order, layers.up, layers.down
    rows = len(order)
    zero = min(max(-layers.top, 0), rows - 1)
    _sweep(order, up, range(zero + 1, rows))
    _sweep(order, down, range(zero - 1, -1, -1))
    best, best_crossings = [list(level) for level in order], count_crossings(order, down)
    for _ in range(sweeps):
        if best_crossings == 0:
            break
        _sweep(order, up, range(1, rows))
        _sweep(order, down, range(rows - 2, -1, -1))
        crossings = count_crossings(order, down)
        if crossings < best_crossings:
            best, best_crossings = [list(level) for level in order], crossings
    layers.order = best
    return best_crossings


def _box_width(node: str, virtual: set[str], geo: Geometry) -> float:
    """A model's box is ``node_width`` wide; an edge passing through a row takes no width."""
    return 0.0 if node in virtual else geo.node_width


def _separation(a: str, b: str, virtual: set[str], geo: Geometry) -> float:
    """The least distance between the centres of neighbours ``a`` and ``b`` on a row."""
    gap = geo.virtual_gap if a in virtual or b in virtual else geo.gap
    return (_box_width(a, virtual, geo) + _box_width(b, virtual, geo)) / 2 + gap


def _pull_toward(
    layers: _Layers,
    x: dict[str, float],
    rows: Iterable[int],
    neighbours: Mapping[str, Sequence[str]],
    geo: Geometry,
) -> None:
    """Move each row of ``rows`` (in that sequence) as close as the gaps allow to the mean x of
    each node's ``neighbours``; a node without any keeps its x as its target."""
    for row in rows:
        level = layers.order[row]
        if not level:
            continue
        desired = []
        for node in level:
            near = neighbours.get(node, ())
            desired.append(sum(x[m] for m in near) / len(near) if near else x[node])
        gaps = [
            _separation(a, b, layers.virtual, geo) for a, b in zip(level, level[1:], strict=False)
        ]
        for node, value in zip(level, _isotonic_place(desired, gaps), strict=True):
            x[node] = value


def _x_coordinates(layers: _Layers, geo: Geometry) -> dict[str, float]:
    """x of every node, real and virtual: each row starts packed and centred on 0, then is
    pulled toward its neighbours, twice down and up, and once toward both sides."""
    x: dict[str, float] = {}
    for level in layers.order:
        position = 0.0
        for i, node in enumerate(level):
            if i:
                position += _separation(level[i - 1], node, layers.virtual, geo)
            x[node] = position
        for node in level:
            x[node] -= position / 2
    rows = len(layers.order)
    both = {n: [*layers.up.get(n, ()), *layers.down.get(n, ())] for n in x}
    for _ in range(2):
        _pull_toward(layers, x, range(1, rows), layers.up, geo)
        _pull_toward(layers, x, range(rows - 2, -1, -1), layers.down, geo)
    _pull_toward(layers, x, range(rows), both, geo)
    return x


def _add_more_boxes(
    layers: _Layers, x: dict[str, float], hidden: Mapping[int, int], geo: Geometry
) -> dict[str, int]:
    """Append each level's "+K more" box to its row in ``layers`` and give it an x in ``x``: at
    the right end of the row, where it pushes no model aside. Returns their levels by id."""
    more_boxes = {more_id(level_value): level_value for level_value in hidden}
    for node, level_value in more_boxes.items():
        row = level_value - layers.top
        level = layers.order[row]
        last_width = _box_width(level[-1], layers.virtual, geo) if level else 0.0
        x[node] = x[level[-1]] + (last_width + geo.more_width) / 2 + geo.gap if level else 0.0
        layers.order[row] = [*level, node]
    return more_boxes


def _row_y(row: int, geo: Geometry) -> float:
    """The y of the centres of the boxes of ``row``."""
    return geo.margin + geo.node_height / 2 + row * (geo.node_height + geo.level_gap)


def _place(
    layers: _Layers,
    x: Mapping[str, float],
    more_boxes: Mapping[str, int],
    hidden: Mapping[int, int],
    geo: Geometry,
) -> tuple[dict[str, Placed], float, float]:
    """The boxes of the real nodes and the "+K more" boxes, shifted right so that the leftmost
    box starts at the margin; with that shift and the width of everything drawn."""
    widths = {
        n: geo.more_width if n in more_boxes else _box_width(n, layers.virtual, geo) for n in x
    }
    left = min(x[n] - widths[n] / 2 for n in x)
    right = max(x[n] + widths[n] / 2 for n in x)
    shift = geo.margin - left
    nodes: dict[str, Placed] = {}
    for row, level in enumerate(layers.order):
        for node in level:
            if node in layers.virtual:
                continue
            if node in more_boxes:
                nodes[node] = Placed(
                    node,
                    more_boxes[node],
                    x[node] + shift,
                    _row_y(row, geo),
                    geo.more_width,
                    geo.node_height,
                    kind="more",
                    hidden=hidden[more_boxes[node]],
                )
            else:
                nodes[node] = Placed(
                    node,
                    row + layers.top,
                    x[node] + shift,
                    _row_y(row, geo),
                    geo.node_width,
                    geo.node_height,
                )
    return nodes, shift, right - left


def _routes(
    layers: _Layers,
    nodes: Mapping[str, Placed],
    x: Mapping[str, float],
    shift: float,
    geo: Geometry,
) -> list[Route]:
    """Each edge's route: from the bottom of its parent's box through its virtual nodes to the
    top of its child's box."""
    half = geo.node_height / 2
    routes = []
    for chain in layers.chains:
        parent, child = chain[0], chain[-1]
        first_row = layers.row_of[parent]
        points = [(nodes[parent].x, nodes[parent].y + half)]
        points += [(x[v] + shift, _row_y(first_row + i, geo)) for i, v in enumerate(chain[1:-1], 1)]
        points.append((nodes[child].x, nodes[child].y - half))
        routes.append(Route(parent, child, points))
    return routes


def layered_layout(
    levels: Mapping[str, int],
    edges: Sequence[tuple[str, str]],
    *,
    max_width: int | None = None,
    sweeps: int = 4,
    geometry: Geometry | None = None,
) -> Layout:
    """Coordinates for the nodes ``levels`` (id → level; smaller levels drawn above) joined by
    ``edges`` (parent, child), each of which must go from a smaller level to a larger one.

    With ``max_width``, a level with more nodes shows ``max_width`` of them (see
    ``_limit_width``) and one extra box, id ``more_id(level)``, kind ``more``, counting the
    others; edges to hidden nodes are dropped. ``sweeps`` rounds of barycenter ordering (down
    and up) follow an initial sweep outward from level 0.
    """
    geo = geometry or Geometry()
    _check_downward(levels, edges)
    hidden: dict[int, int] = {}
    if max_width is not None:
        levels, edges, hidden = _limit_width(levels, edges, max_width)
    # A level whose every node is hidden still gets a row, for its "+K more" box.
    all_levels = sorted(set(levels.values()) | set(hidden))
    if not all_levels:
        return Layout({}, [], 2 * geo.margin, 2 * geo.margin, hidden)
    rows = all_levels[-1] - all_levels[0] + 1
    layers = _layers(levels, edges, top=all_levels[0], rows=rows)
    crossings = _order_rows(layers, sweeps)
    x = _x_coordinates(layers, geo)
    more_boxes = _add_more_boxes(layers, x, hidden, geo)
    nodes, shift, drawn_width = _place(layers, x, more_boxes, hidden, geo)
    return Layout(
        nodes=nodes,
        routes=_routes(layers, nodes, x, shift, geo),
        width=drawn_width + 2 * geo.margin,
        height=2 * geo.margin + rows * geo.node_height + (rows - 1) * geo.level_gap,
        hidden=hidden,
        crossings=crossings,
    )
