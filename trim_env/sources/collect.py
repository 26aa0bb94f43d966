"""Rollout collection with real models: every problem's tree, resumable, written in the rollout-tree format.

:func:`collect` runs :func:`~trim_env.sources.query_tree.collect_query` for each problem (several
in flight at once: their calls overlap, batched locally or sent concurrently over HTTP), writes each
finished query as a record (:mod:`trim_env.sources.records`), and at the end of every run
assembles the dataset from the records (:func:`build_trees`; ``manifest.json`` last) and a summary
of calls and tokens (``collection_summary.json``, written atomically).

Resuming: a run killed at any moment loses only the queries in flight; restarted with the same
settings and problems it skips the finished ones. ``OUT/collect.json`` pins the settings and each
problem's id and content: a restart with other settings, or with a problems file that changed
(edited, reordered, grown or shrunk), is refused. A second collector on the same directory is
refused while the first runs (``OUT/.lock``).

Sharding: with ``shard`` (:class:`~trim_env.sources.problems.Shard`, ``problems.shard=i/n``) a run
collects only its share of the problems into ``OUT/shards/i-of-n/`` (records, pins and summary as
above, no dataset); the pins hold the whole problem list and the dataset's provenance, so
:func:`merge_shards` writes the dataset of all shards into ``OUT`` without the problems file or the
models, with the same train/test assignment and bytes as an unsharded run.

Progress is reported through :mod:`logging` (logger ``trim_env.sources.collect``) and, when
asked, a progress bar. :class:`CollectionConfig` is ``conf/collect.yaml`` typed, and
:func:`run_collection` runs a whole collection from it (what ``scripts/collect_rollouts.py`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from trim_env.atomic import DirectoryLock, write_json
from trim_env.sources.base import PRMScorer, StepGenerator
from trim_env.sources.factory import BackendSettings, build_backends
from trim_env.sources.problems import Problem, ProblemsSettings, Shard, load_problems
from trim_env.sources.query_tree import (
    ANCHOR_FIELDS,
    CollectSettings,
    QueryTree,
    collect_query,
)
from trim_env.sources.records import LOCK_FILE, SETTINGS_FILE, RecordStore, pin_run
from trim_env.tree import (
    MANIFEST,
    MAX_STEPS,
    NODE_INDEX,
    NODE_SCHEMA,
    QUERY_COLUMNS,
    QUERY_INDEX,
    TEXT,
    UNKNOWN_STATE,
    Column,
    RolloutTrees,
    save_dataset,
)

SUMMARY_FILE = "collection_summary.json"
#: ``OUT/shards/<i>-of-<n>/``: where shard i of n collects.
SHARDS = "shards"
#: Written by :func:`merge_shards` before the dataset: which shards it was merged from.
MERGED_FILE = "merged_shards.json"

logger = logging.getLogger(__name__)


def build_trees(queries: Sequence[QueryTree], max_strong_steps: int) -> RolloutTrees:
    """One split of :class:`~trim_env.tree.RolloutTrees` from collected queries (nodes renumbered).

    Node columns follow the tree schema (:data:`~trim_env.tree.NODE_SCHEMA`): index columns are
    shifted by each query's first node, the hidden state is unknown; collected queries carry no
    query-level features. Prompt tokens are recorded when every query has them (a backend that
    does not report them leaves the split without, noted in the log).
    """
    counts = [query.num_nodes for query in queries]
    offsets = np.cumsum([0, *counts])

    def node_column(column: Column) -> Any:
        if column.role == QUERY_INDEX:
            return np.repeat(np.arange(len(queries)), counts).astype(column.numpy_dtype)
        if column.name == "hidden_state":
            return np.full(int(offsets[-1]), UNKNOWN_STATE, dtype=column.numpy_dtype)
        if column.role == TEXT:
            return [value for query in queries for value in getattr(query, column.name)]
        parts = [np.asarray(getattr(query, column.name)) for query in queries]
        if column.role == NODE_INDEX:
            parts = [np.where(part >= 0, part + offset, -1) for part, offset in zip(parts, offsets)]
        return np.concatenate(parts).astype(column.numpy_dtype) if queries else np.zeros(0, column.numpy_dtype)

    def anchor(run: str, position: int, name: str) -> np.ndarray:
        return np.array([getattr(query, run)[position] for query in queries], dtype=QUERY_COLUMNS[name].to_pandas_dtype())

    unknown = sum(query.prompt_tokens is None for query in queries)
    if unknown:
        logger.warning("%d of %d collected queries have no prompt token count (the weak backend did not report "
                       "usage.prompt_tokens): the split is written without prompt_tokens", unknown, len(queries))
    prompt_tokens = None if unknown else np.array([query.prompt_tokens for query in queries], dtype=np.int64)
    columns: dict[str, Any] = {column.name: node_column(column) for column in NODE_SCHEMA}
    columns.update({f"{run}_{what}": anchor(run, position, f"{run}_{what}")
                    for run in ("weak_only", "strong_only") for position, what in enumerate(ANCHOR_FIELDS)})
    return RolloutTrees(
        **columns,
        query_id=[query.problem.query_id for query in queries],
        root=offsets[:-1].astype(np.int32),
        level=np.array([query.problem.level for query in queries], dtype=np.int8),
        features=np.zeros((len(queries), 0), dtype=np.float32),
        problem=[query.problem.problem for query in queries],
        answer=[query.problem.answer for query in queries],
        prompt_tokens=prompt_tokens,
        max_strong_steps=max_strong_steps,
    )


def split_indices(n: int, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Problem indices of the train and test splits (a seeded permutation; both non-empty for n >= 2)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction = {test_fraction} must be strictly between 0 and 1")
    if n < 2:
        raise ValueError(f"{n} problem(s): a dataset needs at least 2 (a train and a test split)")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    return {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}


def summarize(queries: Sequence[QueryTree], names: dict[str, str]) -> dict[str, Any]:
    """Totals over collected queries: calls and decoded tokens per model, nodes, naive call counts."""
    total = lambda key: float(sum(query.stats.get(key, 0) for query in queries))  # noqa: E731
    n = max(len(queries), 1)
    return {
        "queries": len(queries),
        "nodes": int(sum(query.num_nodes for query in queries)),
        "weak": {"model": names["weak"], "calls": int(total("weak_calls")), "decoded_tokens": int(total("weak_tokens"))},
        "strong": {"model": names["strong"], "calls": int(total("strong_calls")), "decoded_tokens": int(total("strong_tokens"))},
        "prm": {"model": names["prm"], "calls": int(total("prm_calls")), "naive_calls": int(total("naive_prm_calls"))},
        "generator_calls_per_query": (total("weak_calls") + total("strong_calls")) / n,
        "naive_generator_calls_per_query": total("naive_calls") / n,
        "weak_only_accuracy": float(np.mean([query.weak_only[0] for query in queries])) if queries else None,
        "strong_only_accuracy": float(np.mean([query.strong_only[0] for query in queries])) if queries else None,
    }


async def collect(
    problems: Sequence[Problem],
    weak: StepGenerator,
    strong: StepGenerator,
    prm: PRMScorer,
    settings: CollectSettings,
    out: str | Path,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    source: dict[str, Any] | None = None,
    concurrent_queries: int = 4,
    progress_bar: bool = True,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Collect every problem's tree into ``out`` (resuming a killed run) and write the dataset.

    :param problems: the problem set.
    :param weak: the weak model.
    :param strong: the strong model.
    :param prm: the process reward model.
    :param settings: K, max steps and seed.
    :param out: output directory: records, then the dataset (``manifest.json``, ``train/``, ``test/``).
    :param test_fraction: share of problems in the test split.
    :param split_seed: seed of the train/test assignment.
    :param source: extra provenance for the manifest (merged with the backends' descriptions).
    :param concurrent_queries: queries in flight at once (their levels' calls overlap).
    :param progress_bar: show a progress bar with ETA.
    :param shard: collect only this shard of ``problems`` into ``out/shards/i-of-n`` and write no
        dataset (:func:`merge_shards` writes it from all shards); ``None``: every problem.
    :returns: the summary (also written to ``collection_summary.json`` in the directory collected into).
    """
    out = Path(out)
    splits = split_indices(len(problems), test_fraction, split_seed)  # over the whole set, sharded or not
    directory = out if shard is None else shard_directory(out, shard)
    with DirectoryLock(directory, "a collector", LOCK_FILE):
        return await _collect_locked(problems, weak, strong, prm, settings, directory, splits, test_fraction, split_seed,
                                     source or {}, concurrent_queries, progress_bar, shard)


