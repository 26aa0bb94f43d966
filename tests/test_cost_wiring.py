"""Cost models wired into the env, the vectorised env, the batch evaluator, training and the entry points (issue #14).

Costs are recomputed here call by call from the trees (``CostModel.call_cost`` of each weak, PRM and
strong call on the episode's path), independently of :func:`trim_env.cost.step_cost`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from stable_baselines3.common.vec_env import DummyVecEnv
from test_cost import PRICE, hand_tree
from test_store import play_side_by_side
from test_train import compose_config, overrides, run_script

from agents.base import TrainingData, check_cost_support
from agents.checkpoints import CHECKPOINT_DIR, CHECKPOINT_PREFIX, state_file
from agents.cli import frontier
from agents.cli.train import check_resumed_config, train
from agents.export import load_router
from agents.registry import registry
from agents.threshold import ThresholdRouter, ThresholdSettings
from trim_env.cost import CostModel, FlopsCost, PriceCost, StrongTokensCost, anchor_cost, path_cost
from trim_env.data import growth_source, load_trees
from trim_env.env import StepRoutingEnv
from trim_env.evaluation import anchor_points, results_config, run_episodes, run_thresholds, with_path_cost
from trim_env.features import LambdaRange
from trim_env.tree import RolloutTrees
from trim_env.vec_env import StepRoutingVecEnv

LAM, COST_UNIT = 0.02, 10.0


def calls_cost(model: CostModel, trees: RolloutTrees, node: int) -> float:
    """Natural cost of the episode that ended at ``node``: every step's calls on its path, priced one by one."""
    path = trees.path(node)
    assert trees.prompt_tokens is not None
    read = int(trees.prompt_tokens[trees.query[path[0]]])
    total = 0.0
    parent = int(trees.parent[path[0]])
    for child in path:
        proposal = int(trees.step_tokens[trees.weak_child[parent]])
        calls = [("weak", read, proposal), ("prm", read + proposal, 0)]
        if trees.step_is_strong[child]:
            calls += [("strong", read, int(trees.step_tokens[child])), ("prm", read + int(trees.step_tokens[child]), 0)]
        total += sum(float(model.call_cost(role, np.array([r]), np.array([d]))[0]) for role, r, d in calls)
        read += int(trees.step_tokens[child])
        parent = child
    return total


def play(env: StepRoutingEnv, query: int, actions: Any) -> tuple[float, dict[str, Any], int]:
    """Play ``query`` to its end (``actions(step)`` per decision); returns (summed reward, last info, decisions)."""
    env.reset(options={"query_index": query})
    total, done, step = 0.0, False, 0
    while not done:
        _, reward, done, _, info = env.step(actions(step))
        total += reward
        step += 1
    return total, info, step


def test_a_priced_episode_returns_correct_minus_lambda_times_its_calls_on_the_hand_tree() -> None:
    trees = hand_tree()
    env = StepRoutingEnv(trees, lam=LAM, cost_unit_tokens=COST_UNIT, shuffle=False, cost_model=PRICE)
    # Regenerate at the root, then continue: path 0-2-5. By hand, in USD per 1e6 (prices of PRICE):
    # root  weak(100 read, 10 out) 120 + prm(110) 440 + strong(100, 20) 500 + prm(120) 480;
    # node 2 weak(120, 6) 132 + prm(126) 504.
    natural = (120 + 440 + 500 + 480 + 132 + 504) / 1e6
    assert PRICE.unit == pytest.approx((96 * 3 + 480 * 10) / 1e6 / 480, rel=1e-12)
    total, info, _ = play(env, 0, lambda step: 1 if step == 0 else 0)
    assert info["node"] == 5 and info["correct"] == 0
    assert info["cost"] == pytest.approx(natural / PRICE.unit, rel=1e-12)
    assert info["strong_tokens"] == 20  # still the strong model's tokens
    assert total == pytest.approx(0 - LAM * natural / PRICE.unit / COST_UNIT, rel=1e-12)
    # A continue costs something too: its reward is negative before the end.
    env.reset(options={"query_index": 0})
    _, reward, done, _, _ = env.step(0)
    assert not done and reward == pytest.approx(-LAM * (120 + 440) / 1e6 / PRICE.unit / COST_UNIT, rel=1e-12)


