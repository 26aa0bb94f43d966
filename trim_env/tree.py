"""Rollout trees: the on-disk format of cached step generations, and its loader/validator.

A query's cached rollouts form a tree. A **node** is a solution prefix; the root is the empty
prefix. Every node except the root records the step that led to it (its *incoming step*): token
count, PRM score of that step given the prefix, whether the strong model wrote it, and its text
when known. A non-terminal node has up to two children:

- ``weak_child``: prefix + the weak model's proposed next step (always present);
- ``strong_child``: prefix + the strong model's rewrite of that step (present while the path holds
  fewer than ``K`` strong steps and the query's node budget allows).

So at node ``n`` the router sees the proposal ``step_prm[weak_child[n]]`` and
``step_tokens[weak_child[n]]``; regenerating costs ``step_tokens[strong_child[n]]`` strong tokens.
A node whose incoming step ends the solution is **terminal** and records ``correct`` (0/1).
Past the cap (no strong child) the environment plays weak steps to the end without asking.

On disk a dataset is a directory::

    manifest.json                 schema version, source, K, node budget, splits, hashes
    <split>/queries.parquet       one row per query (anchors for weak-only / strong-only runs)
    <split>/nodes.parquet         one row per node, in breadth-first order (parent < child)

Node indices in ``nodes.parquet`` are row numbers within the split file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trim_env.atomic import file_sha256, write_atomic, write_text
from trim_env.keys import query_keys_from_ids

SCHEMA_VERSION = 2
#: Older schema versions this version still reads (v1 had no ``root_key``: derived from query ids).
READABLE_SCHEMA_VERSIONS = (1, 2)
MAX_STEPS = 30
MANIFEST = "manifest.json"

#: Hidden state of a prefix (its incoming step included), as recorded by the simulator.
#: Real collection does not know it and writes ``UNKNOWN_STATE``.
STATE_CORRECT, STATE_DERAILED, STATE_LAST_STEP_WRONG, UNKNOWN_STATE = 0, 1, 2, -1

NODE_COLUMNS: dict[str, pa.DataType] = {
    "query": pa.int32(),
    "parent": pa.int32(),
    "weak_child": pa.int32(),
    "strong_child": pa.int32(),
    "depth": pa.int16(),
    "strong_steps": pa.int16(),
    "step_tokens": pa.int32(),
    "step_prm": pa.float32(),
    "step_is_strong": pa.bool_(),
    "terminal": pa.bool_(),
    "correct": pa.int8(),
    "hidden_state": pa.int8(),
    "step_text": pa.string(),
}
QUERY_COLUMNS: dict[str, pa.DataType] = {
    "query_id": pa.string(),
    "root_key": pa.uint64(),
    "root": pa.int32(),
    "level": pa.int8(),
    "features": pa.list_(pa.float32()),
    "weak_only_correct": pa.int8(),
    "weak_only_tokens": pa.int32(),
    "weak_only_steps": pa.int16(),
    "strong_only_correct": pa.int8(),
    "strong_only_tokens": pa.int32(),
    "strong_only_steps": pa.int16(),
    "strong_branch_cutoff": pa.float32(),
    "problem": pa.string(),
    "answer": pa.string(),
}


class TreeFormatError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names file, query and field."""


