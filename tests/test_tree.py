"""Tests for trim_env.tree: the rollout-tree format, saving, loading and validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_MAX_STRONG_STEPS

from trim_env.data import open_split
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import (
    MANIFEST,
    SCHEMA_VERSION,
    RolloutTrees,
    TreeFormatError,
    content_digest,
    load_split,
    path_minimum,
    path_sum,
    read_manifest,
    save_dataset,
    trees_from_tables,
)

# ----------------------------------------------------------------------------------------------
# Helpers


def assert_trees_equal(actual: RolloutTrees, expected: RolloutTrees) -> None:
    """Every field equal: arrays in value, dtype and shape; lists and scalars by ==."""
    for spec in dataclasses.fields(RolloutTrees):
        a, e = getattr(actual, spec.name), getattr(expected, spec.name)
        if isinstance(e, np.ndarray):
            assert isinstance(a, np.ndarray), spec.name
            assert a.dtype == e.dtype, f"{spec.name}: dtype {a.dtype} != {e.dtype}"
            assert a.shape == e.shape, f"{spec.name}: shape {a.shape} != {e.shape}"
            assert np.array_equal(a, e), spec.name
        else:
            assert a == e, spec.name


def with_text(trees: RolloutTrees) -> RolloutTrees:
    """A copy of ``trees`` carrying step text, problems and answers (some entries missing)."""
    return dataclasses.replace(
        trees,
        step_text=[None if i % 7 == 0 else f"step {i}: x = {i} ✓" for i in range(trees.num_nodes)],
        problem=[f"problem {q}" for q in range(trees.num_queries)],
        answer=[None if q == 0 else str(q) for q in range(trees.num_queries)],
    )


def walk(trees: RolloutTrees, query: int, child: str) -> list[int]:
    """Nodes visited from ``query``'s root by always taking ``child`` until a node has none."""
    node, visited = int(trees.root[query]), []
    while True:
        trees.expand(np.array([node]))
        nxt = int(getattr(trees, child)[node])
        if nxt < 0:
            return visited
        visited.append(nxt)
        node = nxt


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def set_value(directory: Path, split: str, file_name: str, column: str, row: int, value: Any, dtype: pa.DataType | None = None) -> None:
    """Change one cell of a split file and record the new file hash in the manifest.

    The manifest hash is updated so that the content validation, not the hash check, has to
    catch the change. ``dtype`` rewrites the whole column with another type.
    """
    path = directory / split / file_name
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    values = table.column(column).to_pylist()
    values[row] = value
    field = table.schema.field(column)
    new_type = dtype if dtype is not None else field.type
    table = table.set_column(index, pa.field(column, new_type), pa.array(values, type=new_type))
    pq.write_table(table, path)
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"][split]["sha256"][file_name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def edit_manifest(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def all_file_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Round trip and subset


def budgeted_trees() -> RolloutTrees:
    """Trees grown under a node budget (finite strong_branch_cutoff for most queries)."""
    trees = SimulatedTrees(SimulatorParams.preset("math500-qwen1.5b-7b"), 2, np.arange(6), 3, 100)
    trees.expand_all()
    return trees.to_cached()


@pytest.mark.parametrize("text", ["without_text", "with_text", "budgeted"])
def test_save_load_round_trip_keeps_every_array_and_digest(tiny_trees: RolloutTrees, tmp_path: Path, text: str) -> None:
    trees = {"without_text": tiny_trees, "with_text": with_text(tiny_trees), "budgeted": budgeted_trees()}[text]
    if text == "budgeted":
        assert np.isfinite(trees.strong_branch_cutoff).any()
    manifest = save_dataset(
        tmp_path / "data", {"test": trees}, {"kind": "test"}, max_strong_steps=trees.max_strong_steps, node_budget=trees.node_budget
    )
    loaded = load_split(tmp_path / "data", "test")
    assert_trees_equal(loaded, trees)
    assert loaded.features.shape == (trees.num_queries, tiny_trees.features.shape[1])
    np.testing.assert_array_equal(loaded.strong_branch_cutoff, trees.strong_branch_cutoff)
    if text != "with_text":
        assert loaded.step_text is None and loaded.problem is None and loaded.answer is None
    else:
        assert loaded.step_text[0] is None and loaded.step_text[1] == "step 1: x = 1 ✓"
        assert loaded.answer[0] is None
    assert content_digest(loaded) == content_digest(trees)
    assert manifest["splits"]["test"] == {
        "n_queries": trees.num_queries,
        "n_nodes": trees.num_nodes,
        "sha256": manifest["splits"]["test"]["sha256"],
    }
    assert read_manifest(tmp_path / "data") == manifest