@pytest.mark.parametrize("model", [PriceCost(), FlopsCost()], ids=["price", "flops"])
def test_priced_returns_pay_every_step_passive_ones_included(tiny_trees: RolloutTrees, model: CostModel) -> None:
    env = StepRoutingEnv(tiny_trees, lam=LAM, cost_unit_tokens=COST_UNIT, shuffle=False, cost_model=model)
    passive = 0
    for query in range(tiny_trees.num_queries):
        # Always regenerate: past the cap (K = 2) the env plays weak steps without asking.
        total, info, decisions = play(env, query, lambda step: 1)
        node = info["node"]
        passive += len(tiny_trees.path(node)) - decisions
        expected = calls_cost(model, tiny_trees, node) / model.unit
        assert info["cost"] == pytest.approx(expected, rel=1e-9)
        assert total == pytest.approx(info["correct"] - LAM * expected / COST_UNIT, rel=1e-9)
    assert passive > 0


def test_the_default_env_reports_its_strong_tokens_as_its_cost(tiny_trees: RolloutTrees) -> None:
    env = StepRoutingEnv(tiny_trees, lam=LAM, cost_unit_tokens=COST_UNIT, shuffle=False)
    assert isinstance(env.cost_model, StrongTokensCost)
    total, info, _ = play(env, 3, lambda step: step % 2)
    assert info["cost"] == float(info["strong_tokens"])
    assert total == pytest.approx(info["correct"] - LAM * info["strong_tokens"] / COST_UNIT, rel=1e-12)


def test_old_trees_without_prompt_tokens_are_refused_by_a_priced_env() -> None:
    with pytest.raises(ValueError, match="'prompt_tokens'"):
        StepRoutingEnv(hand_tree(prompt_tokens=None), cost_model=PRICE)


@pytest.mark.parametrize("observation", ["agg", "seq"])
def test_the_vec_env_equals_dummy_vec_env_of_single_envs_under_price(tiny_trees: RolloutTrees, observation: str) -> None:
    n_envs, seed, model = 4, 3, PriceCost()
    batched = StepRoutingVecEnv(tiny_trees, n_envs, observation, LAM, seed=seed, cost_model=model)
    single = DummyVecEnv([lambda rank=rank: StepRoutingEnv(tiny_trees, observation, LAM, seed=seed + rank, cost_model=model)
                          for rank in range(n_envs)])
    # Rewards equal exactly: computed in float64 by both, then stored as float32.
    finished, last_rewards = play_side_by_side(batched, single, 400, 0.5, np.testing.assert_array_equal)
    assert finished > 50
    assert (last_rewards < 0).any()


def test_a_conditioned_vec_env_pays_each_episodes_lambda_for_its_priced_cost(tiny_trees: RolloutTrees) -> None:
    model = PriceCost()
    env = StepRoutingVecEnv(tiny_trees, 3, "agg", seed=0, lambda_range=LambdaRange(0.001, 0.1), cost_model=model)
    env.reset()
    returns = np.zeros(3)
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(200):
        _, rewards, dones, infos = env.step((rng.random(3) < 0.5).astype(np.int64))
        returns += rewards
        for index in np.flatnonzero(dones):
            info = infos[index]
            expected = info["correct"] - info["lambda"] * info["cost"] / env.cost_unit_tokens
            assert returns[index] == pytest.approx(expected, rel=1e-5, abs=1e-5)
            returns[index] = 0.0
            checked += 1
    assert checked > 20


