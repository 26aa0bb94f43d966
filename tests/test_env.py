"""Tests for trim_env.env.StepRoutingEnv: API conformance, determinism, rewards vs the batch evaluator."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import trim_env  # noqa: F401  (registers trim/StepRouting-v0)
from trim_env.env import DEFAULT_COST_UNIT_TOKENS, StepRoutingEnv
from trim_env.evaluation import DecisionBatch, run_episodes
from trim_env.features import TOKEN_FEATURE_HIGH, agg_features, seq_features
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import RolloutTrees

N_QUERIES = 40


@pytest.fixture(scope="module")
def params() -> SimulatorParams:
    return SimulatorParams.preset("math500-qwen1.5b-7b")


@pytest.fixture(scope="module")
def cached(params: SimulatorParams) -> RolloutTrees:
    trees = SimulatedTrees(params, 0, np.arange(N_QUERIES), max_strong_steps=2, node_budget=None)
    trees.expand_all()
    return trees.to_cached()


def lazy_trees(params: SimulatorParams, max_strong_steps: int | None = 2, n: int = N_QUERIES) -> SimulatedTrees:
    return SimulatedTrees(params, 0, np.arange(n), max_strong_steps=max_strong_steps, node_budget=None)


@pytest.fixture(params=["cached", "lazy"])
def trees(request: pytest.FixtureRequest, cached: RolloutTrees, params: SimulatorParams) -> RolloutTrees:
    return cached if request.param == "cached" else lazy_trees(params)


def play(env: StepRoutingEnv, policy, **reset_kwargs):
    """One episode; returns (observations, actions, rewards, infos) with the reset info first."""
    obs, info = env.reset(**reset_kwargs)
    observations, actions, rewards, infos = [obs], [], [], [info]
    while True:
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        actions.append(action)
        rewards.append(reward)
        infos.append(info)
        if terminated:
            return observations, actions, rewards, infos
        observations.append(obs)


def threshold(obs: np.ndarray) -> int:
    return int(obs[0] < 0.5)


class ThresholdPolicy:
    """The batch-evaluator twin of ``threshold``: regenerate iff the proposal's PRM score < 0.5."""

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.agg()[:, 0] < 0.5


# ----------------------------------------------------------------------------------------------
# API conformance


@pytest.mark.filterwarnings("error::UserWarning")
@pytest.mark.parametrize("observation", ["agg", "seq"])
def test_gymnasium_check_env_passes_without_warnings(trees: RolloutTrees, observation: str) -> None:
    gymnasium_check_env(StepRoutingEnv(trees, observation=observation), skip_render_check=True)


@pytest.mark.filterwarnings("ignore:Your observation  has an unconventional shape")
@pytest.mark.parametrize("observation", ["agg", "seq"])
def test_sb3_check_env_passes(trees: RolloutTrees, observation: str) -> None:
    sb3_check_env(StepRoutingEnv(trees, observation=observation), warn=True)


def test_registered_id_makes_the_env(cached: RolloutTrees) -> None:
    env = gymnasium.make("trim/StepRouting-v0", trees=cached, observation="seq", lam=0.05)
    assert isinstance(env.unwrapped, StepRoutingEnv)
    assert env.unwrapped.lam == 0.05
    obs, _ = env.reset(seed=1)
    assert obs.shape == (30, 4) and obs.dtype == np.float32


def test_spaces_are_discrete_two_and_bounded_float32_boxes(cached: RolloutTrees) -> None:
    agg, seq = StepRoutingEnv(cached, "agg"), StepRoutingEnv(cached, "seq")
    assert agg.action_space == gymnasium.spaces.Discrete(2)
    assert agg.observation_space.shape == (7,) and seq.observation_space.shape == (30, 4)
    for env in (agg, seq):
        space = env.observation_space
        assert space.dtype == np.float32
        assert np.isfinite(space.low).all() and np.isfinite(space.high).all()