def test_saved_dataset_reloads_identically_from_the_fixture(tiny_dataset_dir: Path, tiny_trees: RolloutTrees) -> None:
    again = load_split(tiny_dataset_dir, "test")
    assert_trees_equal(again, tiny_trees)
    assert content_digest(again) == content_digest(tiny_trees)
    manifest = read_manifest(tiny_dataset_dir)
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["max_strong_steps"] == tiny_trees.max_strong_steps == 2
    assert manifest["node_budget"] is None and tiny_trees.node_budget is None
    assert set(manifest["splits"]) == {"train", "test"}
    assert manifest["splits"]["test"]["n_queries"] == tiny_trees.num_queries == 12


def test_content_digest_changes_with_content(tiny_trees: RolloutTrees) -> None:
    prm = tiny_trees.step_prm.copy()
    prm[5] = prm[5] / 2
    assert content_digest(dataclasses.replace(tiny_trees, step_prm=prm)) != content_digest(tiny_trees)
    # A last-bit difference in a score away from a rounding boundary (scores enter rounded to 1e-5) does not matter.
    scaled = tiny_trees.step_prm.astype(np.float64) * 1e5
    far = int(np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) > 0.2)[1])
    nudged = tiny_trees.step_prm.copy()
    nudged[far] = np.nextafter(nudged[far], np.float32(2))
    assert nudged[far] != tiny_trees.step_prm[far]
    assert content_digest(dataclasses.replace(tiny_trees, step_prm=nudged)) == content_digest(tiny_trees)


@pytest.mark.parametrize("split", ["train", "test"])
def test_weak_only_anchor_is_the_all_continue_path(tiny_dataset_dir: Path, split: str) -> None:
    trees = load_split(tiny_dataset_dir, split)
    for q in range(trees.num_queries):
        path = walk(trees, q, "weak_child")
        end = path[-1]
        assert trees.terminal[end]
        assert not trees.step_is_strong[path].any()
        assert trees.correct[end] == trees.weak_only_correct[q]
        assert trees.step_tokens[path].sum() == trees.weak_only_tokens[q]
        assert len(path) == trees.weak_only_steps[q]
        assert trees.path(end) == path


def test_subset_keeps_per_query_structure(tiny_trees: RolloutTrees, tmp_path: Path) -> None:
    trees = with_text(tiny_trees)
    picked = np.array([5, 0, 9])  # deliberately unsorted
    part = trees.subset(picked)
    assert part.num_queries == 3
    assert part.query_id == [trees.query_id[i] for i in picked]
    assert part.problem == [trees.problem[i] for i in picked]
    np.testing.assert_array_equal(part.features, trees.features[picked])
    np.testing.assert_array_equal(part.weak_only_correct, trees.weak_only_correct[picked])
    np.testing.assert_array_equal(part.strong_only_tokens, trees.strong_only_tokens[picked])
    for new, old in enumerate(picked):
        old_nodes = np.flatnonzero(trees.query == old)
        new_nodes = np.flatnonzero(part.query == new)
        assert len(old_nodes) == len(new_nodes)
        assert part.root[new] == new_nodes[0] and trees.root[old] == old_nodes[0]
        for name in ("depth", "strong_steps", "step_tokens", "step_prm", "step_is_strong", "terminal", "correct", "hidden_state", "path_min_prm"):
            np.testing.assert_array_equal(getattr(part, name)[new_nodes], getattr(trees, name)[old_nodes], err_msg=name)
        assert [part.step_text[i] for i in new_nodes] == [trees.step_text[i] for i in old_nodes]
        # Links point to the same relative positions inside the query's block.
        for name in ("parent", "weak_child", "strong_child"):
            old_links, new_links = getattr(trees, name)[old_nodes], getattr(part, name)[new_nodes]
            np.testing.assert_array_equal(new_links < 0, old_links < 0, err_msg=name)
            linked = old_links >= 0
            np.testing.assert_array_equal(
                np.searchsorted(new_nodes, new_links[linked]), np.searchsorted(old_nodes, old_links[linked]), err_msg=name
            )
        path = walk(part, new, "weak_child")
        assert part.terminal[path[-1]]
        assert part.correct[path[-1]] == part.weak_only_correct[new]
        assert part.step_tokens[path].sum() == part.weak_only_tokens[new]
    # The subset is a valid split of its own.
    save_dataset(tmp_path / "part", {"valid": part}, {}, max_strong_steps=2, node_budget=None)
    assert_trees_equal(load_split(tmp_path / "part", "valid"), part)