def test_run_episodes_costs_what_the_env_costs(tiny_trees: RolloutTrees) -> None:
    model = PriceCost()
    threshold = 0.6
    outcomes = run_episodes(tiny_trees, ThresholdRouter(threshold), cost_model=model)
    np.testing.assert_allclose(outcomes.cost, path_cost(model, tiny_trees, outcomes.final_node), rtol=1e-12)
    np.testing.assert_array_equal(with_path_cost(tiny_trees, run_episodes(tiny_trees, ThresholdRouter(threshold)), model).final_node,
                                  outcomes.final_node)
    env = StepRoutingEnv(tiny_trees, cost_unit_tokens=COST_UNIT, shuffle=False, cost_model=model)
    compared = 0
    for query in range(tiny_trees.num_queries):
        env.reset(options={"query_index": query})
        done, info = False, {}
        while not done:
            prm = float(tiny_trees.step_prm[tiny_trees.weak_child[env.current_node]])
            _, _, done, _, info = env.step(int(prm < threshold))
        assert info["node"] == outcomes.final_node[query]
        assert info["cost"] == outcomes.cost[query]  # same events, summed in the same order
        compared += 1
    assert compared == tiny_trees.num_queries
    # The default model's cost is the strong tokens.
    default = run_episodes(tiny_trees, ThresholdRouter(threshold))
    np.testing.assert_array_equal(default.cost, default.strong_tokens.astype(np.float64))


def test_anchor_points_report_cost_units_only_under_a_priced_model(tiny_trees: RolloutTrees) -> None:
    default = anchor_points(tiny_trees)
    assert all("cost_per_query" not in point for point in default) and default[0]["normalized_cost"] == 0.0
    model = PriceCost()
    weak, strong = anchor_points(tiny_trees, model)
    assert weak["strong_tokens_per_query"] == 0.0
    assert strong["strong_tokens_per_query"] == pytest.approx(float(np.mean(tiny_trees.strong_only_tokens)))
    assert weak["cost_per_query"] == pytest.approx(float(np.mean(anchor_cost(model, tiny_trees, "weak_only"))))
    assert strong["cost_per_query"] == pytest.approx(float(np.mean(anchor_cost(model, tiny_trees, "strong_only"))))
    assert weak["normalized_cost"] == pytest.approx(weak["cost_per_query"] / strong["cost_per_query"])
    assert 0.0 < weak["normalized_cost"] < 1.0


def test_threshold_fitting_scores_thresholds_by_the_priced_objective(tiny_trees: RolloutTrees) -> None:
    model = PriceCost()
    thresholds = [0.0, 0.3, 0.6, 0.9, 1.1]
    data = TrainingData(trees=tiny_trees, train_queries=np.arange(tiny_trees.num_queries), validation=tiny_trees, lam=0.05,
                        cost_unit_tokens=COST_UNIT, seed=0, dataset_content_hash="x", split="train", cost_model=model)
    fitted = ThresholdRouter.fit(ThresholdSettings(name="thr", router="agents.threshold.ThresholdRouter", thresholds=thresholds), data)
    scores = [float(np.mean(o.correct)) - 0.05 * float(np.mean(path_cost(model, tiny_trees, o.final_node))) / COST_UNIT
              for o in run_thresholds(tiny_trees, thresholds)]
    assert fitted.summary["threshold"] == thresholds[int(np.argmax(scores))]
    assert fitted.summary["validation_objective"] == pytest.approx(max(scores), rel=1e-9)
    assert fitted.router.config["cost"] == model.to_dict()
    default = ThresholdRouter.fit(ThresholdSettings(name="thr", router="agents.threshold.ThresholdRouter", thresholds=thresholds),
                                  TrainingData(trees=tiny_trees, train_queries=np.arange(tiny_trees.num_queries), validation=tiny_trees,
                                               lam=0.05, cost_unit_tokens=COST_UNIT, seed=0, dataset_content_hash="x", split="train"))
    assert "cost" not in default.router.config


def test_results_record_the_cost_model_only_when_it_is_not_strong_tokens() -> None:
    assert results_config({"lambda": 0.01, "cost": {"name": "strong_tokens"}}) == {"lambda": 0.01}
    priced = {"lambda": 0.01, "cost": PriceCost().to_dict()}
    assert results_config(priced) == priced


