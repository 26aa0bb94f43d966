"""Shared fixtures: a tiny simulated dataset, generated once per test session.

``tiny_dataset_dir`` is a dataset directory (train: 48 queries, test: 12) simulated with the
default preset, seed 1, K = 2 strong steps per path and no node budget, so every non-terminal node
below the cap has both children. ``tiny_trees`` is its loaded ``test`` split. Both are shared
across the session: tests must not modify them (copy the directory first, e.g. with
``shutil.copytree(tiny_dataset_dir, tmp_path / "copy")``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trim_env.simulate import generate_dataset
from trim_env.tree import RolloutTrees, load_split

TINY_PRESET = "math500-qwen1.5b-7b"
TINY_SEED = 1
TINY_N_QUERIES = 60
TINY_MAX_STRONG_STEPS = 2


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a small simulated dataset (read-only for tests)."""
    directory = tmp_path_factory.mktemp("tiny_dataset")
    generate_dataset(
        directory,
        preset=TINY_PRESET,
        n_queries=TINY_N_QUERIES,
        seed=TINY_SEED,
        max_strong_steps=TINY_MAX_STRONG_STEPS,
        node_budget=None,
    )
    return directory


@pytest.fixture(scope="session")
def tiny_trees(tiny_dataset_dir: Path) -> RolloutTrees:
    """The ``test`` split of :func:`tiny_dataset_dir` (read-only for tests)."""
    return load_split(tiny_dataset_dir, "test")


@pytest.fixture(scope="session", autouse=True)
def tiny_dataset_stays_unchanged(tiny_dataset_dir: Path):
    """Tests that grow the shared dataset must not persist what they grow (data.persist_growth=false)."""
    yield
    grown = sorted(tiny_dataset_dir.glob("*/growth/*"))
    assert not grown, f"a test persisted growth into the shared tiny dataset: {grown[:3]}"
