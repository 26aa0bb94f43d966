"""Where datasets come from: the bundled default data, a dataset directory, or the simulator.

The default data (``cached_rollouts/``) is simulated, not real model output. Its recipe and the
digest of its content are committed in ``cached_rollouts/default.json``; the Parquet files are
regenerated deterministically on first use (about two seconds) and checked against that digest,
so a fresh clone works offline.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from trim_env.simulate import SimulatedTrees, SimulatorParams, generate_dataset
from trim_env.tree import MANIFEST, RolloutTrees, TreeFormatError, content_digest, load_split

#: Folder holding the default data recipe; override with the TRIM_CACHE_DIR environment variable.
CACHE_DIR = Path(os.environ.get("TRIM_CACHE_DIR", Path(__file__).resolve().parents[1] / "cached_rollouts"))
RECIPE_FILE = "default.json"


def default_recipe() -> dict[str, Any]:
    return json.loads((CACHE_DIR / RECIPE_FILE).read_text())


def default_dataset_dir() -> Path:
    """The default dataset directory, generated and digest-checked on first use."""
    recipe = default_recipe()
    target = CACHE_DIR / recipe["name"]
    if (target / MANIFEST).exists():
        return target
    scratch = CACHE_DIR / f".generating-{recipe['name']}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"Generating the default simulated dataset in {target} (first use) ...", flush=True)
    generate_dataset(
        scratch,
        preset=recipe["preset"],
        n_queries=recipe["n_queries"],
        seed=recipe["seed"],
        max_strong_steps=recipe["max_strong_steps"],
        node_budget=recipe["node_budget"],
        test_fraction=recipe["test_fraction"],
    )
    for split, expected in recipe["content_digest"].items():
        actual = content_digest(load_split(scratch, split))
        if actual != expected:
            shutil.rmtree(scratch, ignore_errors=True)
            raise TreeFormatError(
                f"{CACHE_DIR / RECIPE_FILE}: regenerated split {split!r} has digest {actual[:12]}…, "
                f"the recipe expects {expected[:12]}…; the simulator or its preset changed since the recipe was written"
            )
    try:
        os.rename(scratch, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_trees(
    path: str | None = None,
    split: str = "test",
    preset: str | None = None,
    seed: int = 0,
    n_queries: int = 500,
    overrides: dict[str, Any] | None = None,
) -> RolloutTrees:
    """Trees for evaluation or training.

    :param path: a dataset directory; ``None`` means the default data (unless ``preset`` is set).
    :param split: which split of the dataset.
    :param preset: evaluate through the simulator directly (lazy, uncapped) instead of cached trees.
    :param seed: simulator seed when ``preset`` is set.
    :param n_queries: number of simulated queries when ``preset`` is set.
    :param overrides: simulator parameter overrides when ``preset`` is set.
    """
    if preset is not None:
        if path is not None:
            raise ValueError(f"give either data.path ({path}) or data.preset ({preset}), not both")
        params = SimulatorParams.preset(preset, **(overrides or {}))
        return SimulatedTrees(params, seed, np.arange(n_queries))
    directory = Path(path) if path is not None else default_dataset_dir()
    return load_split(directory, split)