def shard_directory(out: str | Path, shard: Shard) -> Path:
    """Where ``shard`` of the collection into ``out`` collects: ``out/shards/i-of-n``."""
    return Path(out) / SHARDS / shard.name


async def _collect_locked(
    problems: Sequence[Problem],
    weak: StepGenerator,
    strong: StepGenerator,
    prm: PRMScorer,
    settings: CollectSettings,
    out: Path,
    splits: dict[str, np.ndarray],
    test_fraction: float,
    split_seed: int,
    source: dict[str, Any],
    concurrent_queries: int,
    progress_bar: bool,
    shard: Shard | None,
) -> dict[str, Any]:
    """:func:`collect` once ``out`` (the shard's directory for a shard) is locked by this process."""
    pinned: dict[str, Any] = {
        "settings": asdict(settings),
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "weak": weak.describe(),
        "strong": strong.describe(),
        "prm": prm.describe(),
    }
    manifest_source = {"kind": "collected", **source, **{key: pinned[key] for key in ("weak", "strong", "prm")},
                       "max_steps": settings.max_steps, "seed": settings.seed, "test_fraction": test_fraction}
    if shard is not None:  # what merge_shards checks across shards and writes into the manifest
        pinned.update(shard=str(shard), manifest_source=manifest_source)
    pin_run(out, pinned, problems)
    store = RecordStore(out)
    done = store.done()
    positions = range(len(problems)) if shard is None else shard.positions(len(problems))
    todo = [index for index in positions if index not in done]
    logger.info("collecting %d of %d problems into %s (%d already done)", len(todo), len(positions), out, len(positions) - len(todo))
    semaphore = asyncio.Semaphore(max(1, concurrent_queries))
    run_started, run_tokens, run_nodes = time.perf_counter(), 0, 0

    async def one(index: int) -> tuple[int, QueryTree]:
        async with semaphore:
            return index, await collect_query(problems[index], weak, strong, prm, settings)

    bar = tqdm(total=len(positions), initial=len(positions) - len(todo), desc="queries", unit="query", disable=not progress_bar)
    tasks = [asyncio.ensure_future(one(index)) for index in todo]
    try:
        for finished in asyncio.as_completed(tasks):
            index, tree = await finished
            store.write(index, tree)
            run_tokens += int(tree.stats["weak_tokens"] + tree.stats["strong_tokens"])
            run_nodes += tree.num_nodes
            elapsed = time.perf_counter() - run_started
            bar.set_postfix(tok_s=f"{run_tokens / elapsed:.0f}", nodes_min=f"{60 * run_nodes / elapsed:.0f}")
            bar.update()
            logger.info("query %s done: %d nodes, %d decoded tokens (%d/%d)", tree.problem.query_id, tree.num_nodes,
                        int(tree.stats["weak_tokens"] + tree.stats["strong_tokens"]), bar.n, len(positions))
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    elapsed = time.perf_counter() - run_started
    queries = [store.read(index, problems[index]) for index in positions]
    if shard is None:
        write_dataset(out, queries, splits, settings.max_strong_steps, manifest_source)
    summary = {
        **summarize(queries, {role: pinned[role]["name"] for role in ("weak", "strong", "prm")}),
        "this_run": {"queries": len(todo), "seconds": elapsed, "decoded_tokens": run_tokens, "nodes": run_nodes,
                     "tokens_per_s": run_tokens / elapsed if elapsed else 0.0,
                     "nodes_per_minute": 60 * run_nodes / elapsed if elapsed else 0.0},
    }
    if shard is not None:
        summary["shard"] = str(shard)
    write_json(out / SUMMARY_FILE, summary)
    logger.info("wrote %s to %s: %d queries, %d nodes", "the dataset" if shard is None else f"shard {shard}", out,
                summary["queries"], summary["nodes"])
    return summary