def test_observations_stay_inside_the_observation_space(trees: RolloutTrees) -> None:
    rng = np.random.default_rng(0)
    for observation in ("agg", "seq"):
        env = StepRoutingEnv(trees, observation=observation)
        env.reset(seed=3)
        for _ in range(N_QUERIES):
            observations, *_ = play(env, lambda obs: int(rng.integers(2)))
            for obs in observations:
                assert env.observation_space.contains(obs)


# ----------------------------------------------------------------------------------------------
# Observations equal the feature functions


def random_decisions(env: StepRoutingEnv, episodes: int, seed: int):
    """Yield (observation, node) at every decision of a random play."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        while True:
            yield obs, env.current_node
            obs, _, terminated, _, _ = env.step(int(rng.integers(2)))
            if terminated:
                obs, _ = env.reset()
                break


def test_agg_observation_equals_agg_features_at_random_nodes(trees: RolloutTrees) -> None:
    env = StepRoutingEnv(trees, observation="agg")
    pairs = list(random_decisions(env, episodes=3 * N_QUERIES, seed=7))
    assert len(pairs) > 200
    nodes = np.array([node for _, node in pairs])
    expected = agg_features(env.trees, nodes)
    np.testing.assert_array_equal(np.stack([obs for obs, _ in pairs]), expected)


def test_seq_observation_equals_seq_features_at_random_nodes(trees: RolloutTrees) -> None:
    env = StepRoutingEnv(trees, observation="seq")
    pairs = list(random_decisions(env, episodes=3 * N_QUERIES, seed=8))
    assert len(pairs) > 200
    nodes = np.array([node for _, node in pairs])
    expected = seq_features(env.trees, nodes)
    np.testing.assert_array_equal(np.stack([obs for obs, _ in pairs]), expected)


def test_returned_observations_are_independent_copies(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached, observation="seq", shuffle=False)
    first, _ = env.reset(seed=0)
    kept = first.copy()
    env.step(0)
    np.testing.assert_array_equal(first, kept)


def test_token_channel_is_clipped_at_the_space_bound(cached: RolloutTrees) -> None:
    long_steps = dataclasses.replace(cached, step_tokens=np.full_like(cached.step_tokens, 50_000))
    for observation in ("agg", "seq"):
        env = StepRoutingEnv(long_steps, observation=observation)
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(0)
        assert obs.max() == TOKEN_FEATURE_HIGH
        assert env.observation_space.contains(obs)


# ----------------------------------------------------------------------------------------------
# Query order and reset options


def episode_trace(env: StepRoutingEnv, episodes: int, seed: int | None):
    rng = np.random.default_rng(123)
    trace = []
    for i in range(episodes):
        observations, actions, rewards, infos = play(
            env, lambda obs: int(rng.integers(2)), **({"seed": seed} if i == 0 else {})
        )
        trace.append((infos[0]["query_id"], [o.tolist() for o in observations], actions, rewards))
    return trace


@pytest.mark.parametrize("observation", ["agg", "seq"])
def test_same_seed_gives_same_query_ids_and_observations(trees: RolloutTrees, observation: str) -> None:
    first = episode_trace(StepRoutingEnv(trees, observation=observation), 25, seed=11)
    again = episode_trace(StepRoutingEnv(trees, observation=observation, seed=999), 25, seed=11)
    assert first == again


def test_reset_with_the_same_seed_restarts_the_same_order(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    ids = [env.reset(seed=5)[1]["query_id"]] + [env.reset()[1]["query_id"] for _ in range(9)]
    again = [env.reset(seed=5)[1]["query_id"]] + [env.reset()[1]["query_id"] for _ in range(9)]
    assert ids == again


def test_different_seeds_give_different_query_orders(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    order_a = [env.reset(seed=1)[1]["query_index"]] + [env.reset()[1]["query_index"] for _ in range(9)]
    order_b = [env.reset(seed=2)[1]["query_index"]] + [env.reset()[1]["query_index"] for _ in range(9)]
    assert order_a != order_b


def test_construction_seed_makes_the_first_order_deterministic(cached: RolloutTrees) -> None:
    a, b = StepRoutingEnv(cached, seed=4), StepRoutingEnv(cached, seed=4)
    assert [a.reset()[1]["query_index"] for _ in range(10)] == [b.reset()[1]["query_index"] for _ in range(10)]


def test_resets_walk_the_permutation_cyclically_covering_every_query(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    visited = [env.reset(seed=0)[1]["query_index"]] + [env.reset()[1]["query_index"] for _ in range(2 * N_QUERIES - 1)]
    assert sorted(visited[:N_QUERIES]) == list(range(N_QUERIES))
    assert visited[:N_QUERIES] != list(range(N_QUERIES))  # shuffled
    assert visited[N_QUERIES:] == visited[:N_QUERIES]


def test_shuffle_false_visits_queries_in_the_given_order(cached: RolloutTrees) -> None:
    subset = np.array([7, 3, 30, 12])
    env = StepRoutingEnv(cached, shuffle=False, queries=subset)
    visited = [env.reset(seed=0)[1]["query_index"]] + [env.reset()[1]["query_index"] for _ in range(7)]
    assert visited == [7, 3, 30, 12, 7, 3, 30, 12]


def test_queries_subset_restricts_the_episodes(cached: RolloutTrees) -> None:
    subset = np.arange(0, N_QUERIES, 3)
    env = StepRoutingEnv(cached, queries=subset)
    visited = {env.reset(seed=0)[1]["query_index"]} | {env.reset()[1]["query_index"] for _ in range(3 * len(subset))}
    assert visited == set(subset.tolist())
    assert env.num_queries == len(subset)


def test_query_index_option_plays_that_query_without_moving_the_order(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    expected = [env.reset(seed=3)[1]["query_index"]] + [env.reset()[1]["query_index"] for _ in range(3)]
    env.reset(seed=3)
    _, info = env.reset(options={"query_index": 17})
    assert info["query_index"] == 17 and info["query_id"] == cached.query_id[17]
    assert env.current_node == cached.root[17]
    assert [env.reset()[1]["query_index"] for _ in range(3)] == expected[1:]


def test_query_index_option_rejects_out_of_range_and_outside_the_subset(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached, queries=[1, 2, 3])
    with pytest.raises(ValueError, match="40"):
        env.reset(options={"query_index": 40})
    with pytest.raises(ValueError, match="-1"):
        env.reset(options={"query_index": -1})
    with pytest.raises(ValueError, match="not among"):
        env.reset(options={"query_index": 5})
    with pytest.raises(ValueError, match="query_index"):
        env.reset(options={"query_index": "3"})
    with pytest.raises(ValueError, match="bogus"):
        env.reset(options={"bogus": 1})
    assert env.reset(options={"query_index": 2})[1]["query_index"] == 2


# ----------------------------------------------------------------------------------------------
# Rewards and outcomes against the batch evaluator


@pytest.mark.parametrize("lam, unit", [(0.01, DEFAULT_COST_UNIT_TOKENS), (0.3, 40.0), (0.0, 100.0)])
def test_returns_match_batch_evaluator_for_a_threshold_policy(
    trees: RolloutTrees, params: SimulatorParams, lam: float, unit: float
) -> None:
    reference_trees = trees if type(trees) is RolloutTrees else lazy_trees(params)
    outcomes = run_episodes(reference_trees, ThresholdPolicy())
    env = StepRoutingEnv(trees, lam=lam, cost_unit_tokens=unit)
    for query in range(N_QUERIES):
        _, actions, rewards, infos = play(env, threshold, options={"query_index": query})
        final = infos[-1]
        assert final["correct"] == outcomes.correct[query]
        assert final["strong_tokens"] == outcomes.strong_tokens[query]
        assert final["escalations"] == outcomes.escalations[query] == sum(actions)
        assert final["step"] == outcomes.steps[query]
        expected_return = outcomes.correct[query] - lam * outcomes.strong_tokens[query] / unit
        assert math.isclose(sum(rewards), expected_return, rel_tol=1e-12, abs_tol=1e-12)


def test_each_regenerate_costs_lam_per_cost_unit_of_strong_tokens(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached, lam=0.2, cost_unit_tokens=50.0)
    env.reset(seed=0)
    node = env.current_node
    tokens = int(cached.step_tokens[cached.strong_child[node]])
    _, reward, terminated, _, info = env.step(1)
    correct = info.get("correct", 0) if terminated else 0
    assert math.isclose(reward, -0.2 * tokens / 50.0 + correct)
    assert info["strong_tokens"] == tokens and info["escalations"] == 1


def test_always_continue_earns_the_weak_only_correctness(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached, lam=0.5)
    for query in range(N_QUERIES):
        _, _, rewards, infos = play(env, lambda obs: 0, options={"query_index": query})
        assert sum(rewards) == cached.weak_only_correct[query]
        assert infos[-1]["strong_tokens"] == 0 and infos[-1]["step"] == cached.weak_only_steps[query]


# ----------------------------------------------------------------------------------------------
# The cap


def test_regenerate_past_cap_plays_weak_steps_to_the_end(params: SimulatorParams) -> None:
    lazy = lazy_trees(params, max_strong_steps=1)
    full = lazy_trees(params, max_strong_steps=1)
    full.expand_all()
    for trees in (lazy, full.to_cached()):
        env = StepRoutingEnv(trees)
        for query in range(N_QUERIES):
            env.reset(options={"query_index": query})
            assert env.trees.strong_possible(np.array([env.current_node]))[0]  # asked only where a rewrite exists or can grow
            _, reward, terminated, _, info = env.step(1)
            # With K = 1 no node after the rewrite has a strong child: the env is never asked
            # again and plays weak steps until the solution ends.
            assert terminated
            assert info["escalations"] == 1 and info["cap_reached"] == (info["step"] > 1)
            path = env.trees.path(env.current_node)
            assert info["step"] == len(path)
            assert env.trees.step_is_strong[path[0]] and not env.trees.step_is_strong[path[1:]].any()
            assert env.trees.terminal[path[-1]]


def test_env_never_asks_where_regenerating_is_impossible(trees: RolloutTrees) -> None:
    env = StepRoutingEnv(trees)
    pairs = list(random_decisions(env, episodes=2 * N_QUERIES, seed=4))
    nodes = np.array([node for _, node in pairs])
    assert env.trees.strong_possible(nodes).all()
    assert not env.trees.terminal[nodes].any()


def test_cap_reached_reports_whether_the_episode_hit_the_cap(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    reached = []
    for query in range(N_QUERIES):
        _, _, _, infos = play(env, lambda obs: 1, options={"query_index": query})
        final = infos[-1]
        reached.append(final["cap_reached"])
        if final["escalations"] < 2:  # the solution ended before the cap K = 2 was reached
            assert not final["cap_reached"]
    assert any(reached)


# ----------------------------------------------------------------------------------------------
# Degenerate data: queries without any decision node


def without_rewrites(trees: RolloutTrees, queries: list[int]) -> RolloutTrees:
    """A copy of ``trees`` where the given queries have no strong child anywhere."""
    strong_child = trees.strong_child.copy()
    strong_child[np.isin(trees.query, queries)] = -1
    return dataclasses.replace(trees, strong_child=strong_child)


def test_reset_skips_queries_without_a_decision_node_and_reports_them(cached: RolloutTrees) -> None:
    degenerate = without_rewrites(cached, [1, 2, 5])
    env = StepRoutingEnv(degenerate, shuffle=False)
    obs, info = env.reset(seed=0)
    assert info["query_index"] == 0 and info["skipped"] == []
    obs, info = env.reset()
    assert info["query_index"] == 3
    assert info["skipped"] == [(1, int(cached.weak_only_correct[1])), (2, int(cached.weak_only_correct[2]))]
    assert env.observation_space.contains(obs)
    infos = [env.reset()[1] for _ in range(N_QUERIES)]
    assert not {1, 2, 5} & {info["query_index"] for info in infos}
    assert {query for info in infos for query, _ in info["skipped"]} == {1, 2, 5}
    assert env.skipped_total == 2 + sum(len(info["skipped"]) for info in infos)


def test_query_index_option_on_a_query_without_a_decision_node_raises(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(without_rewrites(cached, [4]))
    with pytest.raises(ValueError, match="no decision node"):
        env.reset(options={"query_index": 4})
    with pytest.raises(RuntimeError):
        env.step(0)


def test_reset_raises_when_no_query_has_a_decision_node(params: SimulatorParams) -> None:
    env = StepRoutingEnv(lazy_trees(params, max_strong_steps=0, n=5))
    with pytest.raises(RuntimeError, match="none of this env's 5 queries"):
        env.reset(seed=0)


# ----------------------------------------------------------------------------------------------
# Info, errors, misc


def test_info_has_the_documented_fields_at_every_step(trees: RolloutTrees) -> None:
    env = StepRoutingEnv(trees, observation="seq")
    env.reset(seed=2)
    for _ in range(10):
        _, actions, rewards, infos = play(env, lambda obs: 1)
        for i, info in enumerate(infos):
            for key in ("query_index", "query_id", "strong_tokens", "escalations", "step"):
                assert key in info
            assert info["query_id"] == env.trees.query_id[info["query_index"]]
            assert info["escalations"] == sum(actions[:i])
            is_final = i == len(infos) - 1
            assert ("correct" in info) == is_final and ("cap_reached" in info) == is_final
        assert "skipped" in infos[0]
        final = infos[-1]
        assert final["correct"] in (0, 1) and isinstance(final["cap_reached"], bool)
        assert final["step"] == len(env.trees.path(env.current_node))
        assert math.isclose(sum(rewards), final["correct"] - 0.01 * final["strong_tokens"] / DEFAULT_COST_UNIT_TOKENS)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"observation": "pixels"}, "'pixels'"),
        ({"lam": -0.5}, "-0.5"),
        ({"lam": float("nan")}, "nan"),
        ({"lam": float("inf")}, "inf"),
        ({"lam": "cheap"}, "cheap"),
        ({"cost_unit_tokens": 0}, "cost_unit_tokens = 0"),
        ({"cost_unit_tokens": -10.0}, "-10.0"),
        ({"cost_unit_tokens": float("nan")}, "nan"),
        ({"queries": [0, 99]}, "99"),
        ({"queries": []}, "queries"),
        ({"queries": [3, 3]}, "duplicate"),
        ({"seed": -1}, "seed = -1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(cached: RolloutTrees, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("[", r"\[")) as error:
        StepRoutingEnv(cached, **kwargs)
    name = next(iter(kwargs))
    assert name in str(error.value)


def test_invalid_action_and_step_outside_an_episode_raise(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action = 2"):
        env.step(2)
    play(env, lambda obs: 0, options={"query_index": 0})
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_numpy_actions_are_accepted(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.int64(1))
    assert info["escalations"] == 1
    if not terminated:
        assert env.step(np.array(0))[4]["escalations"] == 1


def test_env_survives_pickling_and_deepcopy_mid_episode(cached: RolloutTrees) -> None:
    env = StepRoutingEnv(cached, observation="seq")
    env.reset(options={"query_index": 0})
    env.step(1)
    for clone in (copy.deepcopy(env), pickle.loads(pickle.dumps(env))):
        assert clone.current_node == env.current_node
        clone_result, env_result = clone.step(0), copy.deepcopy(env).step(0)
        np.testing.assert_array_equal(clone_result[0], env_result[0])
        assert clone_result[1:] == env_result[1:]