def test_empty_subset_saves_and_loads(tiny_trees: RolloutTrees, tmp_path: Path) -> None:
    empty = tiny_trees.subset(np.array([], dtype=np.int64))
    assert empty.num_queries == 0 and empty.num_nodes == 0
    save_dataset(tmp_path / "empty", {"test": empty}, {}, max_strong_steps=2, node_budget=None)
    loaded = load_split(tmp_path / "empty", "test")
    assert loaded.num_queries == 0 and loaded.num_nodes == 0


def test_path_minimum_is_the_running_minimum_along_each_path(tiny_trees: RolloutTrees) -> None:
    expected = path_minimum(tiny_trees.parent, tiny_trees.step_prm, tiny_trees.depth)
    np.testing.assert_array_equal(tiny_trees.path_min_prm, expected)
    assert (tiny_trees.path_min_prm[tiny_trees.root] == 1.0).all()
    for node in np.flatnonzero(tiny_trees.terminal)[:50]:
        path = tiny_trees.path(int(node))
        assert tiny_trees.path_min_prm[node] == pytest.approx(tiny_trees.step_prm[path].min())


def test_prefix_tokens_are_the_prompt_plus_the_steps_of_the_path(tiny_trees: RolloutTrees) -> None:
    assert tiny_trees.prompt_tokens is not None and (tiny_trees.prompt_tokens > 0).all()
    nodes = np.concatenate([tiny_trees.root, np.flatnonzero(tiny_trees.terminal)[:40], np.arange(1, 40)])
    expected = [int(tiny_trees.prompt_tokens[tiny_trees.query[node]]) + sum(int(tiny_trees.step_tokens[n]) for n in tiny_trees.path(int(node)))
                for node in nodes]
    assert tiny_trees.prefix_tokens(nodes).tolist() == expected
    assert tiny_trees.prefix_tokens(tiny_trees.root).tolist() == tiny_trees.prompt_tokens.tolist()


def test_subset_keeps_prompt_tokens_of_the_chosen_queries(tiny_trees: RolloutTrees) -> None:
    chosen = np.array([5, 1, 8])
    part = tiny_trees.subset(chosen)
    assert tiny_trees.prompt_tokens is not None and part.prompt_tokens is not None
    np.testing.assert_array_equal(part.prompt_tokens, tiny_trees.prompt_tokens[chosen])
    leaf = int(np.flatnonzero(part.terminal)[0])
    original = int(np.flatnonzero(np.isin(tiny_trees.query, chosen))[leaf])
    assert part.prefix_tokens([leaf]).tolist() == tiny_trees.prefix_tokens([original]).tolist()


def test_the_dataset_card_explains_prompt_tokens(tiny_dataset_dir: Path) -> None:
    card = (tiny_dataset_dir / "README.md").read_text()
    assert "`prompt_tokens`" in card and "RolloutTrees.prefix_tokens" in card


def without_prompt_tokens(trees: RolloutTrees) -> RolloutTrees:
    """``trees`` as a dataset of schema version 2 holds them: no prompt tokens."""
    return dataclasses.replace(trees, prompt_tokens=None)


