"""Where datasets come from: the bundled default data, a dataset directory, a Hub dataset, or the simulator.

Every entry point turns ``data.path`` into a local directory with :func:`resolve_dataset_dir`:
``null`` is the default data, ``hf://datasets/OWNER/NAME[@REVISION][/SUBDIR]`` a dataset directory
on the Hugging Face Hub (fetched into its cache, :func:`trim_env.hf.download_hub_dataset`), anything
else a local directory.

The default data (``cached_rollouts/``) is simulated, not real model output. Its recipe (the
simulator preset and seed it comes from, and the size of the stored seed cache) and the digest of
its content are committed in ``cached_rollouts/default.json``; the Parquet files are regenerated
deterministically on first use and checked against that digest, so a fresh clone works offline.
Missing children then grow on demand from the same simulator (:func:`open_split`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from trim_env.hf import download_hub_dataset, is_hub_path
from trim_env.paths import cache_dir, recipe_file
from trim_env.simulate import SimulatedTrees, SimulatorParams, SimulatorSource, generate_dataset
from trim_env.store import GrowingTrees, GrowthJournal, TreeSource
from trim_env.tree import MANIFEST, RolloutTrees, TreeFormatError, content_digest, load_split, read_manifest

#: Folder holding the default data (the TRIM_CACHE_DIR environment variable, else the checkout's
#: ``cached_rollouts/``, else the user cache directory: :func:`trim_env.paths.cache_dir`).
CACHE_DIR = cache_dir()


def default_recipe() -> dict[str, Any]:
    """The default-data recipe: ``CACHE_DIR/default.json`` if present, else the one shipped with trim."""
    return json.loads(recipe_file(CACHE_DIR).read_text())


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
        preset=recipe["source"]["preset"],
        n_queries=recipe["n_queries"],
        seed=recipe["source"]["seed"],
        max_strong_steps=recipe["max_strong_steps"],
        node_budget=recipe["node_budget"],
        test_fraction=recipe["test_fraction"],
    )
    for split, expected in recipe["content_digest"].items():
        actual = content_digest(load_split(scratch, split))
        if actual != expected:
            shutil.rmtree(scratch, ignore_errors=True)
            raise TreeFormatError(
                f"{recipe_file(CACHE_DIR)}: regenerated split {split!r} has digest {actual[:12]}…, "
                f"the recipe expects {expected[:12]}…; the simulator or its preset changed since the recipe was written"
            )
    try:
        os.rename(scratch, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def resolve_dataset_dir(path: str | Path | None) -> Path:
    """The local dataset directory that ``data.path`` names.

    :param path: ``None`` (the default data, generated on first use), ``hf://datasets/OWNER/NAME[@REVISION][/SUBDIR]``
        (fetched into the Hugging Face cache; grown nodes are then persisted beside it in the cache
        unless ``persist=False``), or a local directory.
    :raises FileNotFoundError: a Hub dataset that cannot be fetched (see :func:`trim_env.hf.download_hub_dataset`).
    """
    if path is None:
        return default_dataset_dir()
    if is_hub_path(path):
        return download_hub_dataset(str(path))
    return Path(path)


def source_from_manifest(manifest: dict[str, Any]) -> TreeSource | None:
    """The source that can grow a dataset, from its manifest: the simulator it was drawn from, or
    ``None`` for a real collection (its servers must be given explicitly, :func:`growth_source`)."""
    source = manifest.get("source", {})
    if source.get("kind") == "simulator":
        return SimulatorSource(SimulatorParams.from_dict(source["params"]))
    return None


def growth_source(path: str | Path | None, backends: Mapping[str, Any] | None) -> TreeSource | None:
    """The real-model source that grows a collected dataset (``data.backends``), or ``None`` without backends.

    Build it once per run and pass it to every split the run opens: its token budget is the run's.

    :param path: the collected dataset's directory (or Hub path, :func:`resolve_dataset_dir`).
    :param backends: ``weak``, ``strong``, ``prm`` backend configs and the growth settings
        (:func:`trim_env.sources.growth.backend_source`); ``None``: no real-model source (a
        collected dataset then opens frozen).
    """
    if backends is None:
        return None
    if path is None:
        raise ValueError(
            "data.backends grows a collected dataset: give its directory as data.path "
            "(the default data is simulated and grows from its simulator)"
        )
    from trim_env.sources.growth import backend_source  # noqa: PLC0415  (HTTP clients and torch models only when used)

    return backend_source(resolve_dataset_dir(path), backends)


def open_split(
    directory: str | Path,
    split: str = "test",
    grow: bool = True,
    persist: bool = True,
    source: TreeSource | None = None,
    verify_hash: bool = True,
) -> RolloutTrees:
    """One split of a dataset directory: its stored nodes plus everything grown before, growing on demand.

    :param directory: the dataset directory.
    :param split: which split.
    :param grow: grow missing children from the source; ``False`` opens the split frozen (cap
        semantics: past the stored nodes the weak model plays on).
    :param persist: write grown nodes to ``<split>/growth/`` (append-only shards).
    :param source: where missing children come from; default the manifest's simulator. A real
        collection has no default source and opens frozen unless its backends are given here.
    :param verify_hash: check file hashes (dataset files against the manifest, shards against their names).
    """
    directory = Path(directory)
    base = load_split(directory, split, verify_hash)
    journal = GrowthJournal(directory / split)
    shards = journal.read(verify_hash)
    if source is None and grow:
        source = source_from_manifest(read_manifest(directory))
    growing = grow and source is not None
    if grow and source is not None:
        source.check_split(base, str(directory / split))
    if not growing and shards is None:
        return base
    store = GrowingTrees(
        base,
        source if growing else None,
        journal if growing and persist else None,
        max_strong_steps=None if growing else base.max_strong_steps,
        frozen=not growing,
    )
    if shards is not None:
        store.attach(shards, str(journal.directory))
        if not growing:
            store.prune_dangling()
    return store


def load_trees(
    path: str | None = None,
    split: str = "test",
    preset: str | None = None,
    seed: int = 0,
    n_queries: int = 500,
    overrides: dict[str, Any] | None = None,
    grow: bool = True,
    persist: bool = True,
    source: TreeSource | None = None,
) -> RolloutTrees:
    """Trees for evaluation or training.

    :param path: a dataset directory or Hub path (:func:`resolve_dataset_dir`); ``None`` means the
        default data (unless ``preset`` is set).
    :param split: which split of the dataset (with ``preset``: which query population of the
        preset, so ``split="test"`` never simulates the train split's queries).
    :param preset: evaluate through the simulator directly (lazy, uncapped) instead of a dataset.
    :param seed: simulator seed when ``preset`` is set.
    :param n_queries: number of simulated queries when ``preset`` is set.
    :param overrides: simulator parameter overrides when ``preset`` is set.
    :param grow: grow missing children from the dataset's source (see :func:`open_split`).
    :param persist: persist grown nodes in the dataset directory.
    :param source: where missing children come from (a collected dataset's backends,
        :func:`growth_source`); default the dataset's simulator.
    """
    if preset is not None:
        if path is not None:
            raise ValueError(f"give either data.path ({path}) or data.preset ({preset}), not both")
        if source is not None:
            raise ValueError(f"data.preset ({preset}) is simulated directly: it takes no data.backends")
        params = SimulatorParams.preset(preset, **(overrides or {}))
        return SimulatedTrees(params, seed, np.arange(n_queries), namespace=f"{preset}/{split}")
    return open_split(resolve_dataset_dir(path), split, grow=grow, persist=persist, source=source)