@dataclass
class RolloutTrees:
    """One split of rollout trees held as flat arrays (node arrays indexed by node id).

    Cached trees are complete: :meth:`expand` does nothing. A lazy source (the simulator serving
    the environment directly) subclasses this and creates children on demand, so consumers call
    ``expand(nodes)`` before reading the children of ``nodes`` and re-read the arrays afterwards.
    """

    # Node arrays.
    query: np.ndarray
    parent: np.ndarray
    weak_child: np.ndarray
    strong_child: np.ndarray
    depth: np.ndarray
    strong_steps: np.ndarray
    step_tokens: np.ndarray
    step_prm: np.ndarray
    step_is_strong: np.ndarray
    terminal: np.ndarray
    correct: np.ndarray
    hidden_state: np.ndarray
    # Query arrays.
    query_id: list[str]
    root: np.ndarray
    level: np.ndarray
    features: np.ndarray
    weak_only_correct: np.ndarray
    weak_only_tokens: np.ndarray
    weak_only_steps: np.ndarray
    strong_only_correct: np.ndarray
    strong_only_tokens: np.ndarray
    strong_only_steps: np.ndarray
    #: Per query: a router that regenerates only proposals scoring below this PRM level never meets
    #: a missing strong child (short of the cap K); +inf when no node budget limited the tree.
    #: ``None`` means +inf.
    strong_branch_cutoff: np.ndarray | None = None
    step_text: list[str | None] | None = None
    problem: list[str | None] | None = None
    answer: list[str | None] | None = None
    #: Per query: the path key of its root (:mod:`trim_env.keys`); ``None`` derives it from the id.
    root_key: np.ndarray | None = None
    #: Minimum PRM score over the steps of each node's prefix (1.0 at the root); derived, not stored.
    path_min_prm: np.ndarray = field(init=False, repr=False)
    #: Cap on strong steps per path and node budget per query (``None`` = uncapped / no budget).
    max_strong_steps: int | None = None
    node_budget: int | None = None

    def __post_init__(self) -> None:
        if self.strong_branch_cutoff is None:
            self.strong_branch_cutoff = np.full(len(self.root), np.inf, dtype=np.float32)
        if self.root_key is None:
            self.root_key = query_keys_from_ids(self.query_id)
        self.path_min_prm = path_minimum(self.parent, self.step_prm, self.depth)

    @property
    def num_queries(self) -> int:
        return len(self.root)

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    # Growth: cached trees never grow (see trim_env.store.GrowingTrees for trees that do).
    can_grow = False
    generation = 0

    def expand(self, nodes: np.ndarray) -> None:
        """Make sure both children of ``nodes`` exist where they can (cached trees: nothing to do)."""

    def grow_weak(self, nodes: np.ndarray) -> None:
        """Make sure the weak children of ``nodes`` exist where they can (cached trees: nothing to do)."""

    def grow_strong(self, nodes: np.ndarray) -> None:
        """Make sure the strong children of ``nodes`` exist where they can (cached trees: nothing to do)."""

    def strong_possible(self, nodes: np.ndarray) -> np.ndarray:
        """Whether regenerating at each of ``nodes`` is possible (cached trees: its strong child exists)."""
        return self.strong_child[nodes] >= 0

    def flush(self) -> None:
        """Persist grown nodes (cached trees: nothing to persist)."""

    def strong_only_mean_tokens(self) -> float:
        return float(np.mean(self.strong_only_tokens))

    def proposal(self, node: int) -> tuple[float, int]:
        """PRM score and token count of the weak step proposed at ``node``."""
        weak = self.weak_child[node]
        return float(self.step_prm[weak]), int(self.step_tokens[weak])

    def path(self, node: int) -> list[int]:
        """Node ids from the first step to ``node`` (root excluded)."""
        nodes = []
        while self.parent[node] >= 0:
            nodes.append(int(node))
            node = self.parent[node]
        return nodes[::-1]

    def subset(self, query_indices: np.ndarray) -> RolloutTrees:
        """A new split holding only the given queries (node ids renumbered), e.g. a validation part."""
        query_indices = np.asarray(query_indices, dtype=np.int64)
        keep = np.isin(self.query, query_indices)
        old_ids = np.flatnonzero(keep)
        new_id = np.full(self.num_nodes + 1, -1, dtype=np.int32)  # last slot maps -1 to -1
        new_id[old_ids] = np.arange(len(old_ids), dtype=np.int32)
        query_map = np.full(self.num_queries, -1, dtype=np.int32)
        query_map[query_indices] = np.arange(len(query_indices), dtype=np.int32)
        pick = lambda values: [values[i] for i in query_indices] if values is not None else None  # noqa: E731
        return RolloutTrees(
            query=query_map[self.query[old_ids]],
            parent=new_id[self.parent[old_ids]],
            weak_child=new_id[self.weak_child[old_ids]],
            strong_child=new_id[self.strong_child[old_ids]],
            depth=self.depth[old_ids],
            strong_steps=self.strong_steps[old_ids],
            step_tokens=self.step_tokens[old_ids],
            step_prm=self.step_prm[old_ids],
            step_is_strong=self.step_is_strong[old_ids],
            terminal=self.terminal[old_ids],
            correct=self.correct[old_ids],
            hidden_state=self.hidden_state[old_ids],
            query_id=[self.query_id[i] for i in query_indices],
            root=new_id[self.root[query_indices]],
            level=self.level[query_indices],
            features=self.features[query_indices],
            weak_only_correct=self.weak_only_correct[query_indices],
            weak_only_tokens=self.weak_only_tokens[query_indices],
            weak_only_steps=self.weak_only_steps[query_indices],
            strong_only_correct=self.strong_only_correct[query_indices],
            strong_only_tokens=self.strong_only_tokens[query_indices],
            strong_only_steps=self.strong_only_steps[query_indices],
            strong_branch_cutoff=self.strong_branch_cutoff[query_indices],
            step_text=[self.step_text[i] for i in old_ids] if self.step_text is not None else None,
            problem=pick(self.problem),
            answer=pick(self.answer),
            root_key=self.root_key[query_indices],
            max_strong_steps=self.max_strong_steps,
            node_budget=self.node_budget,
        )