def write_dataset(
    out: Path, queries: Sequence[QueryTree], splits: dict[str, np.ndarray], max_strong_steps: int, manifest_source: dict[str, Any]
) -> None:
    """Write the dataset of every problem's tree (``queries`` in problem order) into ``out``, ``manifest.json`` last.

    Prompt tokens are written for every split or for none (a dataset's schema is one version).
    """
    trees = {name: build_trees([queries[i] for i in indices], max_strong_steps) for name, indices in splits.items()}
    if any(split.prompt_tokens is None for split in trees.values()):
        trees = {name: dataclasses.replace(split, prompt_tokens=None) for name, split in trees.items()}
    save_dataset(out, trees, manifest_source, max_strong_steps, None, overwrite=True)


def merge_shards(out: str | Path) -> dict[str, Any]:
    """Write the dataset of a sharded collection into ``out`` from its finished shards in ``out/shards/``.

    The shards must be every shard of one split (``0/n`` .. ``n-1/n``, each once), collected with
    the same settings, backends and problems; each must be complete. The dataset (splits,
    manifest and summary) is the one an unsharded run of the same settings writes, byte for byte:
    the records, the whole problem list, the split seed and the manifest's provenance come from the
    shards' pins. Merging again (e.g. after a shard was re-run) replaces a merged dataset; a dataset
    in ``out`` that no merge wrote is refused.

    :param out: the ``out`` the shards were collected with.
    :returns: the summary of the merged dataset (also written to ``out/collection_summary.json``).
    :raises ValueError: a shard is missing, duplicated, incomplete or collected with other settings or problems (naming it).
    :raises FileExistsError: ``out`` holds a dataset that no merge wrote.
    """
    out = Path(out)
    with DirectoryLock(out, "a collector or a merge", LOCK_FILE), contextlib.ExitStack() as locks:
        shards, pins = _read_shards(out)
        for directory in shards.values():  # a shard still being collected is refused
            locks.enter_context(DirectoryLock(directory, "a collector", LOCK_FILE))
        if (out / MANIFEST).exists() and not (out / MERGED_FILE).exists():
            raise FileExistsError(f"{out / MANIFEST} exists but {out / MERGED_FILE} does not: {out} holds a dataset no merge wrote")
        problems = pins["problems"]
        queries: dict[int, QueryTree] = {}
        for shard, directory in shards.items():
            store = RecordStore(directory)
            missing = [index for index in shard.positions(len(problems)) if index not in store.done()]
            if missing:
                raise ValueError(
                    f"{directory}: shard {shard} is incomplete: {len(missing)} of its {len(shard.positions(len(problems)))} "
                    f"problems are not collected (first: {problems[missing[0]][0]!r}); run it again with the same settings, "
                    "it resumes"
                )
            for index in shard.positions(len(problems)):
                queries[index] = store.read_pinned(index, problems[index])
        collected = [queries[index] for index in range(len(problems))]
        max_strong_steps = pins["settings"]["max_strong_steps"]
        write_json(out / MERGED_FILE, {"shards": {str(shard): str(directory) for shard, directory in shards.items()}}, durable=True)
        write_dataset(out, collected, split_indices(len(problems), pins["test_fraction"], pins["split_seed"]), max_strong_steps,
                      pins["manifest_source"])
        summary = {**summarize(collected, {role: pins[role]["name"] for role in ("weak", "strong", "prm")}),
                   "shards": [str(shard) for shard in shards]}
        write_json(out / SUMMARY_FILE, summary)
    logger.info("merged %d shards into %s: %d queries, %d nodes", len(shards), out, summary["queries"], summary["nodes"])
    return summary


