"""Shared fixtures: a small model zoo the tests train themselves (seconds, on the CPU)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from app.engine.architectures import build_network
from app.engine.model_files import save_model
from app.engine.training import digits_task, initial_state, permute_hidden_units, train

MLP_CONFIG = {"model_type": "lineage-mlp", "sizes": [64, 48, 48, 10], "activation": "relu"}
NUM_CANDIDATES = 8


@dataclass
class Zoo:
    """Paths of a trained MLP zoo: ``candidates`` (8 parents fine-tuned from one root), one
    ``outsider`` parent from the same root that is never a candidate, and children."""

    root: Path
    candidates: list[Path]
    outsider: Path
    children: dict[str, tuple[Path, Path | None]]  # name -> (child folder, true parent or None)


@pytest.fixture(scope="session")
def mlp_zoo(tmp_path_factory) -> Zoo:
    """Root → 9 parents on relabelled digits → children: plain fine-tunes of candidates 0 and 5,
    a permuted copy of one, a child with a re-initialised 5-class head, and an orphan (child of the
    outsider)."""
    out = tmp_path_factory.mktemp("zoo")
    network = build_network(MLP_CONFIG)
    root = train(
        network,
        initial_state(MLP_CONFIG, 0),
        *digits_task(network, None),
        steps=250,
        lr=1e-2,
        seed=0,
    )
    save_model(out / "root", root, MLP_CONFIG)
    parents = []
    for i in range(NUM_CANDIDATES + 1):
        state = train(network, root, *digits_task(network, i), steps=150, lr=3e-3, seed=10 + i)
        parents.append((out / f"parent-{i}", state))
        save_model(out / f"parent-{i}", state, MLP_CONFIG)
    children: dict[str, tuple[Path, Path | None]] = {}

    def fine_tune(name, parent_index, task, steps=120, lr=2e-3):
        folder, state = parents[parent_index]
        child = train(network, state, *digits_task(network, task), steps=steps, lr=lr, seed=task)
        save_model(out / name, child, MLP_CONFIG)
        truth = folder if parent_index < NUM_CANDIDATES else None
        children[name] = (out / name, truth)
        return child

    child0 = fine_tune("child-0", 0, 40)
    fine_tune("child-5", 5, 41, steps=250)
    fine_tune("orphan", NUM_CANDIDATES, 42)
    save_model(out / "child-0-permuted", permute_hidden_units(network, child0, 3), MLP_CONFIG)
    children["child-0-permuted"] = (out / "child-0-permuted", parents[0][0])

    # A child whose head was replaced: 5 classes instead of 10, new head, then fine-tuned.
    head_config = {**MLP_CONFIG, "sizes": [*MLP_CONFIG["sizes"][:-1], 5]}
    head_network = build_network(head_config)
    fresh = initial_state(head_config, 99)
    state = {k: (fresh[k] if k.startswith("layers.2.") else v) for k, v in parents[3][1].items()}
    x, y = digits_task(head_network, 43, num_classes=5)
    head_child = train(head_network, state, x, y, steps=120, lr=2e-3, seed=43)
    save_model(out / "child-3-new-head", head_child, head_config)
    children["child-3-new-head"] = (out / "child-3-new-head", parents[3][0])
    return Zoo(
        root=out / "root",
        candidates=[p for p, _ in parents[:NUM_CANDIDATES]],
        outsider=parents[NUM_CANDIDATES][0],
        children=children,
    )


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the ``lineage`` command line in a fresh interpreter, as a user would."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lineage {' '.join(args)} failed:\n{result.stderr}")
    return result


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh database of each kind (a SQLite file; a throwaway database on the local
    PostgreSQL), its schema made by the migrations."""
    from app.core.db import migrate
    from tests.services import postgres_database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lineage.db'}"
        migrate(url)
        yield url
    else:
        with postgres_database() as url:
            migrate(url)
            yield url
