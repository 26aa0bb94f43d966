"""Tests for trim_env.simulate (path-keyed simulator), its command line trim-simulate and trim_env.data.load_trees."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.cli.simulate import SimulateConfig, SimulatorOverrides, simulate
from trim_env.data import load_trees
from trim_env.simulate import (
    PRESET_DIR,
    SimulatedTrees,
    SimulatorParams,
    generate_dataset,
)
from trim_env.store import GrowingTrees
from trim_env.tree import (
    MAX_STEPS,
    STATE_CORRECT,
    STATE_DERAILED,
    STATE_LAST_STEP_WRONG,
    RolloutTrees,
    content_digest,
    load_split,
    read_manifest,
)

PRESET = "math500-qwen1.5b-7b"
REPO = Path(__file__).resolve().parents[1]
NODE_FIELDS = (
    "query",
    "depth",
    "strong_steps",
    "step_tokens",
    "step_prm",
    "step_is_strong",
    "terminal",
    "correct",
    "hidden_state",
    "path_min_prm",
)


def params(**overrides: float) -> SimulatorParams:
    return SimulatorParams.preset(PRESET, **overrides)


def cached(n_queries: int, seed: int, max_strong_steps: int | None, node_budget: int | None, **overrides: float) -> RolloutTrees:
    trees = SimulatedTrees(params(**overrides), seed, np.arange(n_queries), max_strong_steps, node_budget)
    trees.expand_all()
    return trees.to_cached()


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents.cli.simulate", *arguments], cwd=REPO, capture_output=True, text=True)


def all_file_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def match_lazy(trees: RolloutTrees, lazy: SimulatedTrees) -> np.ndarray:
    """Id in ``lazy`` of every node of ``trees``, found by replaying each node's action sequence."""
    mapping = np.full(trees.num_nodes, -1, dtype=np.int64)
    mapping[trees.root] = lazy.root
    frontier = np.asarray(trees.root, dtype=np.int64)
    while frontier.size:
        frontier = frontier[~trees.terminal[frontier]]
        lazy.expand(mapping[frontier])
        children = []
        for name in ("weak_child", "strong_child"):
            child = getattr(trees, name)[frontier]
            has = child >= 0
            lazy_child = getattr(lazy, name)[mapping[frontier[has]]]
            assert (lazy_child >= 0).all(), f"the lazy simulator lacks a {name} that the cached tree has"
            mapping[child[has]] = lazy_child
            children.append(child[has])
        frontier = np.concatenate(children)
    assert (mapping >= 0).all()
    return mapping


# ----------------------------------------------------------------------------------------------
# Command line: determinism, seeds, overrides, errors


@pytest.fixture(scope="module")
def cli_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    runs = {
        "seed0_a": ["seed=0"],
        "seed0_b": ["seed=0"],
        "seed1": ["seed=1"],
        "strong_weak": ["seed=0", "params.weak_step_logit=5.0"],
    }
    for name, extra in runs.items():
        result = run_cli(f"preset={PRESET}", "n_queries=40", f"out={base / name}", *extra)
        assert result.returncode == 0, result.stderr
        assert "content hash" in result.stdout
    return {name: base / name for name in runs}


def test_cli_same_seed_gives_byte_identical_files(cli_datasets: dict[str, Path]) -> None:
    first, second = all_file_bytes(cli_datasets["seed0_a"]), all_file_bytes(cli_datasets["seed0_b"])
    assert set(first) == {"manifest.json", "README.md", "train/queries.parquet", "train/nodes.parquet", "test/queries.parquet", "test/nodes.parquet"}
    assert first == second


def test_cli_different_seed_gives_different_content(cli_datasets: dict[str, Path]) -> None:
    for split in ("train", "test"):
        a = load_split(cli_datasets["seed0_a"], split)
        b = load_split(cli_datasets["seed1"], split)
        assert content_digest(a) != content_digest(b)
        assert not np.array_equal(a.features, b.features)
    assert read_manifest(cli_datasets["seed1"])["source"]["seed"] == 1