def test_trees_without_prompt_tokens_are_saved_and_loaded_as_schema_2_with_one_note(
    tiny_trees: RolloutTrees, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = without_prompt_tokens(tiny_trees)
    directory = tmp_path / "v2"
    manifest = save_dataset(directory, {"train": old.subset(np.arange(4)), "test": old}, {"kind": "simulator"}, 2, None)
    assert manifest["schema_version"] == 2
    assert "prompt_tokens" not in pq.read_schema(directory / "test" / "queries.parquet").names
    with caplog.at_level("WARNING", logger="trim_env.tree"):
        loaded = load_split(directory, "test")
        load_split(directory, "train")
    assert loaded.prompt_tokens is None
    assert content_digest(loaded) == content_digest(old)
    notes = [record.getMessage() for record in caplog.records if "prompt_tokens" in record.getMessage()]
    assert len(notes) == 1, notes  # once per dataset, not once per split
    assert str(directory) in notes[0] and "cost=strong_tokens" in notes[0]
    with pytest.raises(ValueError, match="prompt_tokens"):
        loaded.prefix_tokens(loaded.root)


def test_save_refuses_splits_of_which_only_some_carry_prompt_tokens(tiny_trees: RolloutTrees, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['test'\] carry prompt_tokens and \['train'\] do not"):
        save_dataset(tmp_path / "mixed", {"train": without_prompt_tokens(tiny_trees), "test": tiny_trees}, {"kind": "simulator"}, 2, None)


def test_a_schema_3_dataset_without_the_prompt_tokens_column_is_refused(tiny_trees: RolloutTrees, tmp_path: Path) -> None:
    directory = tmp_path / "bad"
    save_dataset(directory, {"test": without_prompt_tokens(tiny_trees)}, {"kind": "simulator"}, 2, None)
    edit_manifest(directory, lambda m: m.update(schema_version=3))
    with pytest.raises(TreeFormatError, match="missing column 'prompt_tokens'"):
        load_split(directory, "test", verify_hash=False)


def test_tables_without_prompt_tokens_build_trees_without_them(tiny_dataset_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    queries = pq.read_table(tiny_dataset_dir / "test" / "queries.parquet").drop_columns(["prompt_tokens"])
    nodes = pq.read_table(tiny_dataset_dir / "test" / "nodes.parquet")
    with caplog.at_level("WARNING", logger="trim_env.tree"):
        trees = trees_from_tables(nodes, queries, "nodes table", "queries table of an old dataset")
    assert trees.prompt_tokens is None
    assert any("queries table of an old dataset" in record.getMessage() for record in caplog.records)


def test_grown_nodes_carry_the_tokens_of_their_path(tiny_dataset_dir: Path, tiny_trees: RolloutTrees) -> None:
    store = open_split(tiny_dataset_dir, "test", persist=False)
    capped = np.flatnonzero((store.strong_steps == TINY_MAX_STRONG_STEPS) & ~store.terminal)[:30]
    store.grow_strong(capped)
    store.grow_weak(store.strong_child[capped])
    assert store.num_nodes > tiny_trees.num_nodes
    np.testing.assert_array_equal(store.path_tokens, path_sum(store.parent, store.step_tokens, store.depth))
    new = np.arange(tiny_trees.num_nodes, store.num_nodes)
    np.testing.assert_array_equal(store.prefix_tokens(new), store.snapshot().prefix_tokens(new))


# ----------------------------------------------------------------------------------------------
# Loading errors


def _missing_directory(d: Path) -> None:
    shutil.rmtree(d)


def _missing_manifest(d: Path) -> None:
    (d / MANIFEST).unlink()


def _manifest_not_json(d: Path) -> None:
    (d / MANIFEST).write_text('{"schema_version": 1, "splits": ')


def _schema_mismatch(d: Path) -> None:
    edit_manifest(d, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))


def _manifest_field_missing(d: Path) -> None:
    edit_manifest(d, lambda m: m.pop("content_hash"))


def _truncate_nodes(d: Path) -> None:
    path = d / "test" / "nodes.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage_queries(d: Path) -> None:
    (d / "test" / "queries.parquet").write_bytes(b"not a parquet file at all" * 10)


def _missing_nodes_file(d: Path) -> None:
    (d / "test" / "nodes.parquet").unlink()


FILE_ERRORS = {
    # name: (break the copy, load kwargs, exception, substrings of the message ("{d}" = directory))
    "missing_directory": (_missing_directory, {}, FileNotFoundError, ["{d}", "does not exist"]),
    "missing_manifest": (_missing_manifest, {}, TreeFormatError, ["{d}/manifest.json", "missing"]),
    "manifest_not_json": (_manifest_not_json, {}, TreeFormatError, ["{d}/manifest.json", "not valid JSON"]),
    "schema_version_mismatch": (
        _schema_mismatch,
        {},
        TreeFormatError,
        ["{d}/manifest.json", "schema_version", str(SCHEMA_VERSION + 1)],
    ),
    "manifest_field_missing": (_manifest_field_missing, {}, TreeFormatError, ["{d}/manifest.json", "content_hash"]),
    "unknown_split": (lambda d: None, {"split": "valid"}, TreeFormatError, ["{d}/manifest.json", "'valid'", "'test'"]),
    "truncated_nodes_hash": (
        _truncate_nodes,
        {},
        TreeFormatError,
        ["{d}/test/nodes.parquet", "does not match the manifest"],
    ),
    "truncated_nodes_no_hash": (
        _truncate_nodes,
        {"verify_hash": False},
        TreeFormatError,
        ["{d}/test/nodes.parquet", "cannot be read as Parquet"],
    ),
    "garbage_queries_no_hash": (
        _garbage_queries,
        {"verify_hash": False},
        TreeFormatError,
        ["{d}/test/queries.parquet", "cannot be read as Parquet"],
    ),
    "missing_nodes_file": (_missing_nodes_file, {}, TreeFormatError, ["{d}/test/nodes.parquet", "missing"]),
}


@pytest.mark.parametrize("case", list(FILE_ERRORS))
def test_load_rejects_broken_files_naming_the_file(tiny_dataset_dir: Path, tmp_path: Path, case: str) -> None:
    breaker, kwargs, error, fragments = FILE_ERRORS[case]
    directory = copy_dataset(tiny_dataset_dir, tmp_path / "data")
    breaker(directory)
    with pytest.raises(error) as info:
        load_split(directory, **{"split": "test", **kwargs})
    message = str(info.value)
    for fragment in fragments:
        assert fragment.format(d=directory) in message, f"{fragment!r} not in {message!r}"


def _node_of(trees: RolloutTrees, query: int, want: Callable[[RolloutTrees, np.ndarray], np.ndarray]) -> int:
    """First node of ``query`` satisfying ``want`` (a mask function over node ids)."""
    nodes = np.flatnonzero(trees.query == query)
    return int(nodes[want(trees, nodes)][0])


QUERY = 3  # corrupt a node of this query (not the first one, so the message must find the owner)

CONTENT_ERRORS = {
    # name: (file, column, pick row, new value, new column type or None, expected value text)
    "child_index_out_of_range": (
        "nodes.parquet",
        "weak_child",
        lambda t: _node_of(t, QUERY, lambda t, n: ~t.terminal[n]),
        10**6,
        None,
        "out of range",
    ),
    "negative_child_index": (
        "nodes.parquet",
        "strong_child",
        lambda t: _node_of(t, QUERY, lambda t, n: t.strong_child[n] >= 0),
        -7,
        None,
        "out of range",
    ),
    "child_before_parent": (
        "nodes.parquet",
        "weak_child",
        lambda t: _node_of(t, QUERY, lambda t, n: (~t.terminal[n]) & (t.depth[n] > 0)),
        "root",
        None,
        "out of range",
    ),
    "parent_index_out_of_range": (
        "nodes.parquet",
        "parent",
        lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0),
        10**6,
        None,
        "parent index out of range",
    ),
    "prm_nan": ("nodes.parquet", "step_prm", lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0), float("nan"), None, "[0, 1]"),
    "prm_above_one": ("nodes.parquet", "step_prm", lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0), 1.5, None, "[0, 1]"),
    "prm_negative": ("nodes.parquet", "step_prm", lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0), -0.25, None, "[0, 1]"),
    "zero_step_tokens": (
        "nodes.parquet",
        "step_tokens",
        lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0),
        0,
        None,
        "positive token count",
    ),
    "terminal_correct_7": ("nodes.parquet", "correct", lambda t: _node_of(t, QUERY, lambda t, n: t.terminal[n]), 7, None, "0 or 1"),
    "non_terminal_without_weak_child": (
        "nodes.parquet",
        "weak_child",
        lambda t: _node_of(t, QUERY, lambda t, n: ~t.terminal[n]),
        -1,
        None,
        "must have a weak child",
    ),
    "strong_steps_above_cap": (
        "nodes.parquet",
        "strong_steps",
        lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0),
        3,
        None,
        "cap K = 2",
    ),
    "query_index_out_of_range": (
        "nodes.parquet",
        "query",
        lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0),
        99,
        None,
        "query index out of range",
    ),
    "prm_wrong_type": ("nodes.parquet", "step_prm", lambda t: 0, 1.0, pa.float64(), "expected float"),
    "weak_only_correct_2": ("queries.parquet", "weak_only_correct", lambda t: QUERY, 2, None, "must be 0 or 1"),
    "root_out_of_range": ("queries.parquet", "root", lambda t: QUERY, 10**6, None, "root index out of range"),
    "root_with_parent": (
        "queries.parquet",
        "root",
        lambda t: QUERY,
        "non-root",
        None,
        "parent -1",
    ),
    # Structure: links agree both ways, depth, strong-step counts and W/S kinds follow the tree.
    "child_that_names_another_parent": (
        "nodes.parquet",
        "strong_child",
        lambda t: _node_of(t, QUERY, lambda t, n: (t.strong_child[n] >= 0) & ~t.terminal[np.maximum(t.weak_child[n], 0)]),
        lambda t, row: int(t.weak_child[t.weak_child[row]]),  # in range, same query, but its parent is another node
        None,
        "a child's parent must be the node that points to it",
    ),
    "root_of_another_query": ("queries.parquet", "root", lambda t: QUERY, lambda t, row: int(t.root[QUERY + 1]), None, "another query"),
    "depth_not_parent_plus_one": (
        "nodes.parquet",
        "depth",
        lambda t: int(t.weak_child[_node_of(t, QUERY, lambda t, n: (t.depth[n] > 0) & ~t.terminal[n])]),
        lambda t, row: int(t.depth[row]) + 1,
        None,
        "parent's depth + 1",
    ),
    "weak_child_written_by_the_strong_model": (
        "nodes.parquet",
        "step_is_strong",
        lambda t: int(t.weak_child[_node_of(t, QUERY, lambda t, n: ~t.terminal[n])]),
        True,
        None,
        "must be a weak step",
    ),
    "strong_child_written_by_the_weak_model": (
        "nodes.parquet",
        "step_is_strong",
        lambda t: int(t.strong_child[_node_of(t, QUERY, lambda t, n: t.strong_child[n] >= 0)]),
        False,
        None,
        "must be a strong step",
    ),
    "strong_steps_miscounted_below_the_cap": (
        "nodes.parquet",
        "strong_steps",
        lambda t: _node_of(t, QUERY, lambda t, n: (t.depth[n] > 0) & (t.strong_steps[n] == 0)),
        1,
        None,
        "must count the strong steps",
    ),
    # Nulls and ragged rows.
    "null_weak_child": ("nodes.parquet", "weak_child", lambda t: _node_of(t, QUERY, lambda t, n: ~t.terminal[n]), None, None, "null"),
    "null_terminal": ("nodes.parquet", "terminal", lambda t: _node_of(t, QUERY, lambda t, n: t.depth[n] > 0), None, None, "null"),
    "null_weak_only_tokens": ("queries.parquet", "weak_only_tokens", lambda t: QUERY, None, None, "null"),
    "ragged_features": ("queries.parquet", "features", lambda t: QUERY, [0.5], None, "ragged rows: this row holds 1 values"),
    "null_inside_features": (
        "queries.parquet", "features", lambda t: QUERY, lambda t, row: [None, *t.features[row, 1:].tolist()], None, "null"
    ),
    # Query records.
    "duplicate_query_id": ("queries.parquet", "query_id", lambda t: QUERY + 1, lambda t, row: t.query_id[QUERY], None, "used twice"),
    "negative_weak_only_tokens": ("queries.parquet", "weak_only_tokens", lambda t: QUERY, -5, None, "must be >= 0"),
    "negative_strong_only_tokens": ("queries.parquet", "strong_only_tokens", lambda t: QUERY, -1, None, "must be >= 0"),
    "negative_prompt_tokens": ("queries.parquet", "prompt_tokens", lambda t: QUERY, -3, None, "must be >= 0"),
    "null_prompt_tokens": ("queries.parquet", "prompt_tokens", lambda t: QUERY, None, None, "null"),
}


