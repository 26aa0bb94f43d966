"""Rollout trees from 🤗 datasets and the Hub: rebuild trees from ``load_dataset`` output, fetch ``hf://`` paths.

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

A dataset directory pushed to the Hugging Face Hub as a dataset repository is named
``hf://datasets/OWNER/NAME[@REVISION][/SUBDIR]`` wherever trim takes a dataset directory
(``data.path``): :func:`download_hub_dataset` fetches that revision into the Hugging Face cache
(``huggingface_hub.snapshot_download``; ``HF_HUB_OFFLINE=1`` uses the cached copy alone) and
returns the local directory, which is then opened like any other (:func:`trim_env.data.resolve_dataset_dir`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pyarrow as pa

from trim_env.tree import MANIFEST, RolloutTrees, TreeFormatError, trees_from_tables

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


#: How a data path names a dataset repository on the Hub (the form ``huggingface_hub.HfFileSystem`` uses).
_HUB_DATASET = re.compile(r"hf://datasets/(?P<repo_id>[^/@]+/[^/@]+)(?:@(?P<revision>[^/]+))?(?:/(?P<subdir>.+))?")


def is_hub_path(path: object) -> bool:
    """Whether ``path`` names a Hub repository (starts with ``hf:``) rather than a local directory."""
    return isinstance(path, str) and path.startswith("hf:")


@dataclass(frozen=True)
class HubDataset:
    """A dataset directory inside a Hub dataset repository.

    :param repo_id: ``OWNER/NAME``.
    :param revision: a branch, tag or commit; ``None``: the default branch.
    :param subdir: the dataset directory's path inside the repository; ``None``: its root.
    """

    repo_id: str
    revision: str | None
    subdir: str | None

    @classmethod
    def parse(cls, path: str) -> HubDataset:
        """Parse ``hf://datasets/OWNER/NAME[@REVISION][/SUBDIR]``; a ``/`` in a revision is written ``%2F``.

        :raises ValueError: naming ``path`` and the expected form.
        """
        match = _HUB_DATASET.fullmatch(path)
        if match is None:
            raise ValueError(
                f"data path {path!r} is not a Hub dataset path: expected hf://datasets/OWNER/NAME[@REVISION][/SUBDIR] "
                "(a branch with a slash is written with %2F, e.g. @refs%2Fpr%2F1)"
            )
        subdir = (match["subdir"] or "").strip("/") or None
        if subdir is not None and ".." in subdir.split("/"):
            raise ValueError(f"data path {path!r}: the subdirectory {subdir!r} leaves the repository ('..')")
        revision = match["revision"]
        return cls(match["repo_id"], unquote(revision) if revision else None, subdir)


def download_hub_dataset(path: str) -> Path:
    """The local copy of the Hub dataset directory ``path``, fetched into the Hugging Face cache if needed.

    Only the dataset directory's files are fetched (``SUBDIR/**`` when a subdirectory is named).
    With ``HF_HUB_OFFLINE=1`` (or no network) the cached copy of the revision is used.

    :param path: ``hf://datasets/OWNER/NAME[@REVISION][/SUBDIR]``.
    :returns: the directory holding the dataset's ``manifest.json``.
    :raises FileNotFoundError: the repository, revision or dataset is not on the Hub, or the Hub cannot
        be reached and the revision is not cached (the message names ``path`` and what to do).
    :raises TreeFormatError: the fetched directory has no ``manifest.json`` (not a trim dataset).
    """
    from huggingface_hub import snapshot_download  # noqa: PLC0415  (only Hub paths need it)
    from huggingface_hub.errors import (  # noqa: PLC0415
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = HubDataset.parse(path)
    try:
        snapshot = snapshot_download(
            hub.repo_id, repo_type="dataset", revision=hub.revision,
            allow_patterns=[f"{hub.subdir}/**"] if hub.subdir is not None else None,
        )
    except LocalEntryNotFoundError as error:  # also a cached copy cut short by an interrupted download
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"data path {path}: revision {hub.revision or 'main'} of dataset {hub.repo_id} is not in the local Hugging Face "
            "cache (complete) and the Hub cannot be reached (offline: HF_HUB_OFFLINE is set, or no network). Fetch it "
            f"once with network access, or give a local dataset directory as data.path (huggingface_hub: {reason})"
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"data path {path}: dataset {hub.repo_id} has no revision {hub.revision!r} on the Hub") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"data path {path}: no dataset repository {hub.repo_id} on the Hub (or it is private: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ) from error
    except HfHubHTTPError as error:
        raise FileNotFoundError(f"data path {path}: the Hub refused the download ({error})") from error
    directory = Path(snapshot) / hub.subdir if hub.subdir is not None else Path(snapshot)
    if not (directory / MANIFEST).is_file():
        raise TreeFormatError(
            f"data path {path}: {MANIFEST} missing in the fetched copy {directory}; the repository "
            f"{'directory' if hub.subdir else 'root'} is not a trim rollout dataset (save one with trim_env.tree.save_dataset)"
        )
    return directory