def test_cli_defaults_are_recorded_in_the_manifest(cli_datasets: dict[str, Path]) -> None:
    manifest = read_manifest(cli_datasets["seed0_a"])
    preset_values = json.loads((PRESET_DIR / f"{PRESET}.json").read_text())["params"]
    source = manifest["source"]
    assert source["kind"] == "simulator" and source["preset"] == PRESET and source["seed"] == 0
    assert source["n_queries"] == 40 and source["overrides"] == {}
    assert source["params"]["weak_step_logit"] == preset_values["weak_step_logit"]
    # The command line uses the same defaults as generate_dataset.
    defaults = inspect.signature(generate_dataset).parameters
    assert manifest["max_strong_steps"] == defaults["max_strong_steps"].default == SimulateConfig.max_strong_steps
    assert manifest["node_budget"] == defaults["node_budget"].default == SimulateConfig.node_budget
    assert SimulateConfig.test_fraction == defaults["test_fraction"].default
    assert SimulateConfig.overwrite is defaults["overwrite"].default is False
    assert {name: split["n_queries"] for name, split in manifest["splits"].items()} == {"train": 32, "test": 8}


def test_cli_parameter_override_changes_data_and_is_recorded(cli_datasets: dict[str, Path]) -> None:
    source = read_manifest(cli_datasets["strong_weak"])["source"]
    assert source["overrides"] == {"weak_step_logit": 5.0}
    assert source["params"]["weak_step_logit"] == 5.0
    for split in ("train", "test"):
        base = load_split(cli_datasets["seed0_a"], split)
        changed = load_split(cli_datasets["strong_weak"], split)
        assert content_digest(base) != content_digest(changed)
        # Common random numbers: a more accurate weak model never turns a right weak-only answer
        # wrong, and nothing on the strong-only path depends on the weak model's accuracy.
        assert (changed.weak_only_correct >= base.weak_only_correct).all()
        np.testing.assert_array_equal(changed.weak_only_steps, base.weak_only_steps)
        np.testing.assert_array_equal(changed.strong_only_correct, base.strong_only_correct)
        np.testing.assert_array_equal(changed.strong_only_steps, base.strong_only_steps)
    assert load_split(cli_datasets["strong_weak"], "train").weak_only_correct.mean() > load_split(
        cli_datasets["seed0_a"], "train"
    ).weak_only_correct.mean()