def test_train_agg_under_price_end_to_end(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agg"
    result = run_script("train.py", *overrides("agg", tiny_dataset_dir, "cost=price", f"hydra.run.dir={out}"))
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["cost"] == PriceCost().to_dict()
    weak, strong, point = results["points"]
    assert 0.0 < weak["cost_per_query"] < strong["cost_per_query"]
    assert point["cost_per_query"] > weak["cost_per_query"]  # a routed query pays a weak call and a PRM call per step
    assert point["normalized_cost"] == pytest.approx(point["cost_per_query"] / strong["cost_per_query"])
    assert point["strong_tokens_per_query"] >= 0.0 and strong["strong_tokens_per_query"] > 0.0
    assert json.loads((out / "router" / "config.json").read_text())["cost"] == PriceCost().to_dict()
    history = json.loads((out / "training_history.json").read_text())
    assert "validation/cost_per_query" in history[-1]
    # The frontier report reads the cost units (c_w > 0) from these results.
    reference, methods, skipped, axis = frontier.gather([out / "results.json"])
    assert not skipped and axis.name == "price"
    assert reference.weak_normalized_cost == pytest.approx(weak["normalized_cost"])
    assert methods["agg"][0]["strong_tokens_per_query"] == pytest.approx(point["cost_per_query"])


def test_a_default_run_records_no_cost_and_no_cost_fields(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(*overrides("thr", tiny_dataset_dir))
    results = train(cfg, tmp_path)
    assert "cost" not in results["config"]
    assert all("cost_per_query" not in point for point in results["points"])
    assert "cost" not in json.loads((tmp_path / "router" / "config.json").read_text())


def test_every_registered_kind_supports_cost_models_and_one_that_does_not_is_refused_naming_cost() -> None:
    names = registry().names
    assert len(names) >= 12 and all(getattr(registry().policy(name), "supports_cost_models", False) for name in names)
    plugin = type("PluginRouter", (), {})  # a third-party kind that never said it prices its points
    with pytest.raises(ValueError, match=r"cost = 'price': .* not supported by policy 'plugin'.*supports_cost_models"):
        check_cost_support(plugin, "plugin", PriceCost())
    check_cost_support(plugin, "plugin", StrongTokensCost())  # strong tokens: every kind


def test_a_run_killed_before_cost_existed_resumes_as_strong_tokens_only(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    checkpoint = run / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_512_steps.zip"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    state_file(checkpoint).write_bytes(b"")
    killed = OmegaConf.to_container(compose_config(*overrides("agg", tiny_dataset_dir)), resolve=True)
    del killed["cost"]  # type: ignore[arg-type,union-attr]  # what a run recorded before cost= existed
    (run / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(killed), run / ".hydra" / "config.yaml")
    check_resumed_config(compose_config(*overrides("agg", tiny_dataset_dir, f"resume={run}")))
    with pytest.raises(ValueError, match="records a run with cost.name = '<absent>', this run has cost.name = 'price'"):
        check_resumed_config(compose_config(*overrides("agg", tiny_dataset_dir, f"resume={run}", "cost=price")))


def test_an_exported_router_is_evaluated_under_another_cost_model(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    """A router trained in strong tokens, scored in dollars: each episode priced by its path (what issue #14 compares)."""
    train(compose_config(*overrides("thr", tiny_dataset_dir)), tmp_path / "thr")
    result = run_script("scripts/evaluate.py", "policy=router", f"policy.path={tmp_path / 'thr' / 'router'}", f"data.path={tiny_dataset_dir}",
                        "data.persist_growth=false", "cost=price", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["config"]["cost"] == PriceCost().to_dict()
    weak, strong, point = results["points"]
    router = load_router(tmp_path / "thr" / "router")
    test = load_trees(path=str(tiny_dataset_dir), split="test", grow=True, persist=False, source=growth_source(tiny_dataset_dir, None))
    outcomes = run_episodes(test, router)
    assert point["cost_per_query"] == pytest.approx(float(np.mean(path_cost(PriceCost(), test, outcomes.final_node))), rel=1e-12)
    assert point["normalized_cost"] == pytest.approx(point["cost_per_query"] / strong["cost_per_query"])
    assert point["strong_tokens_per_query"] == pytest.approx(float(np.mean(outcomes.strong_tokens)))
