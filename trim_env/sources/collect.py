"""Rollout collection with real models: expand each query's tree breadth-first and write the rollout-tree format.

For each problem the collector grows the tree of :mod:`trim_env.tree`: at every non-terminal node
the weak model proposes the next step (the W child) and, while the path holds fewer than K strong
steps, the strong model rewrites it (the S child); the weak model then goes on from either prefix.
A path ends when the model ends its answer or at ``max_steps``; terminal nodes are graded with
math-verify. Nodes are stored breadth-first (:meth:`QueryTree.sort_breadth_first`).

Work is shared, never repeated:

- a node's W child, its W child and so on down to the end are one weak rollout, so the weak model
  is called once per *chain* (from the root and from each S child), not once per node
  (:meth:`~trim_env.sources.base.StepGenerator.rollout`: one call where the backend can); each
  strong rewrite is one call; no prefix is expanded twice; concurrent chains of all queries in
  flight are batched together (locally) or sent concurrently (HTTP);
- the weak-only run *is* the tree's all-W path, and the strong-only run follows the all-S path
  for its first K steps, then one strong rollout finishes it; the naive count (a call per node
  plus separate step-by-step weak-only and strong-only runs) is recorded beside the real one;
- PRM scores come from one call per leaf: a causal PRM scores every step of a path in one
  forward pass, and a step's score depends only on what precedes it, so each node is scored
  within the first leaf path that holds it.

Sampling seeds are a hash of (seed, query id, path of W/S actions, model role), so a rerun draws
the same steps where the backend honours seeds.

Resumability: each finished query is written atomically to ``OUT/records/<index>.json`` (temporary
file, fsync, rename), so a run killed at any moment loses only queries in flight, and a restart
skips finished ones; the dataset (``manifest.json`` last) is assembled from the records at the end
of every run. ``OUT/collect.json`` pins the settings: a restart with other settings is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from trim_env.sources.base import (
    PRMRequest,
    PRMScorer,
    Rollout,
    StepGenerator,
    StepRequest,
    StepResult,
    solution_text,
)
from trim_env.sources.grading import grade
from trim_env.tree import MANIFEST, MAX_STEPS, UNKNOWN_STATE, RolloutTrees, save_dataset

RECORDS = "records"
SETTINGS_FILE = "collect.json"
SUMMARY_FILE = "collection_summary.json"


# ----------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One problem to collect: its id, statement, reference answer and difficulty level (0 = unknown)."""

    query_id: str
    problem: str
    answer: str
    level: int = 0


def _level(value: Any) -> int:
    """A MATH level as an int: 3, "3" or "Level 3"; 0 when absent or unreadable."""
    match = re.search(r"\d+", str(value)) if value is not None else None
    return int(match.group()) if match else 0


def load_problems(
    path: str | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    problem_field: str | None = None,
    answer_field: str = "answer",
    id_field: str | None = None,
    level_field: str = "level",
    limit: int | None = None,
    offset: int = 0,
) -> list[Problem]:
    """Problems from a JSONL file or a ``datasets`` dataset (the latter needs network or a local cache).

    :param path: a JSONL file, one record per line.
    :param dataset: a ``datasets`` name (instead of ``path``), e.g. ``HuggingFaceH4/MATH-500``.
    :param dataset_config: the dataset's configuration name, if any.
    :param split: the dataset split.
    :param problem_field: the statement's field (default: ``problem``, else ``question``).
    :param answer_field: the reference answer's field (GSM8K's ``#### n`` is understood).
    :param id_field: a field holding a unique id (default: ``<file stem>-<record index>``).
    :param level_field: the difficulty level's field (missing: level 0).
    :param limit: keep at most this many problems (after ``offset``).
    :param offset: skip this many records first.
    """
    if (path is None) == (dataset is None):
        raise ValueError("give exactly one of problems.path (a JSONL file) or problems.dataset (a datasets name)")
    if path is not None:
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"problems.path = {path}: no such file")
        records = []
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{source}:{number}: not a JSON record ({error})") from error
        name = source.stem if source.stem not in ("test", "train") else f"{source.parent.name}-{source.stem}"
    else:
        import datasets  # noqa: PLC0415  (only for hub datasets)

        records = list(datasets.load_dataset(dataset, dataset_config, split=split))
        name = f"{str(dataset).rsplit('/', 1)[-1]}-{split}"
    problems = []
    for index in range(offset, len(records) if limit is None else min(len(records), offset + limit)):
        record = records[index]
        where = f"{path or dataset}: record {index}"
        key = problem_field or ("problem" if "problem" in record else "question")
        for wanted in (key, answer_field):
            if wanted not in record:
                raise ValueError(f"{where} has no field {wanted!r} (fields: {sorted(record)})")
        query_id = str(record[id_field]) if id_field else f"{name}-{index:05d}"
        problems.append(Problem(query_id, str(record[key]), str(record[answer_field]), _level(record.get(level_field))))
    if len({problem.query_id for problem in problems}) != len(problems):
        raise ValueError(f"problems.id_field = {id_field!r} does not give unique ids")
    return problems


