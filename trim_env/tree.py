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
Each query records ``prompt_tokens``, the tokens of its prompt (chat template, system prompt and
problem) before the first step, so the prefix a call reads at node ``n`` is
:meth:`RolloutTrees.prefix_tokens` (prompt + the steps from the root to ``n``): what the cost
models of :mod:`trim_env.cost` charge for prefill.
A node whose incoming step ends the solution is **terminal** and records ``correct`` (0/1).
Past the cap (no strong child) the environment plays weak steps to the end without asking.

On disk a dataset is a directory::

    manifest.json                 schema version, source, K, node budget, splits, hashes
    README.md                     dataset card: 🤗 datasets configs ``queries`` and ``nodes``, the source
    <split>/queries.parquet       one row per query (anchors for weak-only / strong-only runs)
    <split>/nodes.parquet         one row per node, in breadth-first order (parent < child)

Node indices in ``nodes.parquet`` are row numbers within the split file. The card is not hashed:
it is derived from the manifest (:func:`write_dataset_card`), so content hashes cover the data only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trim_env.atomic import file_sha256, write_atomic, write_text
from trim_env.keys import query_keys_from_ids

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
#: Older schema versions this version still reads (v1 had no ``root_key``: derived from query ids;
#: v1 and v2 have no ``prompt_tokens``: :attr:`RolloutTrees.prompt_tokens` is then ``None``).
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
MAX_STEPS = 30
MANIFEST = "manifest.json"

#: Hidden state of a prefix (its incoming step included), as recorded by the simulator.
#: Real collection does not know it and writes ``UNKNOWN_STATE``.
STATE_CORRECT, STATE_DERAILED, STATE_LAST_STEP_WRONG, UNKNOWN_STATE = 0, 1, 2, -1

#: Column roles: what a column's values are, which decides how it is written, read, subset and hashed.
NODE_INDEX = "node index"  # a node id of the same split, or -1
QUERY_INDEX = "query index"  # a query id (row number) of the same split
VALUE = "value"  # a number or flag per row
TEXT = "text"  # a string per row, null where unknown; the whole column is None in memory when all are null
IDENTIFIER = "identifier"  # a string per row, never null
MATRIX = "matrix"  # a list of floats per row, every row as long


@dataclass(frozen=True)
class Column:
    """One column of the tree format: its name (the :class:`RolloutTrees` attribute too), Arrow type and role."""

    name: str
    dtype: pa.DataType
    role: str = VALUE

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype.to_pandas_dtype())


#: ``nodes.parquet``: one row per node (breadth-first: parent < child).
NODE_SCHEMA: tuple[Column, ...] = (
    Column("query", pa.int32(), QUERY_INDEX),
    Column("parent", pa.int32(), NODE_INDEX),
    Column("weak_child", pa.int32(), NODE_INDEX),
    Column("strong_child", pa.int32(), NODE_INDEX),
    Column("depth", pa.int16()),
    Column("strong_steps", pa.int16()),
    Column("step_tokens", pa.int32()),
    Column("step_prm", pa.float32()),
    Column("step_is_strong", pa.bool_()),
    Column("terminal", pa.bool_()),
    Column("correct", pa.int8()),
    Column("hidden_state", pa.int8()),
    Column("step_text", pa.string(), TEXT),
)
#: ``queries.parquet``: one row per query.
QUERY_SCHEMA: tuple[Column, ...] = (
    Column("query_id", pa.string(), IDENTIFIER),
    Column("root_key", pa.uint64()),
    Column("root", pa.int32(), NODE_INDEX),
    Column("level", pa.int8()),
    Column("features", pa.list_(pa.float32()), MATRIX),
    Column("weak_only_correct", pa.int8()),
    Column("weak_only_tokens", pa.int32()),
    Column("weak_only_steps", pa.int16()),
    Column("strong_only_correct", pa.int8()),
    Column("strong_only_tokens", pa.int32()),
    Column("strong_only_steps", pa.int16()),
    Column("strong_branch_cutoff", pa.float32()),
    Column("prompt_tokens", pa.int64()),
    Column("problem", pa.string(), TEXT),
    Column("answer", pa.string(), TEXT),
)
NODE_COLUMNS: dict[str, pa.DataType] = {column.name: column.dtype for column in NODE_SCHEMA}
QUERY_COLUMNS: dict[str, pa.DataType] = {column.name: column.dtype for column in QUERY_SCHEMA}
#: Query columns schema version 1 did not have.
ADDED_IN_SCHEMA_2 = ("root_key",)
#: Query columns schema versions 1 and 2 did not have.
ADDED_IN_SCHEMA_3 = ("prompt_tokens",)