@pytest.mark.parametrize("case", list(CONTENT_ERRORS))
def test_load_rejects_bad_content_naming_file_query_and_field(
    tiny_dataset_dir: Path, tiny_trees: RolloutTrees, tmp_path: Path, case: str
) -> None:
    file_name, column, pick_row, value, new_type, why = CONTENT_ERRORS[case]
    trees = tiny_trees
    row = pick_row(trees)
    if value == "root":
        value = int(trees.root[QUERY])  # a child index that points backwards
    elif value == "non-root":
        value = int(trees.weak_child[trees.root[QUERY]])  # a node that has a parent
    elif callable(value):
        value = value(trees, row)
    directory = copy_dataset(tiny_dataset_dir, tmp_path / "data")
    set_value(directory, "test", file_name, column, row, value, new_type)
    with pytest.raises(TreeFormatError) as info:
        load_split(directory, "test")
    message = str(info.value)
    assert str(directory / "test" / file_name) in message
    assert f"'{column}'" in message
    assert why in message
    if new_type is None and column != "query":
        assert repr(trees.query_id[QUERY]) in message
    if file_name == "nodes.parquet" and new_type is None:
        assert f"node {row}" in message or f"row {row}" in message


@pytest.mark.parametrize("hashes", ["emptied", "one_file_missing", "not_a_digest"])
def test_an_incomplete_hash_map_is_an_error_not_a_skipped_check(tiny_dataset_dir: Path, tmp_path: Path, hashes: str) -> None:
    directory = copy_dataset(tiny_dataset_dir, tmp_path / "data")
    _truncate_nodes(directory)  # an emptied hash map must not let a broken file through unchecked
    change = {
        "emptied": lambda m: m["splits"]["test"].update(sha256={}),
        "one_file_missing": lambda m: m["splits"]["test"]["sha256"].pop("nodes.parquet"),
        "not_a_digest": lambda m: m["splits"]["test"]["sha256"].update({"nodes.parquet": ""}),
    }[hashes]
    edit_manifest(directory, change)
    with pytest.raises(TreeFormatError) as info:
        load_split(directory, "test")
    message = str(info.value)
    assert str(directory / MANIFEST) in message and "splits.test.sha256" in message and "incomplete" in message
    with pytest.raises(TreeFormatError, match="cannot be read as Parquet"):
        load_split(directory, "test", verify_hash=False)  # skipping hash checks is a choice the caller makes