# ----------------------------------------------------------------------------------------------
# One query's tree


@dataclass(frozen=True)
class CollectSettings:
    """How trees are grown.

    :param max_strong_steps: K, the cap on strong steps per path.
    :param max_steps: a path ends after this many steps (at most the env's 30).
    :param seed: root of the per-request sampling seeds.
    """

    max_strong_steps: int
    max_steps: int = MAX_STEPS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_strong_steps < 0:
            raise ValueError(f"max_strong_steps = {self.max_strong_steps} must be >= 0")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps = {self.max_steps} must be in [1, {MAX_STEPS}] (the router's observation holds {MAX_STEPS} steps)")


@dataclass
class QueryTree:
    """One query's collected tree as node lists (breadth-first, parent < child) plus its anchor runs and costs."""

    problem: Problem
    parent: list[int] = field(default_factory=list)
    weak_child: list[int] = field(default_factory=list)
    strong_child: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    strong_steps: list[int] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    step_prm: list[float] = field(default_factory=list)
    step_is_strong: list[bool] = field(default_factory=list)
    terminal: list[bool] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    step_text: list[str | None] = field(default_factory=list)
    #: (correct, tokens, steps) of the weak-only and strong-only runs.
    weak_only: tuple[int, int, int] = (0, 0, 0)
    strong_only: tuple[int, int, int] = (0, 0, 0)
    #: Calls, tokens and time this query cost.
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    def add(self, parent: int, step: StepResult | None, is_strong: bool, terminal: bool) -> int:
        """Append a node (``step`` None: the root); returns its index."""
        root = parent < 0
        self.parent.append(parent)
        self.weak_child.append(-1)
        self.strong_child.append(-1)
        self.depth.append(0 if root else self.depth[parent] + 1)
        self.strong_steps.append(0 if root else self.strong_steps[parent] + int(is_strong))
        self.step_tokens.append(0 if step is None else step.tokens)
        self.step_prm.append(1.0)  # the root's score is 1.0 by convention; steps are scored later
        self.step_is_strong.append(is_strong)
        self.terminal.append(terminal)
        self.correct.append(-1)
        self.step_text.append(None if step is None else step.text)
        node = self.num_nodes - 1
        if not root:
            if is_strong:
                self.strong_child[parent] = node
            else:
                self.weak_child[parent] = node
        return node

    def path(self, node: int) -> list[int]:
        """Nodes from the first step to ``node``."""
        nodes = []
        while self.parent[node] >= 0:
            nodes.append(node)
            node = self.parent[node]
        return nodes[::-1]

    def texts(self, node: int) -> tuple[str, ...]:
        return tuple(self.step_text[n] or "" for n in self.path(node))

    def actions(self, node: int) -> str:
        """The node's path as W/S letters (the key of its sampling seeds)."""
        return path_actions(self.step_is_strong[n] for n in self.path(node))

    def sort_breadth_first(self) -> None:
        """Renumber nodes level by level, each level in the order of the paths (W before S).

        Chains grow concurrently, so nodes are created in an order that depends on timing; this
        canonical order makes the tree independent of it.
        """
        keys = [self.actions(node).replace("W", "0").replace("S", "1") for node in range(self.num_nodes)]
        order = sorted(range(self.num_nodes), key=lambda node: (self.depth[node], keys[node]))
        new_id = {old: new for new, old in enumerate(order)}
        new_id[-1] = -1
        for name in ("parent", "weak_child", "strong_child"):
            setattr(self, name, [new_id[getattr(self, name)[old]] for old in order])
        for name in ("depth", "strong_steps", "step_tokens", "step_prm", "step_is_strong", "terminal", "correct", "step_text"):
            values = getattr(self, name)
            setattr(self, name, [values[old] for old in order])

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "problem": asdict(self.problem)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> QueryTree:
        tree = cls(**{**record, "problem": Problem(**record["problem"])})
        tree.weak_only, tree.strong_only = tuple(record["weak_only"]), tuple(record["strong_only"])  # type: ignore[assignment]
        return tree


def request_seed(seed: int, query_id: str, actions: str) -> int:
    """The sampling seed of the step after path ``actions`` by the model of its last letter."""
    digest = hashlib.sha256(f"{seed}/{query_id}/{actions}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # 31 bits: every server takes it


def path_actions(step_is_strong: Iterable[bool]) -> str:
    """A path as W/S letters, one per step (S: the strong model wrote it): the key of sampling seeds."""
    return "".join("S" if is_strong else "W" for is_strong in step_is_strong)


def step_request(problem: str, query_id: str, steps: Sequence[str], actions: str, seed: int) -> StepRequest:
    """The request for the step after ``steps``, as collection sends it.

    :param problem: the problem statement.
    :param query_id: the query's id (a key of the seed).
    :param steps: the prefix's step texts.
    :param actions: the prefix's path letters followed by the letter of the model asked (W or S).
    :param seed: the root of the sampling seeds (``CollectSettings.seed``).
    """
    return StepRequest(problem, tuple(steps), request_seed(seed, query_id, actions))


def ends_path(step: StepResult, depth: int, max_steps: int) -> bool:
    """Whether ``step``, written at ``depth`` (1 = the first step), ends its path: the model ended its
    answer, or the path holds ``max_steps`` steps."""
    return step.ends_solution or depth >= max_steps


async def collect_query(
    problem: Problem, weak: StepGenerator, strong: StepGenerator, prm: PRMScorer, settings: CollectSettings
) -> QueryTree:
    """Grow, score and grade one query's tree and its weak-only / strong-only runs.

    :param problem: the problem.
    :param weak: the weak model.
    :param strong: the strong model.
    :param prm: the process reward model.
    :param settings: K, max steps and seed.
    """
    started = time.perf_counter()
    tree = QueryTree(problem)
    tree.add(-1, None, False, False)
    stats: dict[str, float] = {"weak_calls": 0, "strong_calls": 0, "weak_tokens": 0, "strong_tokens": 0, "prm_calls": 0}

    def request(node: int, letter: str) -> StepRequest:
        return step_request(problem.problem, problem.query_id, tree.texts(node), tree.actions(node) + letter, settings.seed)

    def count(role: str, rollouts: Sequence[Rollout]) -> None:
        stats[f"{role}_calls"] += sum(rollout.calls for rollout in rollouts)
        stats[f"{role}_tokens"] += sum(rollout.decoded_tokens for rollout in rollouts)

    def attach(parent: int, step: StepResult, is_strong: bool) -> int:
        return tree.add(parent, step, is_strong, ends_path(step, tree.depth[parent] + 1, settings.max_steps))

    async def grow(start: int) -> None:
        """The weak model's rollout from ``start`` (its chain of W children), then the strong rewrites along it."""
        (rollout,) = await weak.rollout([request(start, "W")], [settings.max_steps - tree.depth[start]])
        count("weak", [rollout])
        chain = [start]
        for step in rollout.steps:
            chain.append(attach(chain[-1], step, False))
        branches = [node for node in chain if not tree.terminal[node] and tree.strong_steps[node] < settings.max_strong_steps]
        rewrites = await strong.generate([request(node, "S") for node in branches])
        count("strong", [Rollout([step], step.tokens, 1) for step in rewrites])
        starts = [node for node in (attach(parent, step, True) for parent, step in zip(branches, rewrites)) if not tree.terminal[node]]
        if not tree.terminal[chain[-1]]:
            starts.append(chain[-1])  # the rollout stopped at a truncated step: go on from it
        await asyncio.gather(*(grow(node) for node in starts))

    await grow(0)
    tree.sort_breadth_first()
    for node in range(tree.num_nodes):
        if tree.terminal[node]:
            tree.correct[node] = int(grade(solution_text(tree.texts(node)), problem.answer))

    async def strong_only() -> tuple[int, int, int]:
        """The all-S path of the tree, continued by a strong rollout past the cap K."""
        node = 0
        while tree.strong_child[node] >= 0:
            node = tree.strong_child[node]
        steps = list(tree.texts(node))
        tokens = sum(tree.step_tokens[n] for n in tree.path(node))
        if tree.terminal[node]:
            return tree.correct[node], tokens, len(steps)
        while len(steps) < settings.max_steps:
            request_all_strong = step_request(problem.problem, problem.query_id, steps, "S" * (len(steps) + 1), settings.seed)
            (rollout,) = await strong.rollout([request_all_strong], [settings.max_steps - len(steps)])
            count("strong", [rollout])
            steps += [step.text for step in rollout.steps]
            tokens += sum(step.tokens for step in rollout.steps)
            if rollout.steps[-1].ends_solution:
                break
        return int(grade(solution_text(steps), problem.answer)), tokens, len(steps)

    async def score() -> None:
        """Score every node within the first leaf path holding it (one PRM call per such leaf)."""
        scored = np.zeros(tree.num_nodes, dtype=bool)
        scored[0] = True
        jobs: list[list[int]] = []
        for leaf in range(tree.num_nodes):
            path = tree.path(leaf) if tree.terminal[leaf] else []
            if path and not scored[path].all():
                jobs.append(path)
                scored[path] = True
        results = await prm.score([PRMRequest(problem.problem, tuple(tree.step_text[n] or "" for n in path)) for path in jobs])
        stats["prm_calls"] += len(jobs)
        assigned = np.zeros(tree.num_nodes, dtype=bool)
        for path, scores in zip(jobs, results):
            for node, value in zip(path, scores):
                if not assigned[node]:
                    tree.step_prm[node] = value
                    assigned[node] = True

    tree.strong_only, _ = await asyncio.gather(strong_only(), score())
    leaf = 0
    while tree.weak_child[leaf] >= 0:
        leaf = tree.weak_child[leaf]
    tree.weak_only = (tree.correct[leaf], sum(tree.step_tokens[n] for n in tree.path(leaf)), tree.depth[leaf])
    stats["naive_calls"] = tree.num_nodes - 1 + tree.weak_only[2] + tree.strong_only[2]
    stats["naive_prm_calls"] = tree.num_nodes - 1
    stats["seconds"] = time.perf_counter() - started
    tree.stats = stats
    return tree


# ----------------------------------------------------------------------------------------------
# Records on disk and the dataset


class RecordStore:
    """Finished queries as ``records/<index>.json``, each written atomically.

    :param directory: the collection's output directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory) / RECORDS
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(".*.tmp"):  # from a run killed mid-write
            leftover.unlink(missing_ok=True)

    def path(self, index: int) -> Path:
        return self.directory / f"{index:06d}.json"

    def done(self) -> set[int]:
        """Indices of finished queries."""
        return {int(path.stem) for path in self.directory.glob("[0-9]*.json")}

    def write(self, index: int, tree: QueryTree) -> None:
        """Write one query's record: temporary file, fsync, rename (a record exists whole or not at all)."""
        target = self.path(index)
        scratch = self.directory / f".{target.name}.{os.getpid()}.tmp"
        with open(scratch, "w") as handle:
            json.dump(tree.to_json(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, target)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)

    def read(self, index: int) -> QueryTree:
        path = self.path(index)
        try:
            return QueryTree.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a valid query record ({error}); delete it to collect that query again") from error


def build_trees(queries: Sequence[QueryTree], max_strong_steps: int) -> RolloutTrees:
    """One split of :class:`~trim_env.tree.RolloutTrees` from collected queries (nodes renumbered)."""
    offsets = np.cumsum([0] + [query.num_nodes for query in queries])

    def nodes(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(query, name), dtype=dtype) for query in queries]) if queries else np.zeros(0, dtype)

    def links(name: str) -> np.ndarray:
        """A node-index column, shifted by each query's offset (-1 stays -1)."""
        shifted = [np.where(np.asarray(getattr(query, name)) >= 0, np.asarray(getattr(query, name)) + offset, -1)
                   for query, offset in zip(queries, offsets)]
        return np.concatenate(shifted).astype(np.int32) if queries else np.zeros(0, np.int32)

    def anchors(name: str, column: int, dtype: Any) -> np.ndarray:
        return np.array([getattr(query, name)[column] for query in queries], dtype=dtype)

    n_nodes = int(offsets[-1])
    return RolloutTrees(
        query=np.repeat(np.arange(len(queries), dtype=np.int32), [query.num_nodes for query in queries]),
        parent=links("parent"),
        weak_child=links("weak_child"),
        strong_child=links("strong_child"),
        depth=nodes("depth", np.int16),
        strong_steps=nodes("strong_steps", np.int16),
        step_tokens=nodes("step_tokens", np.int32),
        step_prm=nodes("step_prm", np.float32),
        step_is_strong=nodes("step_is_strong", np.bool_),
        terminal=nodes("terminal", np.bool_),
        correct=nodes("correct", np.int8),
        hidden_state=np.full(n_nodes, UNKNOWN_STATE, dtype=np.int8),
        query_id=[query.problem.query_id for query in queries],
        root=offsets[:-1].astype(np.int32),
        level=np.array([query.problem.level for query in queries], dtype=np.int8),
        features=np.zeros((len(queries), 0), dtype=np.float32),
        weak_only_correct=anchors("weak_only", 0, np.int8),
        weak_only_tokens=anchors("weak_only", 1, np.int32),
        weak_only_steps=anchors("weak_only", 2, np.int16),
        strong_only_correct=anchors("strong_only", 0, np.int8),
        strong_only_tokens=anchors("strong_only", 1, np.int32),
        strong_only_steps=anchors("strong_only", 2, np.int16),
        step_text=[text for query in queries for text in query.step_text],
        problem=[query.problem.problem for query in queries],
        answer=[query.problem.answer for query in queries],
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
    :returns: the summary (also written to ``out/collection_summary.json``).
    """
    out = Path(out)
    splits = split_indices(len(problems), test_fraction, split_seed)
    pinned: dict[str, Any] = {
        "settings": asdict(settings),
        "test_fraction": test_fraction,
        "split_seed": split_seed,
        "query_ids": [problem.query_id for problem in problems],
        "weak": weak.describe(),
        "strong": strong.describe(),
        "prm": prm.describe(),
    }
    _pin_settings(out, pinned)
    store = RecordStore(out)
    todo = [index for index in range(len(problems)) if index not in store.done()]
    semaphore = asyncio.Semaphore(max(1, concurrent_queries))
    run_started, run_tokens, run_nodes = time.perf_counter(), 0, 0

    async def one(index: int) -> tuple[int, QueryTree]:
        async with semaphore:
            return index, await collect_query(problems[index], weak, strong, prm, settings)

    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc="queries", unit="query", disable=not progress_bar)
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
    finally:
        for task in tasks:
            task.cancel()
        bar.close()
    elapsed = time.perf_counter() - run_started
    queries = [store.read(index) for index in range(len(problems))]
    trees = {name: build_trees([queries[i] for i in indices], settings.max_strong_steps) for name, indices in splits.items()}
    manifest_source = {"kind": "collected", **(source or {}), **{key: pinned[key] for key in ("weak", "strong", "prm")},
                       "max_steps": settings.max_steps, "seed": settings.seed, "test_fraction": test_fraction}
    save_dataset(out, trees, manifest_source, settings.max_strong_steps, None, overwrite=True)
    summary = {
        **summarize(queries, {role: pinned[role]["name"] for role in ("weak", "strong", "prm")}),
        "this_run": {"queries": len(todo), "seconds": elapsed, "decoded_tokens": run_tokens, "nodes": run_nodes,
                     "tokens_per_s": run_tokens / elapsed if elapsed else 0.0,
                     "nodes_per_minute": 60 * run_nodes / elapsed if elapsed else 0.0},
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _pin_settings(out: Path, pinned: dict[str, Any]) -> None:
    """Record the run's settings in ``out/collect.json``, or check a resumed run against them."""
    path = out / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        for key, value in pinned.items():
            if previous.get(key) != json.loads(json.dumps(value)):
                raise ValueError(
                    f"{path}: field {key!r} differs from this run's ({previous.get(key)!r} before, {value!r} now); "
                    "resume with the same settings, or collect into another directory"
                )
        return
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out / MANIFEST} exists but {path} does not: {out} holds a dataset this collector did not write")
    out.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".json.tmp")
    scratch.write_text(json.dumps(pinned, indent=2) + "\n")
    os.replace(scratch, path)
