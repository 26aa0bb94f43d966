"""Path keys: a 64-bit identity for every node of a rollout tree, derived from the path that reaches it.

A query's root key comes from the query's identity; a child's key mixes its parent's key with the
action that leads to it (continue = the weak step, regenerate = the strong rewrite). A node's key
therefore names its path, whatever order or batch it was created in. The simulator draws a node's
content from its key (so content is keyed on the path), and grown nodes are persisted and linked
by key (so appended shards need no row numbers).
"""

from __future__ import annotations

import hashlib

import numpy as np

ACTION_CONTINUE, ACTION_REGENERATE = 0, 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ACTION_SALT = _GOLDEN * np.array([1, 2], dtype=np.uint64)  # golden * (action + 1), wrapping


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective scrambling of 64-bit keys (an array of any shape, at least 1-D).

    Array arithmetic wraps modulo 2**64 without warnings (only numpy scalars warn), which this
    hot path relies on instead of entering ``np.errstate`` on every call.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.uint64))
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def child_key(parent_key: np.ndarray, strong: np.ndarray | bool) -> np.ndarray:
    """Key of the child reached from ``parent_key`` by the weak step (False) or the strong rewrite (True)."""
    # ACTION_CONTINUE = 0 and ACTION_REGENERATE = 1 select the two salts.
    salt = _ACTION_SALT[np.asarray(strong, dtype=np.intp)]
    return mix(np.asarray(parent_key, dtype=np.uint64) ^ salt)


def text_key(text: str) -> np.uint64:
    """A 64-bit key of a string (SHA-256 based, stable across machines and Python versions)."""
    return np.uint64(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def simulated_query_keys(seed: int, namespace: str, query_indices: np.ndarray) -> np.ndarray:
    """Root keys of simulated queries: distinct for every (namespace, seed, index).

    :param seed: the simulator seed.
    :param namespace: the query population, ``"<preset>/<split>"`` for datasets, so that two
        presets, or the train and test splits of one preset, never simulate the same queries.
    :param query_indices: indices of the queries within the population.
    """
    with np.errstate(over="ignore"):
        seed_key = mix(np.array([seed], dtype=np.uint64) ^ np.uint64(0x5EED)) ^ mix(np.array([text_key(namespace)]))
        return mix(seed_key ^ mix(np.asarray(query_indices, dtype=np.uint64) + _GOLDEN))


def query_keys_from_ids(query_ids: list[str]) -> np.ndarray:
    """Root keys of queries known by id only (real collections, datasets without stored keys)."""
    return np.array([text_key(f"query:{query_id}") for query_id in query_ids], dtype=np.uint64)


def node_keys(root_key: np.ndarray, root: np.ndarray, parent: np.ndarray, step_is_strong: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Every node's key from its query's root key and the tree structure, level by level."""
    keys = np.zeros(len(parent), dtype=np.uint64)
    keys[root] = root_key
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(int(depth.max(initial=0)) + 2))
    for level in range(1, len(bounds) - 1):
        nodes = order[bounds[level] : bounds[level + 1]]
        keys[nodes] = child_key(keys[parent[nodes]], step_is_strong[nodes])
    return keys