def _read_shards(out: Path) -> tuple[dict[Shard, Path], dict[str, Any]]:
    """Every shard directory of ``out/shards`` by its shard (all ``0/n`` .. ``n-1/n``, in order), and their common pins."""
    root = out / SHARDS
    directories = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if not directories:
        raise FileNotFoundError(f"{root}: no shard directories; collect every shard first (problems.shard=i/n with out={out})")
    found: list[tuple[Shard, Path, dict[str, Any]]] = []
    for directory in directories:
        path = directory / SETTINGS_FILE
        if not path.is_file():
            raise ValueError(f"{directory}: no {SETTINGS_FILE}, so it is not a shard a collector started; remove it from {root}")
        try:
            pins = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); this shard cannot be checked, collect it again") from error
        if "shard" not in pins or "manifest_source" not in pins:
            raise ValueError(f"{path}: no field 'shard': {directory} holds an unsharded collection, not a shard")
        found.append((Shard.parse(pins.pop("shard")), path, pins))
    first_shard, first_path, first_pins = found[0]
    shards: dict[Shard, Path] = {}
    for shard, path, pins in found:
        if shard in shards:
            raise ValueError(f"shard {shard} was collected twice, into {shards[shard]} and {path.parent}; keep one of them")
        if shard.count != first_shard.count:
            raise ValueError(
                f"{path}: shard {shard} is one of {shard.count} shards, but {first_path} is one of {first_shard.count}; "
                "merge the shards of one split only"
            )
        _check_same_pins(first_path, first_pins, path, pins)
        shards[shard] = path.parent
    count = first_shard.count
    missing = [str(Shard(index, count)) for index in range(count) if Shard(index, count) not in shards]
    if missing:
        present = ", ".join(str(shard) for shard in sorted(shards, key=lambda shard: shard.index))
        raise ValueError(
            f"{root}: shard(s) {', '.join(missing)} of {count} missing (found {present}); "
            f"collect them with the same settings (problems.shard={missing[0]} out={out})"
        )
    return dict(sorted(shards.items(), key=lambda item: item[0].index)), first_pins