def test_content_checks_are_not_skipped_without_hash_check(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    directory = copy_dataset(tiny_dataset_dir, tmp_path / "data")
    set_value(directory, "test", "nodes.parquet", "step_prm", 1, 1.5)
    with pytest.raises(TreeFormatError, match="step_prm"):
        load_split(directory, "test", verify_hash=False)


def test_other_split_still_loads_when_one_is_corrupt(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    directory = copy_dataset(tiny_dataset_dir, tmp_path / "data")
    _truncate_nodes(directory)
    assert load_split(directory, "train").num_queries == 48


# ----------------------------------------------------------------------------------------------
# Overwrite protection


def test_save_refuses_to_overwrite_and_leaves_files_untouched(tiny_trees: RolloutTrees, tmp_path: Path) -> None:
    directory = tmp_path / "data"
    first = tiny_trees.subset(np.arange(4))
    save_dataset(directory, {"test": first}, {"run": 1}, max_strong_steps=2, node_budget=None)
    before = all_file_bytes(directory)
    second = tiny_trees.subset(np.arange(4, 12))
    with pytest.raises(FileExistsError, match="manifest.json") as info:
        save_dataset(directory, {"test": second, "extra": second}, {"run": 2}, max_strong_steps=2, node_budget=None)
    assert str(directory / MANIFEST) in str(info.value)
    assert all_file_bytes(directory) == before
    assert not (directory / "extra").exists()
    assert_trees_equal(load_split(directory, "test"), first)

    save_dataset(directory, {"test": second}, {"run": 2}, max_strong_steps=2, node_budget=None, overwrite=True)
    loaded = load_split(directory, "test")
    assert loaded.num_queries == 8
    assert content_digest(loaded) == content_digest(second)
    assert read_manifest(directory)["source"] == {"run": 2}
    assert not list(directory.rglob("*.tmp"))