def query_schema(version: int) -> tuple[Column, ...]:
    """The query columns a dataset of schema ``version`` stores."""
    absent = (ADDED_IN_SCHEMA_2 if version < 2 else ()) + (ADDED_IN_SCHEMA_3 if version < 3 else ())
    return tuple(column for column in QUERY_SCHEMA if column.name not in absent)


#: Said once per dataset whose trees carry no prompt tokens (:func:`note_missing_prompt_tokens`).
MISSING_PROMPT_TOKENS_NOTE = (
    "{where}: no prompt_tokens column (tree schema version < 3): only the cost model cost=strong_tokens (and "
    "cost models that charge nothing for prefill) can cost these trees; price, flops and latency need the prompt "
    "length of each query. Re-create or re-collect the dataset with this version of trim to record it."
)
_noted_missing_prompt_tokens: set[str] = set()


def note_missing_prompt_tokens(where: str) -> None:
    """Log :data:`MISSING_PROMPT_TOKENS_NOTE` for ``where`` (a dataset directory or table), once per process."""
    if where not in _noted_missing_prompt_tokens:
        _noted_missing_prompt_tokens.add(where)
        logger.warning(MISSING_PROMPT_TOKENS_NOTE.format(where=where))


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
    #: Per query: tokens of the prompt (chat template, system prompt, problem) before the first
    #: step; ``None`` for datasets of schema version < 3, which did not record it.
    prompt_tokens: np.ndarray | None = None
    #: Minimum PRM score over the steps of each node's prefix (1.0 at the root); derived, not stored.
    path_min_prm: np.ndarray = field(init=False, repr=False)
    #: Tokens of the steps from the root to each node, the node's own step included (0 at the
    #: root); derived, not stored. The prompt is not included: see :meth:`prefix_tokens`.
    path_tokens: np.ndarray = field(init=False, repr=False)
    #: Cap on strong steps per path and node budget per query (``None`` = uncapped / no budget).
    max_strong_steps: int | None = None
    node_budget: int | None = None

    def __post_init__(self) -> None:
        if self.strong_branch_cutoff is None:
            self.strong_branch_cutoff = np.full(len(self.root), np.inf, dtype=np.float32)
        if self.root_key is None:
            self.root_key = query_keys_from_ids(self.query_id)
        self.path_min_prm = path_minimum(self.parent, self.step_prm, self.depth)
        self.path_tokens = path_sum(self.parent, self.step_tokens, self.depth)

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

    def prefix_tokens(self, nodes: np.ndarray) -> np.ndarray:
        """Tokens a model reads before writing the step after each of ``nodes``: the query's prompt
        plus every step from the root to the node (int64, one per node).

        :raises ValueError: the trees carry no prompt tokens (a dataset of schema version < 3).
        """
        if self.prompt_tokens is None:
            raise ValueError(
                "these trees carry no prompt_tokens (a dataset of tree schema version < 3), so prefix lengths "
                "are unknown; re-create or re-collect the dataset with this version of trim"
            )
        nodes = np.asarray(nodes, dtype=np.int64)
        return self.prompt_tokens[self.query[nodes]].astype(np.int64) + self.path_tokens[nodes]

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

        def pick(column: Column, rows: np.ndarray) -> Any:
            values = getattr(self, column.name)
            if values is None:  # a text column without text, or a column older schemas lack
                return None
            if column.role in (TEXT, IDENTIFIER):
                return [values[i] for i in rows]
            if column.role == NODE_INDEX:
                return new_id[values[rows]]
            if column.role == QUERY_INDEX:
                return query_map[values[rows]]
            return values[rows]

        return RolloutTrees(
            **{column.name: pick(column, old_ids) for column in NODE_SCHEMA},
            **{column.name: pick(column, query_indices) for column in QUERY_SCHEMA},
            max_strong_steps=self.max_strong_steps,
            node_budget=self.node_budget,
        )