def path_minimum(parent: np.ndarray, step_prm: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Minimum PRM score over each node's prefix, computed level by level (parents come first)."""
    result = np.ones(len(parent), dtype=np.float32)
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(int(depth.max(initial=0)) + 2))
    for level in range(1, len(bounds) - 1):
        nodes = order[bounds[level] : bounds[level + 1]]
        result[nodes] = np.minimum(result[parent[nodes]], step_prm[nodes])
    return result


# ----------------------------------------------------------------------------------------------
# Saving


def _write_table(table: pa.Table, path: Path) -> None:
    write_atomic(path, lambda scratch: pq.write_table(table, scratch, compression="zstd", use_dictionary=False, write_statistics=False))


def _nodes_table(trees: RolloutTrees) -> pa.Table:
    columns = {name: getattr(trees, name) for name in NODE_COLUMNS if name != "step_text"}
    arrays = {name: pa.array(np.asarray(values), type=NODE_COLUMNS[name]) for name, values in columns.items()}
    text = trees.step_text if trees.step_text is not None else [None] * trees.num_nodes
    arrays["step_text"] = pa.array(text, type=pa.string())
    return pa.table(arrays)


def _queries_table(trees: RolloutTrees) -> pa.Table:
    n = trees.num_queries
    arrays: dict[str, pa.Array] = {}
    for name, dtype in QUERY_COLUMNS.items():
        if name == "features":
            features = np.asarray(trees.features, dtype=np.float32)
            # reshape(0, -1) is ambiguous for an empty split; it has no feature rows to write.
            features = features.reshape(n, -1) if n else np.zeros((0, 0), dtype=np.float32)
            arrays[name] = pa.array(list(features), type=dtype)
        elif name == "root_key":
            arrays[name] = pa.array(np.asarray(trees.root_key, dtype=np.uint64), type=dtype)
        elif name in ("query_id", "problem", "answer"):
            values = getattr(trees, name)
            arrays[name] = pa.array(values if values is not None else [None] * n, type=dtype)
        else:
            arrays[name] = pa.array(np.asarray(getattr(trees, name)), type=dtype)
    return pa.table(arrays)


