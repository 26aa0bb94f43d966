"""The hindsight oracle and the baselines under cost models other than strong tokens (issue #14).

Hand checks on the hand-built tree of :mod:`test_cost` (one query, prompt 100 tokens, the round
test prices ``PRICE``/``LATENCY``), then the same rules on the tiny simulated dataset and the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cost import LATENCY, MIXED, PRICE, WEAK_ONLY, hand_tree

from agents.base import TrainingData, sweep_points
from agents.baselines.oracle import regenerate_is_better, run_oracle
from agents.baselines.query_level import route_queries
from agents.baselines.query_routers import AutoMixRouter
from agents.cli.common import compose, settings_of
from agents.first_step import FirstStepRouter, FirstStepSettings
from agents.registry import registry
from trim_env.cost import CostModel, FlopsCost, PriceCost, StrongTokensCost, anchor_cost, path_cost
from trim_env.env import StepRoutingEnv
from trim_env.evaluation import validation_objective
from trim_env.tree import RolloutTrees, load_split

ROOT = Path(__file__).resolve().parents[1]
COST_UNIT = 10.0

# ----------------------------------------------------------------------------------------------
# The oracle on the hand tree under PRICE (USD per 1e6; in*prefill + out*decoded per call):
#   root    continue: weak(100, 10) 120 + prm(110) 440                      = 560
#           regenerate: 560 + strong(100, 20) 500 + prm(120) 480             = 1540
#   node 1  continue: weak(110, 5) 120 + prm(115) 460                       = 580
#           regenerate: 580 + strong(110, 8) 410 + prm(118) 472              = 1462
#   node 2  continue: weak(120, 6) 132 + prm(126) 504                       = 636
#           regenerate: 636 + strong(120, 7) 430 + prm(127) 508              = 1574
# One cost unit is 10.6e-6 USD (PRICE.unit), λ is per COST_UNIT = 10 units. Regenerating at node 1
# (correct) beats continuing (wrong) iff 1 > λ (1462 − 580) / 106, i.e. λ < 0.1202; at node 2 iff
# λ < 106 / 938 = 0.1130. At the root continuing is always better (it is cheaper, and the best
# continuation below node 1 is worth at least that below node 2 at these λ).
HAND_EVENTS = {0: (560.0, 1540.0), 1: (580.0, 1462.0), 2: (636.0, 1574.0)}
HAND_DECISIONS = {0.05: [False, True, True], 0.115: [False, True, False], 0.2: [False, False, False]}


def _units(usd_per_million: float) -> float:
    return usd_per_million / 1e6 / PRICE.unit / COST_UNIT


def test_the_oracle_chooses_the_hand_computed_argmax_under_price() -> None:
    trees = hand_tree()
    lambdas = list(HAND_DECISIONS)
    choose_strong, root_value = regenerate_is_better(trees, lambdas, COST_UNIT, cost_model=PRICE)
    for j, lam in enumerate(lambdas):
        assert choose_strong[[0, 1, 2], j].tolist() == HAND_DECISIONS[lam], lam
        value = {}
        for node, correct_if_regenerated in ((1, 1), (2, 1)):
            keep, rewrite = (_units(c) * lam for c in HAND_EVENTS[node])
            value[node] = max(0 - keep, correct_if_regenerated - rewrite)
        keep, rewrite = (_units(c) * lam for c in HAND_EVENTS[0])
        assert root_value[0, j] == pytest.approx(max(value[1] - keep, value[2] - rewrite), rel=1e-12)
    # Strong tokens would regenerate at node 2 at λ = 0.115 (its weak and PRM calls are free there).
    assert regenerate_is_better(trees, [0.115], COST_UNIT)[0][[0, 1, 2], 0].tolist() == [False, True, True]


def test_the_oracles_episode_costs_the_path_it_ends_at_under_price() -> None:
    trees = hand_tree()
    mixed, weak_only = run_oracle(trees, [0.05, 0.2], COST_UNIT, cost_model=PRICE)
    assert mixed.final_node.tolist() == [MIXED] and weak_only.final_node.tolist() == [WEAK_ONLY]
    assert mixed.cost[0] == pytest.approx((560 + 1462) / 1e6 / PRICE.unit, rel=1e-12)
    assert weak_only.cost[0] == pytest.approx((560 + 580) / 1e6 / PRICE.unit, rel=1e-12)
    assert mixed.strong_tokens.tolist() == [8]  # still the strong model's decoded tokens


def _brute_force(trees: RolloutTrees, model: CostModel, lam: float) -> np.ndarray:
    """Per query, the best of correct − λ · path cost / unit over every terminal node (each reachable by one action sequence)."""
    terminal = np.flatnonzero(trees.terminal)
    returns = trees.correct[terminal] - lam * path_cost(model, trees, terminal) / COST_UNIT
    best = np.full(trees.num_queries, -np.inf)
    np.maximum.at(best, trees.query[terminal], returns)
    return best


@pytest.mark.parametrize("model", [PriceCost(), FlopsCost(), LATENCY], ids=["price", "flops", "latency"])
def test_the_oracle_value_is_the_best_priced_return_of_any_action_sequence(tiny_trees: RolloutTrees, model: CostModel) -> None:
    lambdas = [0.0, 0.01, 0.1, 1.0]
    _, root_value = regenerate_is_better(tiny_trees, lambdas, COST_UNIT, cost_model=model)
    for j, lam in enumerate(lambdas):
        np.testing.assert_allclose(root_value[:, j], _brute_force(tiny_trees, model, lam), rtol=1e-12, atol=1e-12)


def test_the_oracles_objective_is_the_priced_envs_return_passive_steps_included(tiny_trees: RolloutTrees) -> None:
    model, lam = PriceCost(), 0.002
    # Past the trees' cap (K = 2 strong steps) the env plays weak steps without asking; they cost too.
    choose_strong, root_value = regenerate_is_better(tiny_trees, [lam], COST_UNIT, cost_model=model)
    (outcomes,) = run_oracle(tiny_trees, [lam], COST_UNIT, cost_model=model)
    np.testing.assert_allclose(outcomes.cost, path_cost(model, tiny_trees, outcomes.final_node), rtol=1e-12)
    np.testing.assert_allclose(outcomes.correct - lam * outcomes.cost / COST_UNIT, root_value[:, 0], rtol=1e-12, atol=1e-12)
    env = StepRoutingEnv(tiny_trees, lam=lam, cost_unit_tokens=COST_UNIT, shuffle=False, cost_model=model)
    passive = 0
    for query in range(tiny_trees.num_queries):
        env.reset(options={"query_index": query})
        total, done, info = 0.0, False, {}
        while not done:
            _, reward, done, _, info = env.step(int(choose_strong[env.current_node, 0]))
            total += reward
        passive += int(info["cap_reached"])
        assert info["node"] == outcomes.final_node[query]
        assert total == pytest.approx(root_value[query, 0], rel=1e-9, abs=1e-12)
    assert passive > 0


# ----------------------------------------------------------------------------------------------
# Query-level routers on the hand tree: weak-only 15 tokens, strong-only 27 tokens, prompt 100.
#   price   (USD per 1e6) weak-only run weak(100, 15) 130, PRM check prm(100 + 15, 0) 460, strong-only run strong(100, 27) 570
#   latency (s)           weak-only 1 + 100/100 + 15/10 = 3.5, check 0.5 + 115/200 = 1.075, strong-only 2 + 100/50 + 27/5 = 9.4
HAND_QUERY = {"price": (PRICE, 130e-6, 460e-6, 570e-6), "latency": (LATENCY, 3.5, 1.075, 9.4)}


@pytest.mark.parametrize("name", list(HAND_QUERY))
def test_a_query_level_query_costs_its_anchor_runs_and_automix_its_check(name: str) -> None:
    model, weak, check, strong = HAND_QUERY[name]
    trees = hand_tree()
    unit = model.unit

    def cost(escalate: bool, checks_weak_solution: bool) -> float:
        return float(route_queries(trees, np.array([escalate]), model, checks_weak_solution).cost[0])

    # Decided from query inputs (classifier, knn): exactly one anchor run.
    assert cost(False, False) == pytest.approx(weak / unit, rel=1e-12)
    assert cost(True, False) == pytest.approx(strong / unit, rel=1e-12)
    # AutoMix: the weak run and its PRM check always, the strong run where escalated.
    assert cost(False, True) == pytest.approx((weak + check) / unit, rel=1e-12)
    assert cost(True, True) == pytest.approx((weak + check + strong) / unit, rel=1e-12)
    never, always = (AutoMixRouter("min", threshold).route(trees, model) for threshold in (0.0, 1.01))
    assert never.cost[0] == pytest.approx((weak + check) / unit, rel=1e-12)
    assert always.cost[0] == pytest.approx((weak + check + strong) / unit, rel=1e-12)
    # Under strong tokens only the escalated strong-only run costs: its tokens.
    assert route_queries(trees, np.array([True]), None, True).cost.tolist() == [27.0]
    assert route_queries(trees, np.array([False]), None, True).cost.tolist() == [0.0]


def test_query_level_sweeps_cost_one_anchor_per_query_and_automix_its_weak_run_and_check(tiny_dataset_dir: Path) -> None:
    model = PriceCost()
    test, train = load_split(tiny_dataset_dir, "test"), load_split(tiny_dataset_dir, "train")
    weak, strong = anchor_cost(model, test, "weak_only"), anchor_cost(model, test, "strong_only")
    assert test.prompt_tokens is not None
    check = model.call_cost("prm", test.prompt_tokens + test.weak_only_tokens, np.zeros(test.num_queries)) / model.unit
    for name in ("classifier", "knn", "automix-min", "automix-last"):
        kind = registry().policy(name)
        settings = settings_of(compose("evaluate", [f"policy={name}"]).policy)
        points = sweep_points(kind, settings, test, model, **({"training": train} if kind.sweep_trains else {}))
        assert len(points) > 2
        for point in points:
            escalated = point.outcomes.escalations.astype(bool)
            expected = weak + check + np.where(escalated, strong, 0.0) if name.startswith("automix") else np.where(escalated, strong, weak)
            np.testing.assert_allclose(point.outcomes.cost, expected, rtol=1e-12)


def test_query_level_and_first_step_fitting_score_by_the_priced_objective(tiny_trees: RolloutTrees) -> None:
    model, lam = PriceCost(), 0.05
    data = TrainingData(trees=tiny_trees, train_queries=np.arange(tiny_trees.num_queries), validation=tiny_trees, lam=lam,
                        cost_unit_tokens=COST_UNIT, seed=0, dataset_content_hash="x", split="train", cost_model=model)
    fitted = registry().policy("automix-min").fit(settings_of(compose("evaluate", ["policy=automix-min"]).policy), data)
    outcomes = fitted.router.route(tiny_trees, model)  # type: ignore[attr-defined]
    assert fitted.summary["validation_objective"] == pytest.approx(validation_objective(outcomes.correct, outcomes.cost, lam, COST_UNIT))
    assert fitted.router.config["cost"] == model.to_dict()
    first = FirstStepRouter.fit(FirstStepSettings(name="first_step", router="agents.first_step:FirstStepRouter"), data)
    [point] = sweep_points(FirstStepRouter, FirstStepSettings(name="first_step"), tiny_trees, model)
    priced_return = float(np.mean(point.outcomes.correct)) - lam * float(np.mean(path_cost(model, tiny_trees, point.outcomes.final_node))) / COST_UNIT
    assert first.summary["validation_objective"] == pytest.approx(priced_return, rel=1e-9)


@pytest.mark.parametrize("name", ["random", "first_step"])
def test_step_level_baselines_cost_the_paths_their_episodes_end_at(tiny_trees: RolloutTrees, name: str) -> None:
    model = FlopsCost()
    kind = registry().policy(name)
    settings = settings_of(compose("evaluate", [f"policy={name}"]).policy)
    priced, default = sweep_points(kind, settings, tiny_trees, model), sweep_points(kind, settings, tiny_trees, StrongTokensCost())
    for point, same_episodes in zip(priced, default, strict=True):
        np.testing.assert_array_equal(point.outcomes.final_node, same_episodes.outcomes.final_node)
        np.testing.assert_allclose(point.outcomes.cost, path_cost(model, tiny_trees, point.outcomes.final_node), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Command line


def test_baselines_cli_under_price_records_the_cost_model_and_prices_every_point(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "baselines.py"), f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
               f"hydra.run.dir={out}", "oracle.n_lambdas=10", "classifier.validation_fraction=0.3", "cost=price"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["cost"] == PriceCost().to_dict()
    weak, strong, *points = results["points"]
    assert {p["policy"] for p in points} == {"random", "automix-min", "automix-last", "classifier", "knn", "oracle"}
    for point in points:
        assert point["normalized_cost"] == pytest.approx(point["cost_per_query"] / strong["cost_per_query"], rel=1e-12)
    # τ = 0 never escalates: the classifier pays the weak-only run, AutoMix also the PRM's check of it.
    first = {p["policy"]: p for p in reversed(points)}
    assert first["classifier"]["parameter"] == first["automix-min"]["parameter"] == 0.0
    assert first["classifier"]["cost_per_query"] == pytest.approx(weak["cost_per_query"], rel=1e-12)
    assert first["automix-min"]["cost_per_query"] > weak["cost_per_query"]
    # The oracle's λ = 0 point reaches every correct answer the tree holds: no step-level router's point is more accurate.
    assert first["oracle"]["parameter"] == 0.0
    assert first["oracle"]["accuracy"] >= max(p["accuracy"] for p in points if p["policy"] in ("oracle", "random"))
