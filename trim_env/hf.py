"""Rollout trees from 🤗 datasets: rebuild :class:`~trim_env.tree.RolloutTrees` from ``load_dataset`` output.

A dataset directory carries a dataset card (:func:`trim_env.tree.write_dataset_card`) with two
configs, so::

    queries = datasets.load_dataset(DIR, "queries")
    nodes = datasets.load_dataset(DIR, "nodes")
    trees = trees_from_datasets(queries, nodes)  # {"train": RolloutTrees, "test": RolloutTrees}

Node links are row positions within a split, so the rows must reach this module in the order trim
wrote them. Any shuffle, filter, sort or select of either config breaks the links; the tree checks
of :mod:`trim_env.tree` (every child's parent points back to it, roots belong to their query,
children come after their parent) then fail, and the error says that the rows were reordered or
filtered. Take subsets of the rebuilt trees with :meth:`RolloutTrees.subset` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from trim_env.tree import RolloutTrees, TreeFormatError, trees_from_tables

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

#: Added to a broken-link error of a split read from 🤗 datasets.
REORDERED_HINT = (
    "Node links (parent, weak_child, strong_child, root, query) are row positions within a split, so the rows "
    "were reordered or filtered (shuffle, filter, sort, select) after loading: pass the splits exactly as "
    "load_dataset returns them, and take subsets with RolloutTrees.subset after rebuilding the trees"
)


def _arrow(dataset: Dataset) -> pa.Table:
    """The rows of ``dataset`` in its current order (an indices mapping from shuffle/select applied)."""
    return dataset.with_format("arrow")[:]


def trees_from_datasets(
    queries: DatasetDict,
    nodes: DatasetDict,
    max_strong_steps: int | None = None,
    node_budget: int | None = None,
) -> dict[str, RolloutTrees]:
    """Rebuild every split's trees from the ``queries`` and ``nodes`` configs of a dataset directory.

    :param queries: ``datasets.load_dataset(DIR, "queries")``.
    :param nodes: ``datasets.load_dataset(DIR, "nodes")``.
    :param max_strong_steps: the cap K to check and record (the manifest's ``max_strong_steps``), or
        ``None``: not checked, the trees count as uncapped.
    :param node_budget: the manifest's ``node_budget``, recorded on the trees.
    :returns: split name -> trees, equal node for node to :func:`trim_env.tree.load_split` of the same directory.
    :raises TreeFormatError: the two configs hold different splits, a column is missing or of another
        type, or the links are broken (the message says the rows were reordered or filtered).
    """
    if set(queries) != set(nodes):
        raise TreeFormatError(
            f"the queries config has splits {sorted(queries)} and the nodes config {sorted(nodes)}; "
            "load both configs from the same dataset directory"
        )
    return {
        split: trees_from_tables(
            _arrow(nodes[split]),
            _arrow(queries[split]),
            nodes_name=f"datasets config 'nodes', split {split!r}",
            queries_name=f"datasets config 'queries', split {split!r}",
            max_strong_steps=max_strong_steps,
            node_budget=node_budget,
            link_hint=REORDERED_HINT,
        )
        for split in sorted(nodes)
    }
