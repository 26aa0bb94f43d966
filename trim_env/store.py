"""A rollout store that grows: trees whose missing children are asked of their source on demand.

:class:`GrowingTrees` holds a split's nodes in growable columns. When an episode (the environment,
the batch evaluator, the oracle, a baseline) needs a child that is not stored, it calls
:meth:`GrowingTrees.grow_weak` / :meth:`GrowingTrees.grow_strong`; the store asks its
:class:`TreeSource` for the children of all those nodes in one batched call, appends them and links
them. Content is keyed on the path (:mod:`trim_env.keys`): the simulator draws a node from its key,
so the same node has the same content whatever the order or batch it was grown in.

**Persistence.** A store opened from a dataset directory records what it grows in a
:class:`GrowthJournal`: append-only Parquet shards in ``<split>/growth/``, each written to a
temporary file and renamed to the SHA-256 of its bytes, so a reader never sees a half-written shard,
existing files are never rewritten, and two processes growing one dataset each add their own shards
(duplicates are dropped on load by key). Shard rows are linked by ``parent_key``, not row numbers.
A cheap source (the simulator) is flushed every :data:`FLUSH_ROWS` rows and at :meth:`flush`; an
expensive one (real models, ``persist_each_batch``) after every batch, before the nodes are used.

**Frozen.** A store without a source (a real collection without its servers), whose source is spent
(a token budget) or that was opened frozen never grows: it keeps the cap semantics of cached trees,
where a node without a strong child lets the weak model play on.

**Budgets.** A source with a budget (real models: decoded tokens per run) raises
:class:`GrowthBudgetSpent` from the first batch that would start with the budget spent, so a run
stops instead of silently playing on with cap semantics; every batch grown before is on disk.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trim_env.atomic import file_sha256, write_atomic
from trim_env.keys import child_key, node_keys
from trim_env.tree import NODE_COLUMNS, RolloutTrees, TreeFormatError

GROWTH_DIR = "growth"
#: A cheap source's pending rows are written as a shard once this many have accumulated.
FLUSH_ROWS = 200_000

#: Columns of a growth shard: the node's path key, its parent's key and its content.
SHARD_COLUMNS: dict[str, pa.DataType] = {
    "key": pa.uint64(),
    "parent_key": pa.uint64(),
    "step_is_strong": pa.bool_(),
    "step_tokens": pa.int32(),
    "step_prm": pa.float32(),
    "terminal": pa.bool_(),
    "correct": pa.int8(),
    "hidden_state": pa.int8(),
    "step_text": pa.string(),
}
#: Node content a source draws (the rest is structure the store derives from the parent).
CONTENT_COLUMNS = ("step_tokens", "step_prm", "terminal", "correct", "hidden_state")
_STORE_DTYPES: dict[str, Any] = {
    "key": np.uint64,
    **{name: dtype.to_pandas_dtype() for name, dtype in NODE_COLUMNS.items() if name != "step_text"},
    "path_min_prm": np.float32,
    "path_tokens": np.int64,
}


class GrowthBudgetSpent(RuntimeError):
    """A tree source's budget is spent: it grows no more children in this run.

    Raised before a batch is drawn, so nothing of that batch was appended; nodes grown before are
    kept (a source with a budget persists each batch, see :attr:`TreeSource.persist_each_batch`).
    """


@dataclass
class ChildBatch:
    """Children a source drew for (some of) the parents it was asked about.

    :param parents: the parents that got a child, a subset of those asked, in the same order.
    :param step_tokens: tokens of each child's step.
    :param step_prm: PRM score of each child's step, in [0, 1].
    :param terminal: the step ends the solution.
    :param correct: 0/1 for terminal children, -1 otherwise.
    :param hidden_state: the prefix's hidden state when known (the simulator), else -1.
    :param step_text: each step's text when known.
    """

    parents: np.ndarray
    step_tokens: np.ndarray
    step_prm: np.ndarray
    terminal: np.ndarray
    correct: np.ndarray
    hidden_state: np.ndarray
    step_text: list[str | None] | None = None


class TreeSource(Protocol):
    """Where missing children come from: the simulator, or generator/PRM backends."""

    #: Persist each batch before its nodes are used (expensive sources: real models).
    persist_each_batch: bool

    def draw(self, store: GrowingTrees, parents: np.ndarray, strong: bool, keys: np.ndarray) -> ChildBatch:
        """The weak proposal (``strong=False``) or strong rewrite at each of ``parents``.

        ``keys`` are the children's path keys (:func:`trim_env.keys.child_key`), in the order of
        ``parents``; a source that keys its randomness on the path draws from them.

        ``parents`` are non-terminal nodes without that child; for ``strong=True`` their weak
        child exists (a rewrite's length follows the step it replaces). A source that cannot draw
        every child returns the ones it drew and reports :meth:`available` False; a source whose
        budget is spent raises :class:`GrowthBudgetSpent` before drawing.
        """
        ...

    def available(self) -> bool:
        """Whether the source can still draw children."""
        ...

    def check_split(self, trees: RolloutTrees, where: str) -> None:
        """Refuse a split this source cannot grow (called when the split is opened).

        :param trees: the split's stored trees.
        :param where: the split's directory, for messages.
        :raises TreeFormatError: naming the file and field the source needs.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance (never credentials)."""
        ...


class _Growable:
    """Column storage that grows by doubling, so appending children is amortised O(1)."""

    def __init__(self, dtypes: dict[str, Any], capacity: int) -> None:
        self.size = 0
        self.columns = {name: np.empty(max(capacity, 1), dtype=dtype) for name, dtype in dtypes.items()}

    def append(self, values: dict[str, np.ndarray]) -> np.ndarray:
        count = len(next(iter(values.values())))
        needed = self.size + count
        capacity = len(next(iter(self.columns.values())))
        if needed > capacity:
            new_capacity = max(needed, 2 * capacity)
            for name, column in self.columns.items():
                grown = np.empty(new_capacity, dtype=column.dtype)
                grown[: self.size] = column[: self.size]
                self.columns[name] = grown
        ids = np.arange(self.size, needed, dtype=np.int64)
        for name, value in values.items():
            self.columns[name][self.size : needed] = value
        self.size = needed
        return ids


class GrowthJournal:
    """Append-only shards of the nodes grown in one split of a dataset on disk.

    :param split_dir: the split's directory (``DIR/<split>``); shards go to ``DIR/<split>/growth/``.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.directory = Path(split_dir) / GROWTH_DIR
        self._pending: list[pa.Table] = []
        self.pending_rows = 0
        self.written: list[Path] = []
        self.disabled_reason: str | None = None

    def record(self, rows: pa.Table) -> None:
        """Queue rows (a table with :data:`SHARD_COLUMNS`) for the next shard."""
        if self.disabled_reason is None and rows.num_rows:
            self._pending.append(rows)
            self.pending_rows += rows.num_rows

    def flush(self) -> Path | None:
        """Write the pending rows as one shard (temporary file, fsync, rename); returns its path."""
        if not self._pending:
            return None
        table = pa.concat_tables(self._pending)
        self._pending, self.pending_rows = [], 0
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", write_statistics=False)
        content = sink.getvalue().to_pybytes()
        target = self.directory / f"{hashlib.sha256(content).hexdigest()[:32]}.parquet"
        try:
            write_atomic(target, lambda scratch: scratch.write_bytes(content), durable=True)
        except OSError as error:
            # A read-only dataset (an installed package, a shared mount) still grows in memory.
            self.disabled_reason = f"cannot write growth shards to {self.directory} ({error}); grown nodes stay in memory"
            warnings.warn(self.disabled_reason, stacklevel=2)
            return None
        self.written.append(target)
        return target

    def shards(self) -> list[Path]:
        """The shards on disk, in name order (temporary files of writers in flight are hidden ``.tmp`` files)."""
        return sorted(self.directory.glob("*.parquet")) if self.directory.is_dir() else []

    def read(self, verify_hash: bool = True) -> pa.Table | None:
        """Every shard's rows, concatenated in name order (``None`` when there are none).

        :param verify_hash: check that each shard's bytes hash to its name (detects corruption).
        :raises TreeFormatError: naming the shard that is corrupt or has the wrong columns.
        """
        tables = []
        for path in self.shards():
            if verify_hash and not file_sha256(path).startswith(path.stem):
                raise TreeFormatError(
                    f"{path}: content does not hash to the shard's name: the file is corrupt or was changed; "
                    "delete it (the nodes it held are grown again on demand)"
                )
            try:
                table = pq.read_table(path)
            except (pa.ArrowInvalid, OSError) as error:
                raise TreeFormatError(f"{path}: cannot be read as Parquet ({error}); delete it to grow its nodes again") from error
            for name, dtype in SHARD_COLUMNS.items():
                if name not in table.column_names or table.schema.field(name).type != dtype:
                    raise TreeFormatError(f"{path}: column {name!r} is missing or not of type {dtype}")
            tables.append(table.select(list(SHARD_COLUMNS)))
        return pa.concat_tables(tables) if tables else None


class GrowingTrees(RolloutTrees):
    """Rollout trees held in growable columns and extended on demand by a :class:`TreeSource`.

    Node arrays are views of the growable storage: re-read them after growing.

    :param base: the stored trees to start from (a loaded split, or roots only).
    :param source: where missing children come from (``None``: the store never grows).
    :param journal: where grown nodes are persisted (``None``: memory only).
    :param max_strong_steps: grow strong children only below this many strong steps per path
        (``None``: no cap).
    :param frozen: never grow, even with a source.
    """

    #: Path key of every node (:mod:`trim_env.keys`), published with the other node columns.
    key: np.ndarray

    def __init__(
        self,
        base: RolloutTrees,
        source: TreeSource | None = None,
        journal: GrowthJournal | None = None,
        max_strong_steps: int | None = None,
        frozen: bool = False,
    ) -> None:
        for name in ("query_id", "root", "level", "features", "weak_only_correct", "weak_only_tokens", "weak_only_steps",
                     "strong_only_correct", "strong_only_tokens", "strong_only_steps", "strong_branch_cutoff", "problem",
                     "answer", "root_key", "prompt_tokens", "node_budget"):
            setattr(self, name, getattr(base, name))
        self.source = source
        self.journal = journal
        self.max_strong_steps = max_strong_steps
        self.frozen = frozen
        # Headroom for growth without an early reallocation of every column.
        self._nodes = _Growable(_STORE_DTYPES, capacity=base.num_nodes + base.num_nodes // 8 + 1024)
        columns = {name: getattr(base, name) for name in _STORE_DTYPES if name != "key"}  # path arrays: derived by base
        assert base.root_key is not None  # RolloutTrees derives it on construction
        columns["key"] = node_keys(base.root_key, base.root, base.parent, base.step_is_strong, base.depth)
        self._nodes.append(columns)
        self._publish()
        self._text: list[str | None] | None = list(base.step_text) if base.step_text is not None else None
        #: Counts changes of the node arrays, so that holders of views know when to re-read them.
        self.generation = 0

    def _publish(self) -> None:
        """Expose each node column as an attribute: a view of the growable storage's filled part
        (plain attributes, because the env and evaluator read them on every step)."""
        nodes = self._nodes
        for name, column in nodes.columns.items():
            self.__dict__[name] = column[: nodes.size]

    @property
    def step_text(self) -> list[str | None] | None:
        return self._text

    @step_text.setter
    def step_text(self, value: list[str | None] | None) -> None:
        self._text = value

    @property
    def can_grow(self) -> bool:  # type: ignore[override]  # RolloutTrees' constant False becomes a state here
        """Whether missing children are drawn from the source now."""
        return self.source is not None and not self.frozen and self.source.available()

    def strong_possible(self, nodes: np.ndarray) -> np.ndarray:
        """Whether regenerating at each of ``nodes`` is possible: its strong child exists or can grow."""
        present = self.strong_child[nodes] >= 0
        if not self.can_grow:
            return present
        growable = ~self.terminal[nodes]
        if self.max_strong_steps is not None:
            growable &= self.strong_steps[nodes] < self.max_strong_steps
        return present | growable

    # ------------------------------------------------------------------------------------------
    # Growth

    def grow_weak(self, nodes: np.ndarray) -> None:
        """Make sure every non-terminal node of ``nodes`` has its weak child (if the source can)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        missing = nodes[(self.weak_child[nodes] < 0) & ~self.terminal[nodes]]
        if missing.size and self.can_grow:
            self._grow(np.unique(missing) if missing.size > 1 else missing, strong=False)

    def grow_strong(self, nodes: np.ndarray) -> None:
        """Make sure each of ``nodes`` has its strong child where the cap allows (if the source can)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        wanted = (self.strong_child[nodes] < 0) & ~self.terminal[nodes]
        if self.max_strong_steps is not None:
            wanted &= self.strong_steps[nodes] < self.max_strong_steps
        missing = nodes[wanted]
        if missing.size and self.can_grow:
            missing = np.unique(missing) if missing.size > 1 else missing
            self.grow_weak(missing)  # a rewrite's length follows the weak step it replaces
            self._grow(missing[self.weak_child[missing] >= 0], strong=True)

    def expand(self, nodes: np.ndarray) -> None:
        """Grow both children of ``nodes`` (the strong one where the cap allows)."""
        self.grow_weak(nodes)
        self.grow_strong(nodes)

    def grow_complete(self, max_strong_steps: int) -> None:
        """Grow every query's tree breadth-first until all paths end: each node gets its weak child,
        and its strong child while its path holds fewer than ``max_strong_steps`` strong steps."""
        frontier = np.asarray(self.root, dtype=np.int64)
        while frontier.size:
            frontier = frontier[~self.terminal[frontier]]
            self.grow_weak(frontier)
            self.grow_strong(frontier[self.strong_steps[frontier] < max_strong_steps])
            strong = self.strong_child[frontier]
            strong = strong[(strong >= 0) & (self.strong_steps[frontier] < max_strong_steps)]
            frontier = np.concatenate([self.weak_child[frontier], strong]).astype(np.int64)

    def _grow(self, parents: np.ndarray, strong: bool) -> None:
        if parents.size == 0:
            return
        assert self.source is not None
        keys = child_key(self.key[parents], strong)
        batch = self.source.draw(self, parents, strong, keys)
        if batch.parents.size == 0:
            return
        if batch.parents.size != parents.size:  # a spent source drew only some of them
            keys = keys[np.isin(parents, batch.parents)]
        ids = self._append_children(batch.parents, np.full(batch.parents.size, strong), batch, keys)
        if self.journal is not None:
            columns = self._nodes.columns
            self.journal.record(
                pa.table(
                    {
                        "key": pa.array(columns["key"][ids], pa.uint64()),
                        "parent_key": pa.array(columns["key"][batch.parents], pa.uint64()),
                        "step_is_strong": pa.array(np.full(ids.size, strong), pa.bool_()),
                        **{name: pa.array(getattr(batch, name), SHARD_COLUMNS[name]) for name in CONTENT_COLUMNS},
                        "step_text": pa.array(batch.step_text if batch.step_text is not None else [None] * ids.size, pa.string()),
                    }
                )
            )
            if self.source is not None and (self.source.persist_each_batch or self.journal.pending_rows >= FLUSH_ROWS):
                self.journal.flush()

    def _append_children(
        self, parents: np.ndarray, strong: np.ndarray, content: ChildBatch | dict[str, Any], keys: np.ndarray
    ) -> np.ndarray:
        """Append one child per parent (parents already stored) and link it; returns the new ids.

        :param keys: the children's path keys (the caller has them already).
        """
        columns = self._nodes.columns
        value = (lambda name: getattr(content, name)) if isinstance(content, ChildBatch) else content.__getitem__
        prm = np.asarray(value("step_prm"), dtype=np.float32)
        ids = self._nodes.append(
            {
                "key": keys,
                "query": columns["query"][parents],
                "parent": parents.astype(np.int32),
                "weak_child": np.full(parents.size, -1, np.int32),
                "strong_child": np.full(parents.size, -1, np.int32),
                "depth": columns["depth"][parents] + 1,
                "strong_steps": columns["strong_steps"][parents] + strong,
                "step_tokens": value("step_tokens"),
                "step_prm": prm,
                "step_is_strong": strong,
                "terminal": value("terminal"),
                "correct": value("correct"),
                "hidden_state": value("hidden_state"),
                "path_min_prm": np.minimum(columns["path_min_prm"][parents], prm),
                "path_tokens": columns["path_tokens"][parents] + np.asarray(value("step_tokens"), dtype=np.int64),
            }
        )
        self.generation += 1
        self._publish()
        columns = self._nodes.columns  # append may have reallocated
        columns["strong_child"][parents[strong]] = ids[strong]
        columns["weak_child"][parents[~strong]] = ids[~strong]
        if self._text is not None or value("step_text") is not None:
            if self._text is None:
                self._text = [None] * (self.num_nodes - ids.size)
            texts = value("step_text")
            self._text.extend(texts if texts is not None else [None] * ids.size)
        return ids

    def attach(self, rows: pa.Table, where: str) -> int:
        """Link persisted rows (a journal's shards) into the trees by key; returns how many were new.

        Rows already stored or repeated (two processes grew the same node) are dropped; rows whose
        parent is neither stored nor among the rows are dropped with a warning (their nodes are
        grown again on demand).

        :param rows: a table with :data:`SHARD_COLUMNS`.
        :param where: the shards' directory, for messages.
        :raises TreeFormatError: a row's key is not the key of its path (parent key + action).
        """
        key = rows.column("key").to_numpy()
        parent_key = rows.column("parent_key").to_numpy()
        strong = rows.column("step_is_strong").to_numpy(zero_copy_only=False)
        wrong = child_key(parent_key, strong) != key
        if wrong.any():
            raise TreeFormatError(f"{where}: row {int(np.flatnonzero(wrong)[0])}: field 'key' is not the key of its parent and action")
        stored = self.key
        stored_order = np.argsort(stored)
        _, first = np.unique(key, return_index=True)
        candidates = np.sort(first[~_contains(stored, stored_order, key[first])])
        # Each candidate's parent is a stored node or another candidate; place candidates by their
        # distance from the stored part, so that parents are appended before their children.
        parent_stored = _contains(stored, stored_order, parent_key[candidates])
        candidate_order = np.argsort(key[candidates])
        parent_row = np.full(candidates.size, -1, dtype=np.int64)
        inner = ~parent_stored & _contains(key[candidates], candidate_order, parent_key[candidates])
        parent_row[inner] = candidate_order[np.searchsorted(key[candidates][candidate_order], parent_key[candidates][inner])]
        level = np.where(parent_stored, 1, 0)
        for _ in range(candidates.size):
            pending = (level == 0) & (parent_row >= 0)
            resolved = pending & (level[np.maximum(parent_row, 0)] > 0)
            if not resolved.any():
                break
            level[resolved] = level[parent_row[resolved]] + 1
        node_of_row = np.full(candidates.size, -1, dtype=np.int64)
        texts = rows.column("step_text")
        has_text = texts.null_count < rows.num_rows
        content_columns = {name: rows.column(name).to_numpy(zero_copy_only=False) for name in CONTENT_COLUMNS}
        for depth in range(1, int(level.max(initial=0)) + 1):
            at = np.flatnonzero(level == depth)
            rows_here = candidates[at]
            if depth == 1:
                parents = stored_order[np.searchsorted(stored[stored_order], parent_key[rows_here])]
            else:
                parents = node_of_row[parent_row[at]]
            content: dict[str, Any] = {name: values[rows_here] for name, values in content_columns.items()}
            content["step_text"] = [texts[int(i)].as_py() for i in rows_here] if has_text else None
            node_of_row[at] = self._append_children(parents.astype(np.int64), strong[rows_here], content, key[rows_here])
        orphans = int((level == 0).sum())
        if orphans:
            warnings.warn(f"{where}: {orphans} grown node(s) whose parent is not stored were skipped", stacklevel=2)
        return int(candidates.size - orphans)

    def prune_dangling(self) -> int:
        """Unlink stored nodes that a frozen store could not complete: non-terminal without a weak
        child (a run stopped between growing a node and its weak child). Returns how many."""
        removed = 0
        index = np.arange(self.num_nodes)
        while True:
            parent = np.maximum(self.parent, 0)
            linked = (self.parent >= 0) & ((self.weak_child[parent] == index) | (self.strong_child[parent] == index))
            dangling = np.flatnonzero(linked & ~self.terminal & (self.weak_child < 0))
            if dangling.size == 0:
                return removed
            columns = self._nodes.columns
            owner = self.parent[dangling]
            is_strong = self.step_is_strong[dangling]
            columns["strong_child"][owner[is_strong]] = -1
            columns["weak_child"][owner[~is_strong]] = -1
            removed += dangling.size

    def flush(self) -> Path | None:  # type: ignore[override]  # cached trees return None: nothing to persist
        """Persist what was grown since the last flush (no-op without a journal); returns the new shard, if any."""
        return self.journal.flush() if self.journal is not None else None

    # ------------------------------------------------------------------------------------------
    # Views

    def subset(self, query_indices: np.ndarray) -> GrowingTrees:
        """A new store of the given queries, sharing this one's source and journal."""
        return GrowingTrees(self.snapshot().subset(query_indices), self.source, self.journal, self.max_strong_steps, self.frozen)

    def snapshot(self, order: np.ndarray | None = None) -> RolloutTrees:
        """The nodes stored now as plain (frozen) :class:`RolloutTrees`.

        :param order: node ids in the order to store them (renumbered ``0..``); every parent must
            come before its children. Default: storage order.
        """
        order = np.arange(self.num_nodes) if order is None else np.asarray(order, dtype=np.int64)
        new_id = np.full(self.num_nodes + 1, -1, dtype=np.int32)  # the last slot maps -1 to -1
        new_id[order] = np.arange(len(order), dtype=np.int32)
        links = ("parent", "weak_child", "strong_child")
        return RolloutTrees(
            **{name: (new_id[getattr(self, name)[order]] if name in links else getattr(self, name)[order])
               for name in NODE_COLUMNS if name != "step_text"},
            query_id=list(self.query_id),
            root=new_id[self.root],
            level=self.level,
            features=self.features,
            weak_only_correct=self.weak_only_correct,
            weak_only_tokens=self.weak_only_tokens,
            weak_only_steps=self.weak_only_steps,
            strong_only_correct=self.strong_only_correct,
            strong_only_tokens=self.strong_only_tokens,
            strong_only_steps=self.strong_only_steps,
            strong_branch_cutoff=self.strong_branch_cutoff,
            step_text=[self._text[i] for i in order] if self._text is not None else None,
            problem=self.problem,
            answer=self.answer,
            root_key=self.root_key,
            prompt_tokens=self.prompt_tokens,
            max_strong_steps=self.max_strong_steps,
            node_budget=self.node_budget,
        )


def _contains(stored: np.ndarray, order: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which ``keys`` occur in ``stored`` (``order`` sorts ``stored``)."""
    if stored.size == 0:
        return np.zeros(len(keys), dtype=bool)
    sorted_keys = stored[order]
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[position] == keys
