"""The database layer on both back ends: schema by migrations only, the lineage graph's rules and
its recursive queries, on a real PostgreSQL and on SQLite."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from app.core.db import (
    after_commit,
    downgrade,
    make_engine,
    migrate,
    session_factory,
    transaction,
)
from app.lineage.errors import CycleRefused, SelfEdge
from app.lineage.models import Edge
from app.lineage.repository import LineageRepository
from app.registry.models import Model
from tests.services import postgres_database


@pytest.fixture
def factory(database_url):
    engine = make_engine(database_url)
    yield session_factory(engine)
    engine.dispose()


def add_models(factory, *names: str) -> dict[str, int]:
    with transaction(factory) as session:
        models = [
            Model(
                name=name,
                sha256=uuid.uuid4().hex + uuid.uuid4().hex,
                num_bytes=1,
                num_parameters=1,
                storage_path=f"/nowhere/{name}",
            )
            for name in names
        ]
        session.add_all(models)
        session.flush()
        return {m.name: m.id for m in models}


def add_edges(factory, ids, *pairs: tuple[str, str]) -> None:
    with transaction(factory) as session:
        repo = LineageRepository(session)
        for parent, child in pairs:
            repo.add_edge(ids[parent], ids[child], score=1.0, method="auto")


def test_schema_is_made_and_unmade_by_migrations(database_url):
    engine = create_engine(database_url)
    assert set(inspect(engine).get_table_names()) >= {"models", "edges", "jobs", "alembic_version"}
    downgrade(database_url)
    engine.dispose()
    engine = create_engine(database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(database_url)
    engine.dispose()
    engine = create_engine(database_url)
    assert {"models", "edges", "jobs"} <= set(inspect(engine).get_table_names())
    engine.dispose()


@pytest.fixture
def family(factory):
    """root → a, root → b, a → c, b → c (a merge), c → d."""
    ids = add_models(factory, "root", "a", "b", "c", "d", "stranger")
    add_edges(factory, ids, ("root", "a"), ("root", "b"), ("a", "c"), ("b", "c"), ("c", "d"))
    return ids


def names_and_depths(relatives):
    return {(r.model.name, r.depth) for r in relatives}


def test_ancestors_and_descendants_walk_the_graph_with_nearest_depths(factory, family):
    with factory() as session:
        repo = LineageRepository(session)
        assert names_and_depths(repo.ancestors(family["d"])) == {
            ("c", 1),
            ("a", 2),
            ("b", 2),
            ("root", 3),
        }
        # Reached twice through the merge, listed once at its nearest depth.
        assert names_and_depths(repo.descendants(family["root"])) == {
            ("a", 1),
            ("b", 1),
            ("c", 2),
            ("d", 3),
        }
        assert repo.ancestors(family["stranger"]) == []


def test_walks_stop_at_the_depth_bound(factory, family):
    with factory() as session:
        repo = LineageRepository(session)
        assert names_and_depths(repo.ancestors(family["d"], max_depth=2)) == {
            ("c", 1),
            ("a", 2),
            ("b", 2),
        }
        assert names_and_depths(repo.descendants(family["root"], max_depth=1)) == {
            ("a", 1),
            ("b", 1),
        }


def test_edges_among_returns_the_subgraph(factory, family):
    with factory() as session:
        edges = LineageRepository(session).edges_among({family["a"], family["c"], family["d"]})
        assert {(e.parent_id, e.child_id) for e in edges} == {
            (family["a"], family["c"]),
            (family["c"], family["d"]),
        }


def count_edges(factory) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(Edge))


def test_self_edges_are_refused_by_code_and_by_the_schema(factory, family):
    with pytest.raises(SelfEdge), transaction(factory) as session:
        LineageRepository(session).add_edge(family["a"], family["a"])
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(Edge(parent_id=family["a"], child_id=family["a"]))
    assert count_edges(factory) == 5


def test_cycles_are_refused_and_nothing_is_written(factory, family):
    with pytest.raises(CycleRefused, match="cycle"), transaction(factory) as session:
        repo = LineageRepository(session)
        repo.add_edge(family["stranger"], family["root"])  # fine on its own...
        repo.add_edge(family["d"], family["stranger"])  # ...but d → stranger → root → ... → d
    assert count_edges(factory) == 5  # the whole transaction rolled back


def test_the_same_pair_twice_is_one_edge_updated(factory, family):
    with transaction(factory) as session:
        LineageRepository(session).add_edge(family["c"], family["d"], score=0.25, method="l1")
    assert count_edges(factory) == 5
    with factory() as session:
        edge = session.scalars(
            select(Edge).where(Edge.parent_id == family["c"], Edge.child_id == family["d"])
        ).one()
        assert (edge.score, edge.method) == (0.25, "l1")
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(Edge(parent_id=family["c"], child_id=family["d"]))


def test_concurrent_opposite_edges_cannot_both_land_on_postgresql():
    """A → B and B → A written at once: the second waits for the graph lock, then sees the
    first edge and is refused. Without the lock both would commit and make a cycle."""
    with postgres_database() as url:
        migrate(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        ids = add_models(factory, "A", "B")
        first_added = threading.Event()
        outcome: dict[str, object] = {}

        def first():
            with transaction(factory) as session:
                LineageRepository(session).add_edge(ids["A"], ids["B"])
                first_added.set()
                time.sleep(0.5)  # hold the transaction open while the second one tries

        def second():
            first_added.wait(5)
            try:
                with transaction(factory) as session:
                    LineageRepository(session).add_edge(ids["B"], ids["A"])
                outcome["second"] = "committed"
            except CycleRefused:
                outcome["second"] = "refused"

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert outcome["second"] == "refused"
        with factory() as session:
            pairs = session.execute(text("SELECT parent_id, child_id FROM edges")).all()
        assert [tuple(p) for p in pairs] == [(ids["A"], ids["B"])]
        engine.dispose()


def test_concurrent_registrations_of_the_same_weights_make_one_record(tmp_path):
    """Two requests registering the same new weights at once: one inserts, the other waits on
    the unique index and then answers with the first one's record, not an error."""
    from app.engine.model_files import load_model, save_model
    from app.registry.service import register
    from tests.factories import TINY_MLP_CONFIG, tiny_mlp_state

    folder = save_model(tmp_path / "m", tiny_mlp_state(3), TINY_MLP_CONFIG)
    loaded = load_model(folder)
    with postgres_database() as url:
        migrate(url)
        engine = make_engine(url)
        factory = session_factory(engine)
        barrier = threading.Barrier(2)
        results: list[tuple[int, bool]] = []

        def attempt(name: str):
            with transaction(factory) as session:
                barrier.wait(5)
                record, created = register(session, loaded, folder, name, candidate=True)
                results.append((record.id, created))
                time.sleep(0.3)  # keep the transaction open while the other one inserts

        threads = [threading.Thread(target=attempt, args=(n,)) for n in ("org/a", "org/b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(results) == 2
        assert results[0][0] == results[1][0]
        assert sorted(created for _, created in results) == [False, True]
        with factory() as session:
            assert session.scalar(select(func.count()).select_from(Model)) == 1
        engine.dispose()


def test_after_commit_work_runs_once_committed_and_never_after_a_rollback(factory):
    """What a service hands on after the commit (a job to the workers) sees the committed row,
    and is dropped with a transaction that rolls back, savepoints included."""
    seen = []

    def committed_names():
        with factory() as other:  # another connection: only durable rows are visible
            seen.append(sorted(other.scalars(select(Model.name))))

    with pytest.raises(RuntimeError), transaction(factory) as session:
        after_commit(session, committed_names)
        session.add(
            Model(
                name="lost", sha256="0" * 64, num_bytes=1, num_parameters=1, storage_path="/nowhere"
            )
        )
        raise RuntimeError("the request failed")
    with factory() as session:
        session.add(
            Model(name="kept", sha256="1" * 64, num_bytes=1, num_parameters=1, storage_path="/x")
        )
        after_commit(session, committed_names)
        with pytest.raises(IntegrityError), session.begin_nested():
            session.add(  # a refused savepoint does not drop the outer transaction's work
                Model(
                    name="kept", sha256="2" * 64, num_bytes=1, num_parameters=1, storage_path="/y"
                )
            )
        assert seen == []  # not before the commit
        session.commit()
        assert seen == [["kept"]]  # once, after it, and not the rolled-back registration
        session.add(
            Model(name="next", sha256="3" * 64, num_bytes=1, num_parameters=1, storage_path="/z")
        )
        session.commit()
    assert seen == [["kept"]]