@pytest.mark.parametrize(
    ("argument", "fragments"),
    [
        ("preset=no-such-preset", ["unknown simulator preset 'no-such-preset'", PRESET]),
        ("params.weak_stpe_logit=5.0", ["weak_stpe_logit", "not in 'SimulatorOverrides'"]),
        ("params.weak_hazard_max=1.5", ["weak_hazard_max", "[0, 1]"]),
        ("params.weak_step_logit=abc", ["params.weak_step_logit", "'abc'"]),
        ("n_queries=many", ["n_queries", "'many'"]),
        ("node_budget=1.5", ["node_budget", "1.5"]),
    ],
    ids=["unknown_preset", "unknown_parameter", "invalid_parameter", "non_numeric_parameter", "non_numeric_size", "fractional_budget"],
)
def test_cli_rejects_bad_names_and_values_with_a_clear_error(tmp_path: Path, argument: str, fragments: list[str]) -> None:
    out = tmp_path / "out"
    arguments = [f"preset={PRESET}", "n_queries=4", "seed=0", f"out={out}"]
    key = argument.split("=")[0]
    arguments = [a for a in arguments if not a.startswith(key + "=")] + [argument]
    result = run_cli(*arguments)
    assert result.returncode != 0
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "no-such-preset"}, "unknown simulator preset 'no-such-preset'"),
        ({"weak_stpe_logit": 5.0}, r"unknown simulator parameter\(s\) \['weak_stpe_logit'\]"),
        ({"n_queries": 0}, "n_queries"),
        ({"test_fraction": 1.5}, "test_fraction"),
    ],
    ids=["unknown_preset", "unknown_parameter", "no_queries", "bad_test_fraction"],
)
def test_generate_dataset_raises_value_error_naming_the_bad_input(tmp_path: Path, kwargs: dict, match: str) -> None:
    arguments = {"preset": PRESET, "n_queries": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


def test_cli_names_the_missing_required_settings(tmp_path: Path) -> None:
    result = run_cli(f"preset={PRESET}", "n_queries=4", f"out={tmp_path / 'out'}")
    assert result.returncode != 0
    assert "missing required setting(s) ['seed']" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overwrite", [None, "False", "false", "0"], ids=["not_given", "False", "false", "zero"])
def test_cli_refuses_to_replace_an_existing_dataset_unless_overwrite_is_true(
    cli_datasets: dict[str, Path], tmp_path: Path, overwrite: str | None
) -> None:
    existing = tmp_path / "existing"
    shutil.copytree(cli_datasets["seed0_a"], existing)
    before = all_file_bytes(existing)
    extra = [] if overwrite is None else [f"overwrite={overwrite}"]
    result = run_cli(f"preset={PRESET}", "n_queries=40", "seed=5", f"out={existing}", *extra)
    assert result.returncode != 0
    assert "manifest.json already exists" in result.stderr and "overwrite=true" in result.stderr
    assert all_file_bytes(existing) == before


@pytest.mark.parametrize("overwrite", ["None", "yes", "2", "maybe"])
def test_cli_refuses_a_boolean_that_is_not_true_false_1_or_0(cli_datasets: dict[str, Path], tmp_path: Path, overwrite: str) -> None:
    existing = tmp_path / "existing"
    shutil.copytree(cli_datasets["seed0_a"], existing)
    before = all_file_bytes(existing)
    result = run_cli(f"preset={PRESET}", "n_queries=40", "seed=5", f"out={existing}", f"overwrite={overwrite}")
    assert result.returncode != 0
    assert f"overwrite={overwrite}" in result.stderr or f"Value '{overwrite}' is not a valid bool" in result.stderr
    assert all_file_bytes(existing) == before


def test_cli_overwrite_true_replaces_an_existing_dataset(cli_datasets: dict[str, Path], tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    shutil.copytree(cli_datasets["seed0_a"], existing)
    result = run_cli(f"preset={PRESET}", "n_queries=40", "seed=1", f"out={existing}", "overwrite=true")
    assert result.returncode == 0, result.stderr
    assert all_file_bytes(existing) == all_file_bytes(cli_datasets["seed1"])


def test_simulate_refuses_an_existing_dataset_in_process(cli_datasets: dict[str, Path]) -> None:
    before = all_file_bytes(cli_datasets["seed0_a"])
    config = SimulateConfig(preset=PRESET, n_queries=40, seed=5, out=str(cli_datasets["seed0_a"]))
    with pytest.raises(FileExistsError, match="manifest.json"):
        simulate(config)
    assert all_file_bytes(cli_datasets["seed0_a"]) == before


def test_simulator_overrides_list_every_simulator_parameter() -> None:
    assert [f.name for f in dataclasses.fields(SimulatorOverrides)] == [f.name for f in dataclasses.fields(SimulatorParams)]


# ----------------------------------------------------------------------------------------------
# Lazy and cached trees agree


@pytest.mark.parametrize(
    ("max_strong_steps", "node_budget"), [(2, None), (3, 60), (0, None)], ids=["cap2", "cap3_budget60", "cap0"]
)
def test_cached_tree_agrees_node_for_node_with_the_lazy_uncapped_simulator(max_strong_steps: int, node_budget: int | None) -> None:
    trees = cached(12, 7, max_strong_steps, node_budget)
    lazy = SimulatedTrees(params(), 7, np.arange(12))
    mapping = match_lazy(trees, lazy)
    for name in NODE_FIELDS:
        np.testing.assert_array_equal(getattr(lazy, name)[mapping], getattr(trees, name), err_msg=name)
    for name in ("level", "features", "weak_only_correct", "weak_only_tokens", "strong_only_correct", "strong_only_tokens"):
        np.testing.assert_array_equal(getattr(lazy, name), getattr(trees, name), err_msg=name)
    assert lazy.query_id == trees.query_id


def test_saved_dataset_agrees_with_the_lazy_simulator(tiny_dataset_dir: Path) -> None:
    train = load_split(tiny_dataset_dir, "train")
    lazy = SimulatedTrees(params(), 1, np.arange(train.num_queries), namespace=f"{PRESET}/train")
    mapping = match_lazy(train, lazy)
    for name in NODE_FIELDS:
        np.testing.assert_array_equal(getattr(lazy, name)[mapping], getattr(train, name), err_msg=name)


def test_query_draws_do_not_depend_on_the_other_queries() -> None:
    together = cached(10, 3, 2, None)
    alone = SimulatedTrees(params(), 3, np.array([7]), 2, None)
    alone.expand_all()
    part = together.subset(np.array([7]))
    single = alone.to_cached()
    assert content_digest(single) == content_digest(part)


def test_to_cached_rejects_partly_expanded_trees() -> None:
    trees = SimulatedTrees(params(), 2, np.arange(3))
    # The anchors grew the all-weak and all-strong paths; grow one more strong rewrite, not its continuation.
    trees.grow_strong(trees.weak_child[trees.root])
    assert ((trees.weak_child < 0) & ~trees.terminal).any()
    with pytest.raises(RuntimeError, match="complete trees"):
        trees.to_cached()


# ----------------------------------------------------------------------------------------------
# Structure of simulated trees


@pytest.mark.parametrize("max_strong_steps", [1, 2])
def test_strong_step_cap_holds_without_node_budget(tiny_trees: RolloutTrees, max_strong_steps: int) -> None:
    trees = tiny_trees if max_strong_steps == 2 else cached(10, 4, max_strong_steps, None)
    k = max_strong_steps
    open_nodes = ~trees.terminal
    has_strong = trees.strong_child >= 0
    assert trees.strong_steps.max() == k
    assert (has_strong == (open_nodes & (trees.strong_steps < k))).all()
    # strong_steps counts the strong steps on the path.
    linked = np.flatnonzero(trees.parent >= 0)
    np.testing.assert_array_equal(
        trees.strong_steps[linked], trees.strong_steps[trees.parent[linked]] + trees.step_is_strong[linked]
    )
    assert (trees.step_is_strong[trees.strong_child[has_strong]]).all()
    assert not (trees.step_is_strong[trees.weak_child[open_nodes]]).any()


def test_every_path_ends_in_a_terminal_with_a_recorded_answer(tiny_trees: RolloutTrees) -> None:
    trees = tiny_trees
    leaf = (trees.weak_child < 0) & (trees.strong_child < 0)
    assert (leaf == trees.terminal).all()
    assert np.isin(trees.correct[trees.terminal], [0, 1]).all()
    assert (trees.correct[~trees.terminal] == -1).all()
    assert (trees.weak_child[~trees.terminal] >= 0).all()


def test_node_budget_limits_tree_size() -> None:
    budget, k = 150, 3
    full = cached(12, 5, k, None)
    small = cached(12, 5, k, budget)
    full_sizes = np.bincount(full.query, minlength=12)
    small_sizes = np.bincount(small.query, minlength=12)
    cutoff = small.strong_branch_cutoff
    assert (small_sizes <= full_sizes).all()
    assert small_sizes.sum() < full_sizes.sum() / 2
    assert np.isfinite(cutoff).any()
    assert np.isinf(full.strong_branch_cutoff).all()
    # A query stops only once its tree holds the budget; one that never reaches it is complete.
    assert (small_sizes[np.isfinite(cutoff)] >= budget).all()
    np.testing.assert_array_equal(small_sizes[np.isinf(cutoff)], full_sizes[np.isinf(cutoff)])
    # A router that regenerates only proposals scoring below the query's cutoff always finds the
    # strong child it asks for (within the cap).
    reachable = below_cutoff_reachable(small)
    asks = reachable & ~small.terminal & (small.strong_steps < k)
    asks &= small.step_prm[np.maximum(small.weak_child, 0)] < cutoff[small.query]
    assert asks.any()
    assert (small.strong_child[asks] >= 0).all()
    assert (small.strong_child[small.strong_steps >= k] < 0).all()
    # ... and every path still ends in a terminal with a recorded answer.
    leaf = (small.weak_child < 0) & (small.strong_child < 0)
    assert (leaf == small.terminal).all()
    assert (small.weak_child[~small.terminal] >= 0).all()
    assert np.isin(small.correct[small.terminal], [0, 1]).all()


def below_cutoff_reachable(trees: RolloutTrees) -> np.ndarray:
    """Nodes reachable when regenerating only at proposals scoring below ``strong_branch_cutoff``."""
    reachable = np.zeros(trees.num_nodes, dtype=bool)
    reachable[trees.root] = True
    for depth in range(int(trees.depth.max())):
        nodes = np.flatnonzero(reachable & (trees.depth == depth) & ~trees.terminal)
        reachable[trees.weak_child[nodes]] = True
        regenerate = trees.step_prm[trees.weak_child[nodes]] < trees.strong_branch_cutoff[trees.query[nodes]]
        strong = trees.strong_child[nodes[regenerate]]
        reachable[strong[strong >= 0]] = True
    return reachable


def test_strong_only_anchor_is_the_all_regenerate_path_of_the_uncapped_simulator(tiny_dataset_dir: Path) -> None:
    train = load_split(tiny_dataset_dir, "train")  # capped at K = 2: the anchor is not a path in it
    lazy = SimulatedTrees(params(), 1, np.arange(train.num_queries), with_anchors=False, namespace=f"{PRESET}/train")
    for q in range(train.num_queries):
        node, tokens, steps = int(lazy.root[q]), 0, 0
        while not lazy.terminal[node]:
            lazy.expand(np.array([node]))
            node = int(lazy.strong_child[node])
            assert lazy.step_is_strong[node]
            tokens += int(lazy.step_tokens[node])
            steps += 1
        assert lazy.correct[node] == train.strong_only_correct[q]
        assert tokens == train.strong_only_tokens[q]
        assert steps == train.strong_only_steps[q]


def test_weak_only_anchor_is_the_all_continue_path_in_lazy_and_budgeted_trees() -> None:
    lazy = SimulatedTrees(params(), 6, np.arange(10), with_anchors=True)
    budgeted = cached(10, 6, 1, 30)
    for trees in (lazy, budgeted):
        for q in range(10):
            node, tokens, steps = int(trees.root[q]), 0, 0
            while not trees.terminal[node]:
                trees.expand(np.array([node]))
                node = int(trees.weak_child[node])
                tokens += int(trees.step_tokens[node])
                steps += 1
            assert trees.correct[node] == trees.weak_only_correct[q]
            assert tokens == trees.weak_only_tokens[q]
            assert steps == trees.weak_only_steps[q]


@pytest.mark.parametrize("source", ["dataset", "budgeted", "lazy_strong_path"])
def test_hidden_states_follow_the_rules(tiny_trees: RolloutTrees, source: str) -> None:
    if source == "dataset":
        trees: RolloutTrees = tiny_trees
    elif source == "budgeted":
        trees = cached(10, 8, 3, 40)
    else:
        trees = SimulatedTrees(params(), 8, np.arange(20))  # anchors expanded the all-weak and all-strong paths
    assert (trees.hidden_state[trees.root] == STATE_CORRECT).all()
    child = np.flatnonzero(trees.parent >= 0)
    parent_state = trees.hidden_state[trees.parent[child]]
    state = trees.hidden_state[child]
    from_correct = parent_state == STATE_CORRECT
    assert np.isin(state[from_correct], [STATE_CORRECT, STATE_LAST_STEP_WRONG]).all()
    assert (state[~from_correct] == STATE_DERAILED).all()
    # Both kinds occur, so the check above is not vacuous.
    assert (state == STATE_LAST_STEP_WRONG).any() and (state == STATE_DERAILED).any()


def test_no_path_is_longer_than_max_steps(tiny_trees: RolloutTrees) -> None:
    assert tiny_trees.depth.max() <= MAX_STEPS
    assert tiny_trees.terminal[tiny_trees.depth == MAX_STEPS].all()
    # Without any hazard every solution runs to the hard limit and ends exactly there.
    trees = cached(3, 0, 1, None, weak_hazard_max=0.0, strong_hazard_max=0.0)
    assert trees.depth.max() == MAX_STEPS
    assert (trees.depth[trees.terminal] == MAX_STEPS).all()
    assert (trees.weak_only_steps == MAX_STEPS).all() and (trees.strong_only_steps == MAX_STEPS).all()


@pytest.mark.parametrize("overrides", [{}, {"prm_noise_sd": 30.0, "prm_query_sd": 10.0}], ids=["preset", "extreme_noise"])
def test_prm_scores_are_in_the_unit_interval(overrides: dict[str, float]) -> None:
    trees = cached(10, 9, 2, None, **overrides)
    assert np.isfinite(trees.step_prm).all()
    assert ((trees.step_prm >= 0) & (trees.step_prm <= 1)).all()
    assert (trees.step_prm[trees.root] == 1.0).all()
    assert (trees.step_tokens[trees.parent >= 0] >= 1).all()


def test_levels_and_features_have_the_documented_shape() -> None:
    trees = cached(200, 0, 0, None)
    assert set(np.unique(trees.level)) <= {1, 2, 3, 4, 5}
    assert len(np.unique(trees.level)) == 5
    assert trees.features.shape == (200, params().n_features) and trees.features.dtype == np.float32


#: Content digests of simulated splits from the simulator of commit 8f90560, before trees carried
#: prompt lengths (:func:`content_digest` leaves out a column the trees do not hold).
DIGESTS_BEFORE_PROMPT_TOKENS = {
    (1, 12, 2, None): "c0f05be84609db2c77407264e92130414072276d79e708d7cb400d7921c2c981",
    (3, 10, 3, 60): "78700c8edcd4d3ba6cd07969d1a0d68c6bfd267f15935d7f0f6cc92d4bb988a3",
}


@pytest.mark.parametrize("setting", list(DIGESTS_BEFORE_PROMPT_TOKENS), ids=["cap2", "cap3_budget60"])
def test_prompt_lengths_leave_every_other_column_as_the_simulator_drew_it_before(setting: tuple[int, int, int, int | None]) -> None:
    seed, n_queries, max_strong_steps, node_budget = setting
    trees = SimulatedTrees(params(), seed, np.arange(n_queries), max_strong_steps, node_budget, namespace=f"{PRESET}/test")
    trees.expand_all()
    frozen = trees.to_cached()
    assert frozen.prompt_tokens is not None
    assert content_digest(dataclasses.replace(frozen, prompt_tokens=None)) == DIGESTS_BEFORE_PROMPT_TOKENS[setting]


def test_prompt_lengths_follow_the_math500_fit_and_grow_with_the_level() -> None:
    trees = SimulatedTrees(params(), 0, np.arange(3000), with_anchors=False, namespace=f"{PRESET}/train")
    prompt = trees.prompt_tokens
    assert prompt is not None and prompt.dtype == np.int64
    fitted = params()
    assert prompt.min() > fitted.prompt_template_tokens
    # The fit's mean: template + sum over levels of P(level) * exp(log-mean + sd^2 / 2) = 96.2 tokens.
    expected = fitted.prompt_template_tokens + sum(
        share * np.exp(mean + fitted.prompt_log_sd**2 / 2) for share, mean in zip(fitted.level_proportions, fitted.prompt_log_mean))
    assert prompt.mean() == pytest.approx(expected, rel=0.05)
    medians = [np.median(prompt[trees.level == level]) for level in range(1, 6)]
    assert medians == sorted(medians) and medians[-1] > 1.5 * medians[0]
    again = SimulatedTrees(params(), 0, np.arange(3000)[::-1], with_anchors=False, namespace=f"{PRESET}/train")
    np.testing.assert_array_equal(again.prompt_tokens, prompt[::-1])  # drawn from each query's own key


def test_prompt_length_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="prompt_log_mean"):
        params(prompt_log_mean=(3.0, 3.5))
    with pytest.raises(ValueError, match="prompt_log_sd = -0.1"):
        params(prompt_log_sd=-0.1)


# ----------------------------------------------------------------------------------------------
# trim_env.data.load_trees


def test_load_trees_with_a_preset_returns_a_lazy_uncapped_source(tiny_dataset_dir: Path) -> None:
    trees = load_trees(preset=PRESET, seed=1, n_queries=48, split="train")
    assert isinstance(trees, SimulatedTrees)
    assert trees.num_queries == 48 and trees.max_strong_steps is None and trees.node_budget is None
    # Lazy: only what the anchors visited exists; the rest appears on expand().
    open_nodes = (trees.strong_child < 0) & ~trees.terminal
    assert open_nodes.any()
    before = trees.num_nodes
    unexpanded = np.flatnonzero(open_nodes)[:5]
    trees.expand(unexpanded)
    assert trees.num_nodes > before
    assert (trees.weak_child[unexpanded] >= 0).all() and (trees.strong_child[unexpanded] >= 0).all()
    # The preset's train population with the same seed is the fixture's train split.
    train = load_split(tiny_dataset_dir, "train")
    assert trees.query_id == train.query_id
    np.testing.assert_array_equal(trees.weak_only_correct, train.weak_only_correct)
    np.testing.assert_array_equal(trees.strong_only_tokens, train.strong_only_tokens)


def test_load_trees_with_a_path_frozen_returns_the_cached_split(tiny_dataset_dir: Path) -> None:
    trees = load_trees(path=str(tiny_dataset_dir), split="train", grow=False)
    assert type(trees) is RolloutTrees
    assert trees.num_queries == 48 and trees.max_strong_steps == 2
    assert content_digest(trees) == content_digest(load_split(tiny_dataset_dir, "train"))


def test_load_trees_with_a_path_grows_from_the_manifest_simulator_without_a_cap(tiny_dataset_dir: Path) -> None:
    trees = load_trees(path=str(tiny_dataset_dir), split="train", persist=False)
    assert isinstance(trees, GrowingTrees) and trees.can_grow
    assert trees.num_queries == 48 and trees.max_strong_steps is None
    stored = load_split(tiny_dataset_dir, "train")
    assert trees.num_nodes == stored.num_nodes
    capped = np.flatnonzero(~stored.terminal & (stored.strong_child < 0))  # past K = 2 in the stored trees
    assert capped.size and trees.strong_possible(capped).all()


def test_load_trees_applies_simulator_overrides() -> None:
    trees = load_trees(preset=PRESET, seed=1, n_queries=5, overrides={"weak_step_logit": 5.0})
    assert trees.params.weak_step_logit == 5.0
    with pytest.raises(ValueError, match="weak_stpe_logit"):
        load_trees(preset=PRESET, n_queries=5, overrides={"weak_stpe_logit": 5.0})


def test_load_trees_rejects_both_path_and_preset(tiny_dataset_dir: Path) -> None:
    with pytest.raises(ValueError, match="not both") as info:
        load_trees(path=str(tiny_dataset_dir), preset=PRESET)
    assert str(tiny_dataset_dir) in str(info.value) and PRESET in str(info.value)