def _check_same_pins(first_path: Path, first_pins: dict[str, Any], path: Path, pins: dict[str, Any]) -> None:
    """Refuse a shard pinned with other settings, backends or problems than the first shard: name the field."""
    for key in sorted(set(first_pins) | set(pins)):
        if first_pins.get(key) == pins.get(key):
            continue
        if key == "problems":
            before, now = first_pins.get(key) or [], pins.get(key) or []
            position = next((i for i, (a, b) in enumerate(zip(before, now)) if a != b), min(len(before), len(now)))
            raise ValueError(
                f"{path}: the shard's problems differ from {first_path}'s ({len(now)} and {len(before)} problems; first "
                f"difference at position {position}): the shards were collected from different problem files; collect every "
                "shard from the same problems"
            )
        raise ValueError(
            f"{path}: field {key!r} differs from {first_path}'s ({pins.get(key)!r} here, {first_pins.get(key)!r} there): "
            "the shards were collected with different settings; collect every shard with the same settings"
        )


@dataclass
class CollectionConfig:
    """A whole collection, typed (``conf/collect.yaml``).

    :param out: output directory: records, then the dataset.
    :param problems: where the problems come from.
    :param backends: the weak and strong models, the PRM, the per-step token limit, CPU threads.
    :param max_strong_steps: K, the cap on strong steps per path.
    :param max_steps: a path ends after this many steps.
    :param test_fraction: share of problems in the test split.
    :param split_seed: seed of the train/test assignment.
    :param seed: root of the per-request sampling seeds.
    :param concurrent_queries: queries in flight at once.
    :param progress_bar: show a progress bar.
    """

    out: str
    backends: BackendSettings
    problems: ProblemsSettings = field(default_factory=ProblemsSettings)
    max_strong_steps: int = 2
    max_steps: int = MAX_STEPS
    test_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0
    concurrent_queries: int = 4
    progress_bar: bool = True

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> CollectionConfig:
        """Read a plain mapping of ``conf/collect.yaml`` (``OmegaConf.to_container(cfg, resolve=True)``)."""
        fields = {key: value for key, value in config.items() if key not in ("weak", "strong", "prm", "max_tokens_per_step",
                                                                              "torch_threads", "problems", "hydra")}
        return cls(backends=BackendSettings.from_mapping(config), problems=ProblemsSettings(**config.get("problems", {})), **fields)


async def run_collection(config: CollectionConfig) -> dict[str, Any]:
    """Load the problems and the backends ``config`` names, collect (one shard with ``problems.shard``), and close the backends; the summary."""
    shard = Shard.parse(config.problems.shard) if config.problems.shard is not None else None
    problems = load_problems(config.problems)
    weak, strong, prm = build_backends(config.backends)
    source = {"problems": {key: getattr(config.problems, key) for key in ("bundled", "path", "dataset", "split", "limit", "offset")},
              "max_tokens_per_step": config.backends.max_tokens_per_step}
    try:
        return await collect(problems, weak, strong, prm, CollectSettings(config.max_strong_steps, config.max_steps, config.seed),
                             config.out, test_fraction=config.test_fraction, split_seed=config.split_seed, source=source,
                             concurrent_queries=config.concurrent_queries, progress_bar=config.progress_bar, shard=shard)
    finally:
        for backend in (weak, strong, prm):
            await backend.aclose()