def _along_paths(parent: np.ndarray, depth: np.ndarray, step_values: np.ndarray, combine: np.ufunc, root: float,
                 dtype: type) -> np.ndarray:
    """``combine`` folded over each node's prefix (``root`` at the root), level by level: parents come first."""
    result: np.ndarray = np.full(len(parent), root, dtype=dtype)
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(int(depth.max(initial=0)) + 2))
    for level in range(1, len(bounds) - 1):
        nodes = order[bounds[level] : bounds[level + 1]]
        result[nodes] = combine(result[parent[nodes]], step_values[nodes])
    return result


def path_sum(parent: np.ndarray, step_tokens: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Sum of the step tokens over each node's prefix (int64, 0 at the root)."""
    return _along_paths(parent, depth, step_tokens, np.add, 0, np.int64)


def path_minimum(parent: np.ndarray, step_prm: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Minimum PRM score over each node's prefix (float32, 1.0 at the root)."""
    return _along_paths(parent, depth, step_prm, np.minimum, 1.0, np.float32)


# ----------------------------------------------------------------------------------------------
# Saving


def _write_table(table: pa.Table, path: Path) -> None:
    write_atomic(path, lambda scratch: pq.write_table(table, scratch, compression="zstd", use_dictionary=False, write_statistics=False))


def _column_array(column: Column, values: Any, n_rows: int) -> pa.Array:
    """One column of ``n_rows`` rows as Arrow (a text column held as ``None`` is written all null)."""
    if column.role in (TEXT, IDENTIFIER):
        return pa.array(values if values is not None else [None] * n_rows, type=column.dtype)
    if column.role == MATRIX:
        matrix = np.asarray(values, dtype=np.float32)
        # reshape(0, -1) is ambiguous for an empty split; it has no rows to write.
        matrix = matrix.reshape(n_rows, -1) if n_rows else np.zeros((0, 0), dtype=np.float32)
        return pa.array(list(matrix), type=column.dtype)
    return pa.array(np.asarray(values, dtype=column.numpy_dtype), type=column.dtype)


def _table(trees: RolloutTrees, schema: tuple[Column, ...], n_rows: int) -> pa.Table:
    return pa.table({column.name: _column_array(column, getattr(trees, column.name), n_rows) for column in schema})


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
    with_prompt_tokens = {name for name, trees in splits.items() if trees.prompt_tokens is not None}
    if with_prompt_tokens and with_prompt_tokens != set(splits):
        raise ValueError(
            f"splits {sorted(with_prompt_tokens)} carry prompt_tokens and {sorted(set(splits) - with_prompt_tokens)} do not; "
            "a dataset records them for every split or for none"
        )
    # Trees without prompt tokens (from an older dataset) are written in the last schema without them.
    version = SCHEMA_VERSION if with_prompt_tokens or not splits else 2
    directory.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for name, trees in splits.items():
        split_dir = directory / name
        split_dir.mkdir(exist_ok=True)
        files = {}
        tables = (("queries.parquet", _table(trees, query_schema(version), trees.num_queries)),
                  ("nodes.parquet", _table(trees, NODE_SCHEMA, trees.num_nodes)))
        for file_name, table in tables:
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
        "schema_version": version,
        "source": source,
        "max_strong_steps": max_strong_steps,
        "node_budget": node_budget,
        "splits": manifest_splits,
        "content_hash": content,
    }
    write_text(directory / DATASET_CARD, dataset_card(manifest))
    write_text(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


#: The dataset card: what makes a dataset directory loadable with ``datasets.load_dataset(DIR, "nodes")``.
DATASET_CARD = "README.md"


def describe_source(source: dict[str, Any]) -> str:
    """One sentence on where the trees come from, from the manifest's ``source``."""
    if source.get("kind") == "simulator":
        return (f"Simulated rollout trees (NOT real model output) drawn from the trim simulator preset "
                f"`{source.get('preset')}` with seed {source.get('seed')}.")
    models = []
    for role in ("weak", "strong", "prm"):
        model = source.get(role)
        if model is not None:
            models.append(f"{role}: `{model.get('name') if isinstance(model, dict) else model}`")
    described = "; ".join(models) if models else "models not recorded in the manifest"
    return f"Rollout trees collected from real models ({described})."


def dataset_card(manifest: dict[str, Any]) -> str:
    """The dataset card (README.md) of a dataset with this manifest: YAML ``configs`` and a description.

    Each config lists the split files explicitly, so ``<split>/growth/`` shards are not read: the
    Parquet files hold the seed cache the manifest hashes, not nodes grown later (see :mod:`trim_env.store`).
    """
    splits = sorted(manifest["splits"])
    lines = ["---", "configs:"]
    for config in ("queries", "nodes"):
        lines += [f"- config_name: {config}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {json.dumps(split)}", f"    path: {json.dumps(f'{split}/{config}.parquet')}"]
    simulated = manifest["source"].get("kind") == "simulator"
    lines += ["tags:", "- trim", "- rollout-trees"] + (["- synthetic"] if simulated else []) + ["---", ""]
    budget = manifest.get("node_budget")
    sizes = ", ".join(f"{split}: {manifest['splits'][split]['n_queries']} queries, {manifest['splits'][split]['n_nodes']} nodes"
                      for split in splits)
    lines += [
        "# Rollout trees for step-level routing (trim)",
        "",
        describe_source(manifest["source"]),
        f"Cap K = {manifest['max_strong_steps']} strong steps per path, node budget {budget if budget is not None else 'none'} "
        f"per query; {sizes}.",
        "",
        "Two configs: `queries` (one row per query) and `nodes` (one row per node of a query's tree). Node links "
        "(`parent`, `weak_child`, `strong_child`, `root`) and `query` are **row positions within the split**: "
        "shuffling, filtering, sorting or selecting rows breaks the trees. Rebuild the trees with "
        "`trim_env.hf.trees_from_datasets(queries, nodes)`, which refuses reordered or filtered rows, and take "
        "subsets with `RolloutTrees.subset`.",
        "",
        "`prompt_tokens` (queries, schema version 3) is the length of each query's prompt (chat template, system "
        "prompt and problem) in tokens; with a node's `depth` and the `step_tokens` of its path it gives the prefix a "
        "model reads at that node (`RolloutTrees.prefix_tokens`), which the cost models of `trim_env.cost` charge.",
        "",
        "The Parquet files hold the seed cache hashed in `manifest.json`. Nodes grown on demand later live in "
        "`<split>/growth/` shards, linked by path keys, and are not part of these configs; trim's own loader "
        "(`trim_env.store`) reads them.",
        "",
    ]
    return "\n".join(lines)


def write_dataset_card(directory: str | Path) -> Path:
    """Write (or rewrite) the dataset card of an existing dataset directory from its manifest; returns its path.

    The card is not hashed, so this changes no content hash and no digest.
    """
    manifest = read_manifest(directory)
    path = Path(directory) / DATASET_CARD
    write_text(path, dataset_card(manifest))
    return path


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


#: The files of one split, each hashed in the manifest.
SPLIT_FILES = ("queries.parquet", "nodes.parquet")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _split_hashes(manifest: dict[str, Any], manifest_path: Path, split: str) -> dict[str, str]:
    """The manifest's SHA-256 of each file of ``split``; an incomplete map is an error, never a skipped check."""
    entry = manifest["splits"][split]
    hashes = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(hashes, dict):
        raise TreeFormatError(
            f"{manifest_path}: field splits.{split}.sha256 is {hashes!r}, not a map of file hashes; "
            "the split's files cannot be checked (load with verify_hash=False to skip hash checks knowingly)"
        )
    for name in SPLIT_FILES:
        value = hashes.get(name)
        if not (isinstance(value, str) and _SHA256.fullmatch(value)):
            raise TreeFormatError(
                f"{manifest_path}: field splits.{split}.sha256.{name} is {value!r}, not a SHA-256 hex digest: the hash map "
                "is incomplete, so the file cannot be checked (load with verify_hash=False to skip hash checks knowingly)"
            )
    return hashes


def _read_table(path: Path, expected_sha256: str | None, schema: tuple[Column, ...]) -> pa.Table:
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
    _check_columns(table, schema, path)
    return table.combine_chunks()


def _check_columns(table: pa.Table, schema: tuple[Column, ...], where: Path | str) -> None:
    """Every column of ``schema`` is present with its type."""
    for column in schema:
        if column.name not in table.column_names:
            raise TreeFormatError(f"{where}: missing column {column.name!r}")
        actual_type = table.schema.field(column.name).type
        if actual_type != column.dtype:
            raise TreeFormatError(f"{where}: column {column.name!r} has type {actual_type}, expected {column.dtype}")


def _column_values(table: pa.Table, column: Column) -> Any:
    """A checked column as :class:`RolloutTrees` holds it."""
    values = table.column(column.name)
    if column.role == TEXT:
        return None if values.null_count == table.num_rows else values.to_pylist()
    if column.role == IDENTIFIER:
        return values.to_pylist()
    if column.role == MATRIX:
        if not table.num_rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.asarray(values.combine_chunks().flatten().to_numpy(), dtype=np.float32).reshape(table.num_rows, -1)
    return values.to_numpy()


def load_split(directory: str | Path, split: str = "test", verify_hash: bool = True) -> RolloutTrees:
    """Load and validate one split of a dataset.

    :param directory: dataset directory (holding ``manifest.json``).
    :param split: split name, e.g. ``"train"`` or ``"test"``.
    :param verify_hash: check each file's SHA-256 against the manifest (detects corruption); the
        manifest must then hash every file of the split.
    :raises TreeFormatError: with the file, query, node and field of the first problem found.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise TreeFormatError(
            f"{directory / MANIFEST}: no split {split!r}; available: {sorted(manifest['splits'])}"
        )
    hashes = _split_hashes(manifest, directory / MANIFEST, split) if verify_hash else {}
    queries_path = directory / split / "queries.parquet"
    nodes_path = directory / split / "nodes.parquet"
    schema = query_schema(manifest["schema_version"])
    queries = _read_table(queries_path, hashes.get("queries.parquet"), schema)
    nodes = _read_table(nodes_path, hashes.get("nodes.parquet"), NODE_SCHEMA)
    _Validator(nodes, queries, nodes_path, queries_path, schema).check(manifest["max_strong_steps"])
    if manifest["schema_version"] < 3:
        note_missing_prompt_tokens(str(directory))
    return RolloutTrees(
        **{column.name: _column_values(nodes, column) for column in NODE_SCHEMA},
        **{column.name: _column_values(queries, column) for column in schema},
        max_strong_steps=manifest["max_strong_steps"],
        node_budget=manifest.get("node_budget"),
    )


def trees_from_tables(
    nodes: pa.Table,
    queries: pa.Table,
    nodes_name: str,
    queries_name: str,
    max_strong_steps: int | None = None,
    node_budget: int | None = None,
    link_hint: str = "",
) -> RolloutTrees:
    """Check and build one split from in-memory tables (e.g. a 🤗 datasets split) instead of files.

    :param nodes_name: what the nodes table is called in error messages (it takes the place of a file name).
    :param queries_name: likewise for the queries table; a table without ``root_key`` is read as schema
        version 1, one without ``prompt_tokens`` as version 2 (noted once: :func:`note_missing_prompt_tokens`).
    :param max_strong_steps: the cap K to check, or ``None`` (not checked, recorded as uncapped).
    :param node_budget: recorded on the trees as is.
    :param link_hint: appended to a broken-link error, saying what likely broke the links.
    :raises TreeFormatError: with the table, query, node and field of the first problem found.
    """
    version = 1 if "root_key" not in queries.column_names else 3 if "prompt_tokens" in queries.column_names else 2
    schema = query_schema(version)
    _check_columns(queries, schema, queries_name)
    _check_columns(nodes, NODE_SCHEMA, nodes_name)
    queries, nodes = queries.combine_chunks(), nodes.combine_chunks()
    validator = _Validator(nodes, queries, Path(nodes_name), Path(queries_name), schema)
    validator.link_hint = link_hint
    validator.check(max_strong_steps)
    if version < 3:
        note_missing_prompt_tokens(queries_name)
    return RolloutTrees(
        **{column.name: _column_values(nodes, column) for column in NODE_SCHEMA},
        **{column.name: _column_values(queries, column) for column in schema},
        max_strong_steps=max_strong_steps,
        node_budget=node_budget,
    )


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


class _Validator:
    """Checks one split's two tables; every failure is a :class:`TreeFormatError` naming file, query, node and field."""

    def __init__(self, nodes: pa.Table, queries: pa.Table, nodes_path: Path, queries_path: Path, query_schema: tuple[Column, ...]) -> None:
        self.nodes, self.queries = nodes, queries
        self.nodes_path, self.queries_path = nodes_path, queries_path
        self.query_schema = query_schema
        self.n_nodes, self.n_queries = nodes.num_rows, queries.num_rows
        self.query_ids: list[Any] = [None] * self.n_queries
        self.node_query = np.full(self.n_nodes, -1)
        #: Appended to a broken-link error (index or tree-structure check), saying what likely broke the links.
        self.link_hint = ""

    # -- messages

    def _query_name(self, query: int) -> str:
        return f"query {self.query_ids[query]!r}" if 0 <= query < self.n_queries else "an unknown query"

    def node_error(self, rows: np.ndarray, column: str, values: Any, why: str) -> TreeFormatError:
        row = int(np.flatnonzero(rows)[0])
        return TreeFormatError(
            f"{self.nodes_path}: node {row} of {self._query_name(int(self.node_query[row]))}, field {column!r} = {_plain(values[row])!r}: {why}"
        )

    def query_error(self, rows: np.ndarray, column: str, values: Any, why: str) -> TreeFormatError:
        row = int(np.flatnonzero(rows)[0])
        name = self.query_ids[row]
        where = f"query {name!r}" if name is not None else f"query row {row}"
        return TreeFormatError(f"{self.queries_path}: {where}, field {column!r} = {_plain(values[row])!r}: {why}")

    # -- checks

    def _no_nulls(self, table: pa.Table, schema: tuple[Column, ...], error: Callable[..., TreeFormatError]) -> None:
        """Only text columns may hold nulls; a list column holds rows of one length without nulls."""
        for column in schema:
            if column.role == TEXT:
                continue
            values = table.column(column.name)
            if values.null_count:
                raise error(np.asarray(pc.is_null(values)), column.name, values.to_pylist(), "missing value (null)")
            if column.role == MATRIX and table.num_rows:
                lengths = np.asarray(pc.list_value_length(values))
                if (lengths != lengths[0]).any():
                    row = int(np.flatnonzero(lengths != lengths[0])[0])
                    raise error(lengths != lengths[0], column.name, values.to_pylist(),
                                f"ragged rows: this row holds {lengths[row]} values, row 0 holds {lengths[0]}")
                rows = values.to_pylist()
                with_null = np.array([any(value is None for value in row) for row in rows])
                if with_null.any():
                    raise error(with_null, column.name, rows, "missing value (null) inside the row")

    def check(self, max_strong_steps: int | None) -> None:
        """Run every check, in an order where each one may rely on the ones before."""
        nodes, queries = self.nodes, self.queries
        ids = tuple(column for column in self.query_schema if column.name == "query_id")
        self._no_nulls(queries, ids, self.query_error)  # ids first: later messages name queries
        self.query_ids = queries.column("query_id").to_pylist()
        first_row: dict[str, int] = {}
        duplicate = np.zeros(self.n_queries, dtype=bool)
        for row, name in enumerate(self.query_ids):
            if name in first_row:
                duplicate[row] = True
                raise self.query_error(duplicate, "query_id", self.query_ids, f"the id is used twice (query rows {first_row[name]} and {row})")
            first_row[name] = row
        self._no_nulls(nodes, tuple(column for column in NODE_SCHEMA if column.name == "query"), self.node_error)
        self.node_query = nodes.column("query").to_numpy()
        self._no_nulls(nodes, NODE_SCHEMA, self.node_error)
        self._no_nulls(queries, self.query_schema, self.query_error)
        self._links(self._indices)
        if max_strong_steps is not None:
            strong_steps = nodes.column("strong_steps").to_numpy()
            bad = strong_steps > max_strong_steps
            if bad.any():
                raise self.node_error(bad, "strong_steps", strong_steps, f"exceeds the manifest cap K = {max_strong_steps}")
        self._links(self._structure)
        self._values()

    def _links(self, check: Callable[[], None]) -> None:
        """Run a link check, adding :attr:`link_hint` to its error."""
        try:
            check()
        except TreeFormatError as error:
            if not self.link_hint:
                raise
            raise TreeFormatError(f"{error}. {self.link_hint}") from error

    def _indices(self) -> None:
        """Every index column points inside the split, children after their parent, within one query."""
        n_nodes, n_queries = self.n_nodes, self.n_queries
        column = lambda name: self.nodes.column(name).to_numpy()  # noqa: E731
        query = self.node_query
        bad = (query < 0) | (query >= n_queries)
        if bad.any():
            raise self.node_error(bad, "query", query, f"query index out of range [0, {n_queries})")
        index = np.arange(n_nodes)
        for name in ("weak_child", "strong_child"):
            child = column(name)
            bad = (child != -1) & ((child <= index) | (child >= n_nodes))
            if bad.any():
                raise self.node_error(bad, name, child, f"child index out of range (must be -1 or in (row, {n_nodes}))")
            linked = child >= 0
            bad = linked & (query[np.where(linked, child, 0)] != query)
            if bad.any():
                raise self.node_error(bad, name, child, "child belongs to another query")
        parent = column("parent")
        bad = (parent != -1) & ((parent < 0) | (parent >= index))
        if bad.any():
            raise self.node_error(bad, "parent", parent, "parent index out of range (parents come before children)")
        root = self.queries.column("root").to_numpy()
        bad = (root < 0) | (root >= n_nodes)
        if bad.any():
            raise self.query_error(bad, "root", root, f"root index out of range [0, {n_nodes})")
        bad = parent[root] != -1
        if bad.any():
            raise self.query_error(bad, "root", root, "the root node must have parent -1")
        bad = query[root] != np.arange(n_queries)
        if bad.any():
            raise self.query_error(bad, "root", root, "the root node belongs to another query")

    def _structure(self) -> None:
        """Links agree both ways; depth, strong-step counts and W/S step kinds follow the tree."""
        column = lambda name: self.nodes.column(name).to_numpy()  # noqa: E731
        parent, depth, strong_steps = column("parent"), column("depth"), column("strong_steps")
        is_strong, terminal = column("step_is_strong"), column("terminal")
        index = np.arange(self.n_nodes)
        weak_child = column("weak_child")
        bad = ~terminal & (weak_child < 0)
        if bad.any():
            raise self.node_error(bad, "weak_child", weak_child, "a non-terminal node must have a weak child")
        root = self.queries.column("root").to_numpy()
        is_root = np.zeros(self.n_nodes, dtype=bool)
        is_root[root] = True
        bad = (parent == -1) & ~is_root
        if bad.any():
            raise self.node_error(bad, "parent", parent, "a node without a parent must be its query's root")
        for name, values, why in (("depth", depth, "the root's depth must be 0"),
                                  ("strong_steps", strong_steps, "the root's strong_steps must be 0")):
            if (values[root] != 0).any():
                raise self.node_error(is_root & (values != 0), name, values, why)
        for name, strong, kind in (("weak_child", False, "W"), ("strong_child", True, "S")):
            child = column(name)
            linked = child >= 0
            target = np.where(linked, child, 0)
            bad = linked & (parent[target] != index)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise self.node_error(bad, name, child, f"node {child[row]} names parent {parent[child[row]]}; "
                                      "a child's parent must be the node that points to it")
            bad = linked & terminal
            if bad.any():
                raise self.node_error(bad, name, child, "a terminal node has no children")
            # The remaining checks name the child, whose own field is wrong.
            pointed = np.zeros(self.n_nodes, dtype=bool)
            pointed[child[linked]] = True
            from_parent = np.zeros(self.n_nodes, dtype=np.int64)
            from_parent[child[linked]] = index[linked]
            bad = pointed & (is_strong != strong)
            if bad.any():
                raise self.node_error(bad, "step_is_strong", is_strong,
                                      f"the {kind} child of node {from_parent[np.flatnonzero(bad)[0]]} must be a {'strong' if strong else 'weak'} step")
            bad = pointed & (depth != depth[from_parent] + 1)
            if bad.any():
                raise self.node_error(bad, "depth", depth, "a child's depth must be its parent's depth + 1 "
                                      f"(parent node {from_parent[np.flatnonzero(bad)[0]]} has depth {depth[from_parent[np.flatnonzero(bad)[0]]]})")
            bad = pointed & (strong_steps != strong_steps[from_parent] + int(strong))
            if bad.any():
                first = from_parent[np.flatnonzero(bad)[0]]
                raise self.node_error(bad, "strong_steps", strong_steps, f"must count the strong steps of the path: the parent "
                                      f"(node {first}) has {strong_steps[first]}, this {kind} child adds {int(strong)}")
        strong_child = column("strong_child")
        has_parent = parent >= 0
        safe_parent = np.where(has_parent, parent, 0)
        bad = has_parent & (weak_child[safe_parent] != index) & (strong_child[safe_parent] != index)
        if bad.any():
            raise self.node_error(bad, "parent", parent, "the parent node does not point to this node (neither its W nor its S child)")

    def _values(self) -> None:
        """Scores, token counts, terminal records and anchors in their ranges."""
        column = lambda name: self.nodes.column(name).to_numpy()  # noqa: E731
        parent = column("parent")
        prm = column("step_prm")
        bad = ~np.isfinite(prm) | (prm < 0) | (prm > 1)
        if bad.any():
            raise self.node_error(bad, "step_prm", prm, "PRM score must be a number in [0, 1]")
        tokens = column("step_tokens")
        bad = (tokens < 0) | ((tokens == 0) & (parent >= 0))
        if bad.any():
            raise self.node_error(bad, "step_tokens", tokens, "every step must have a positive token count")
        terminal, correct = column("terminal"), column("correct")
        bad = terminal & (correct != 0) & (correct != 1)
        if bad.any():
            raise self.node_error(bad, "correct", correct, "a terminal node must record correct as 0 or 1")
        for name in ("weak_only_correct", "strong_only_correct"):
            values = self.queries.column(name).to_numpy()
            bad = (values != 0) & (values != 1)
            if bad.any():
                raise self.query_error(bad, name, values, "must be 0 or 1")
        counts = ("weak_only_tokens", "strong_only_tokens", "weak_only_steps", "strong_only_steps", "prompt_tokens")
        for name in (column.name for column in self.query_schema if column.name in counts):
            values = self.queries.column(name).to_numpy()
            bad = values < 0
            if bad.any():
                raise self.query_error(bad, name, values, "a count must be >= 0")
        cutoff = self.queries.column("strong_branch_cutoff").to_numpy()
        bad = np.isnan(cutoff)
        if bad.any():
            raise self.query_error(bad, "strong_branch_cutoff", cutoff, "must be a PRM level or +inf (no node budget), not NaN")


def content_digest(trees: RolloutTrees) -> str:
    """SHA-256 of a split's content, independent of the Parquet writer's bytes.

    PRM scores and other floats enter rounded to 1e-5 so that last-bit differences of
    floating-point libraries across machines do not change the digest of regenerated data. Text
    columns do not enter; query ids do, last.
    """
    digest = hashlib.sha256()
    for column in NODE_SCHEMA:
        if column.role != TEXT and column.name != "step_prm":
            digest.update(np.ascontiguousarray(getattr(trees, column.name), dtype=column.numpy_dtype).tobytes())
    digest.update(np.rint(trees.step_prm.astype(np.float64) * 1e5).astype(np.int64).tobytes())
    for column in QUERY_SCHEMA:
        # A column older schemas lack enters only when present, so their digests are unchanged.
        if column.role in (TEXT, IDENTIFIER) or getattr(trees, column.name) is None:
            continue
        values = np.asarray(getattr(trees, column.name), dtype=column.numpy_dtype if column.role != MATRIX else None)
        if values.dtype.kind == "f":
            values = np.rint(values.astype(np.float64) * 1e5)  # inf (no cutoff) stays inf
        digest.update(np.ascontiguousarray(values).tobytes())
    digest.update("\n".join(trees.query_id).encode())
    return digest.hexdigest()