def save_dataset(
    directory: str | Path,
    splits: dict[str, RolloutTrees],
    source: dict[str, Any],
    max_strong_steps: int | None,
    node_budget: int | None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write splits and a manifest to ``directory``; returns the manifest.

    Each file is written to a temporary name and renamed, and the manifest goes last, so an
    interrupted save never leaves a directory that loads as complete.

    :param directory: output directory (created if missing).
    :param splits: split name -> trees, e.g. ``{"train": ..., "test": ...}``.
    :param source: provenance: simulator preset, parameters and seed, or models/PRM/sampling.
    :param max_strong_steps: the cap K on strong steps per path.
    :param node_budget: the per-query node budget used while expanding, or ``None``.
    :param overwrite: replace an existing dataset in ``directory``.
    """
    directory = Path(directory)
    if (directory / MANIFEST).exists() and not overwrite:
        raise FileExistsError(
            f"{directory / MANIFEST} already exists; refusing to overwrite a dataset "
            "(choose another directory or pass overwrite=true)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for name, trees in splits.items():
        split_dir = directory / name
        split_dir.mkdir(exist_ok=True)
        files = {}
        for file_name, table in (("queries.parquet", _queries_table(trees)), ("nodes.parquet", _nodes_table(trees))):
            _write_table(table, split_dir / file_name)
            files[file_name] = file_sha256(split_dir / file_name)
        manifest_splits[name] = {
            "n_queries": trees.num_queries,
            "n_nodes": trees.num_nodes,
            "sha256": files,
        }
    content = hashlib.sha256(
        json.dumps({k: v["sha256"] for k, v in sorted(manifest_splits.items())}, sort_keys=True).encode()
    ).hexdigest()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "max_strong_steps": max_strong_steps,
        "node_budget": node_budget,
        "splits": manifest_splits,
        "content_hash": content,
    }
    write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ----------------------------------------------------------------------------------------------
# Loading and validation


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` (exists, parses, schema version matches)."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"dataset directory {directory} does not exist")
    if not path.exists():
        raise TreeFormatError(f"{path}: missing; {directory} is not a rollout dataset (or it was not fully written)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TreeFormatError(f"{path}: not valid JSON ({error})") from error
    version = manifest.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise TreeFormatError(
            f"{path}: field schema_version is {version!r}, this version of trim reads {list(READABLE_SCHEMA_VERSIONS)}; "
            "re-create the dataset with this version"
        )
    for key in ("splits", "source", "max_strong_steps", "content_hash"):
        if key not in manifest:
            raise TreeFormatError(f"{path}: missing field {key!r}")
    return manifest


def _read_table(path: Path, expected_sha256: str | None, columns: dict[str, pa.DataType]) -> pa.Table:
    if not path.exists():
        raise TreeFormatError(f"{path}: file missing")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise TreeFormatError(
                f"{path}: content hash {actual[:12]}… does not match the manifest ({expected_sha256[:12]}…): "
                "the file is truncated, corrupt or was changed after the dataset was written"
            )
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise TreeFormatError(f"{path}: cannot be read as Parquet ({error}); the file is truncated or corrupt") from error
    for name, dtype in columns.items():
        if name not in table.column_names:
            raise TreeFormatError(f"{path}: missing column {name!r}")
        if table.schema.field(name).type != dtype:
            raise TreeFormatError(f"{path}: column {name!r} has type {table.schema.field(name).type}, expected {dtype}")
    return table


def _numpy(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def load_split(directory: str | Path, split: str = "test", verify_hash: bool = True) -> RolloutTrees:
    """Load and validate one split of a dataset.

    :param directory: dataset directory (holding ``manifest.json``).
    :param split: split name, e.g. ``"train"`` or ``"test"``.
    :param verify_hash: check each file's SHA-256 against the manifest (detects corruption).
    :raises TreeFormatError: with the file, query and field of the first problem found.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise TreeFormatError(
            f"{directory / MANIFEST}: no split {split!r}; available: {sorted(manifest['splits'])}"
        )
    hashes = manifest["splits"][split].get("sha256", {}) if verify_hash else {}
    queries_path = directory / split / "queries.parquet"
    nodes_path = directory / split / "nodes.parquet"
    query_columns = QUERY_COLUMNS if manifest["schema_version"] >= 2 else {k: v for k, v in QUERY_COLUMNS.items() if k != "root_key"}
    queries = _read_table(queries_path, hashes.get("queries.parquet"), query_columns)
    nodes = _read_table(nodes_path, hashes.get("nodes.parquet"), NODE_COLUMNS)
    text_column = nodes.column("step_text")
    features = queries.column("features")
    n_queries = queries.num_rows
    feature_matrix = (
        np.asarray(features.combine_chunks().flatten().to_numpy(), dtype=np.float32).reshape(n_queries, -1)
        if n_queries
        else np.zeros((0, 0), dtype=np.float32)
    )
    optional = lambda table, name: (  # noqa: E731
        None if table.column(name).null_count == table.num_rows else table.column(name).to_pylist()
    )
    _validate(nodes, queries, nodes_path, queries_path, manifest["max_strong_steps"])
    return RolloutTrees(
        **{name: _numpy(nodes, name) for name in NODE_COLUMNS if name != "step_text"},
        query_id=queries.column("query_id").to_pylist(),
        root=_numpy(queries, "root"),
        level=_numpy(queries, "level"),
        features=feature_matrix,
        **{
            name: _numpy(queries, name)
            for name in QUERY_COLUMNS
            if name.startswith(("weak_only", "strong_only", "strong_branch"))
        },
        step_text=None if text_column.null_count == nodes.num_rows else text_column.to_pylist(),
        problem=optional(queries, "problem"),
        answer=optional(queries, "answer"),
        root_key=_numpy(queries, "root_key") if "root_key" in query_columns else None,
        max_strong_steps=manifest["max_strong_steps"],
        node_budget=manifest.get("node_budget"),
    )


def _validate(
    nodes: pa.Table, queries: pa.Table, nodes_path: Path, queries_path: Path, max_strong_steps: int | None
) -> None:
    """Check indices, scores and terminal records; raise :class:`TreeFormatError` naming the culprit."""
    n_nodes, n_queries = nodes.num_rows, queries.num_rows
    query_ids = queries.column("query_id").to_pylist()
    query = _numpy(nodes, "query")

    def fail(path: Path, rows: np.ndarray, column: str, values: np.ndarray, why: str) -> None:
        row = int(np.flatnonzero(rows)[0])
        owner = int(query[row]) if path == nodes_path and 0 <= query[row] < n_queries else None
        where = f"node {row} of query {query_ids[owner]!r}" if owner is not None else f"row {row}"
        if path == queries_path:
            where = f"query {query_ids[row]!r}"
        raise TreeFormatError(f"{path}: {where}, field {column!r} = {values[row]!r}: {why}")

    bad = (query < 0) | (query >= n_queries)
    if bad.any():
        fail(nodes_path, bad, "query", query, f"query index out of range [0, {n_queries})")
    index = np.arange(n_nodes)
    for column in ("weak_child", "strong_child"):
        child = _numpy(nodes, column)
        bad = (child != -1) & ((child <= index) | (child >= n_nodes))
        if bad.any():
            fail(nodes_path, bad, column, child, f"child index out of range (must be -1 or in (row, {n_nodes}))")
        linked = child >= 0
        if (query[child[linked]] != query[linked]).any():
            fail(nodes_path, linked & (query[np.where(linked, child, 0)] != query), column, child, "child belongs to another query")
    parent = _numpy(nodes, "parent")
    bad = (parent != -1) & ((parent < 0) | (parent >= index))
    if bad.any():
        fail(nodes_path, bad, "parent", parent, "parent index out of range (parents come before children)")
    prm = _numpy(nodes, "step_prm")
    bad = ~np.isfinite(prm) | (prm < 0) | (prm > 1)
    if bad.any():
        fail(nodes_path, bad, "step_prm", prm, "PRM score must be a number in [0, 1]")
    tokens = _numpy(nodes, "step_tokens")
    bad = (tokens < 0) | ((tokens == 0) & (parent >= 0))
    if bad.any():
        fail(nodes_path, bad, "step_tokens", tokens, "every step must have a positive token count")
    terminal = _numpy(nodes, "terminal")
    correct = _numpy(nodes, "correct")
    bad = terminal & (correct != 0) & (correct != 1)
    if bad.any():
        fail(nodes_path, bad, "correct", correct, "a terminal node must record correct as 0 or 1")
    weak_child = _numpy(nodes, "weak_child")
    bad = ~terminal & (weak_child < 0)
    if bad.any():
        fail(nodes_path, bad, "weak_child", weak_child, "a non-terminal node must have a weak child")
    if max_strong_steps is not None:
        strong_steps = _numpy(nodes, "strong_steps")
        bad = strong_steps > max_strong_steps
        if bad.any():
            fail(nodes_path, bad, "strong_steps", strong_steps, f"exceeds the manifest cap K = {max_strong_steps}")
    root = _numpy(queries, "root")
    bad = (root < 0) | (root >= n_nodes)
    if bad.any():
        fail(queries_path, bad, "root", root, f"root index out of range [0, {n_nodes})")
    bad = parent[root] != -1
    if bad.any():
        fail(queries_path, bad, "root", root, "the root node must have parent -1")
    for column in ("weak_only_correct", "strong_only_correct"):
        values = _numpy(queries, column)
        bad = (values != 0) & (values != 1)
        if bad.any():
            fail(queries_path, bad, column, values, "must be 0 or 1")


def content_digest(trees: RolloutTrees) -> str:
    """SHA-256 of a split's content, independent of the Parquet writer's bytes.

    PRM scores enter rounded to 1e-5 so that last-bit differences of floating-point libraries
    across machines do not change the digest of regenerated data.
    """
    digest = hashlib.sha256()
    for name in NODE_COLUMNS:
        if name in ("step_prm", "step_text"):
            continue
        digest.update(np.ascontiguousarray(getattr(trees, name)).tobytes())
    digest.update(np.rint(trees.step_prm.astype(np.float64) * 1e5).astype(np.int64).tobytes())
    for name in QUERY_COLUMNS:
        if name in ("query_id", "problem", "answer"):
            continue
        if name == "root_key":
            digest.update(np.ascontiguousarray(trees.root_key, dtype=np.uint64).tobytes())
            continue
        values = np.asarray(getattr(trees, name))
        if values.dtype.kind == "f":
            values = np.rint(values.astype(np.float64) * 1e5)  # inf (no cutoff) stays inf
        digest.update(np.ascontiguousarray(values).tobytes())
    digest.update("\n".join(trees.query_id).encode())
    return digest.hexdigest()
