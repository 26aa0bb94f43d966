"""TRIM-POMDP under cost models (issue #14): rewrite costs in cost units, planning, export and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_cost import PRICE, hand_tree
from test_train import compose_config, run_script

from agents.cli.train import split_validation, train
from agents.export import load_router
from agents.pomdp.fit import fit_model, regeneration_cost
from agents.pomdp.model import PomdpModel, uniform_bin_edges
from agents.pomdp.router import PomdpRouter, solve_router
from trim_env.cost import PriceCost, StrongTokensCost, TokenPrice
from trim_env.data import growth_source, load_trees
from trim_env.evaluation import run_episodes
from trim_env.tree import RolloutTrees, load_split

UNIT = 10.0


def test_the_regeneration_cost_of_a_step_and_token_bin_is_the_mean_strong_and_prm_calls_of_its_rewrites_by_hand() -> None:
    trees = hand_tree()
    nodes = np.array([0, 1, 2])  # step 1 at node 0, step 2 at nodes 1 and 2; proposals of 10, 5 and 6 tokens
    edges = np.array([0.0, 8.0, np.inf])  # bin 0: the proposals of nodes 1 and 2; bin 1: node 0's
    # In USD per 1e6 (PRICE: strong 3 in / 10 out, PRM 4 in): strong(prefix, rewrite) + prm(prefix + rewrite).
    # node 0 (prefix 100, rewrite 20): 300 + 200 + 480; node 1 (prefix 110, rewrite 8): 330 + 80 + 472;
    # node 2 (prefix 120, rewrite 7): 360 + 70 + 508. The weak proposal and its PRM call are paid
    # whether the step is regenerated or not: not counted.
    node_0, nodes_1_2 = (300 + 200 + 480) / 1e6 / PRICE.unit, (330 + 80 + 472 + 360 + 70 + 508) / 2 / 1e6 / PRICE.unit
    by_hand = np.array([
        [nodes_1_2, node_0],  # step 1: bin 0 has no pair there and pools steps >= 1
        [nodes_1_2, node_0],  # step 2: bin 1 has no pair from step 2 on and takes its mean over all steps
        [nodes_1_2, node_0],  # step 3: no pair at all from here: each bin's mean over all steps
    ])
    np.testing.assert_allclose(regeneration_cost(PRICE, trees, nodes, edges, horizon=3, min_samples=1), by_hand, rtol=1e-12)
    # A cell with fewer pairs than min_samples pools its bin from its step on: step 2, bin 0 still has two.
    np.testing.assert_allclose(regeneration_cost(PRICE, trees, nodes, edges, horizon=3, min_samples=2), by_hand, rtol=1e-12)
    # In strong tokens the extra cost of regenerating is the rewrite's length, which the model always charged.
    np.testing.assert_array_equal(regeneration_cost(StrongTokensCost(), trees, nodes, edges, horizon=2, min_samples=1),
                                  [[(8 + 7) / 2, 20], [(8 + 7) / 2, 20]])


def test_a_rewrite_late_in_a_solution_costs_more_than_an_early_one_under_price() -> None:
    trees = hand_tree()
    # Bins that split nodes 1 and 2 (proposals of 5 and 6 tokens): a cell each, at step 2 with node 0's cell at step 1.
    edges = np.array([0.0, 5.5, np.inf])
    table = regeneration_cost(PRICE, trees, np.array([0, 1, 2]), edges, horizon=2, min_samples=1)
    np.testing.assert_allclose(table[1], np.array([330 + 80 + 472, 360 + 70 + 508]) / 1e6 / PRICE.unit, rtol=1e-12)
    np.testing.assert_allclose(table[0, 1], (300 + 200 + 480) / 1e6 / PRICE.unit, rtol=1e-12)


@pytest.fixture(scope="module")
def train_trees(tiny_dataset_dir: Path) -> RolloutTrees:
    return load_split(tiny_dataset_dir, "train")


def fit(trees: RolloutTrees, cost_model=None) -> PomdpModel:
    return fit_model(trees, uniform_bin_edges(5), n_token_bins=3, token_evidence=True, cost_model=cost_model)


def test_a_model_fitted_in_strong_tokens_is_the_model_it_always_was(train_trees: RolloutTrees) -> None:
    default = fit(train_trees)
    assert fit(train_trees, StrongTokensCost()).to_dict() == default.to_dict()
    assert "rewrite_cost" not in default.to_dict() and "cost_model" not in default.to_dict()
    np.testing.assert_array_equal(default.regeneration_cost, default.rewrite_tokens)
    with_rewrite = np.flatnonzero(~train_trees.terminal & (train_trees.strong_child >= 0))
    # Every cell pooled from its step on: step 1's pools all steps, and the strong-token extra cost is the rewrite's length.
    pooled = regeneration_cost(StrongTokensCost(), train_trees, with_rewrite, default.token_edges, default.horizon, min_samples=10**9)
    np.testing.assert_allclose(pooled[0], default.rewrite_tokens, rtol=1e-12)


def test_a_priced_model_carries_its_rewrite_costs_and_cost_model_through_saving(train_trees: RolloutTrees, tmp_path: Path) -> None:
    model = fit(train_trees, PriceCost())
    assert model.cost_model == PriceCost().to_dict()
    with_rewrite = np.flatnonzero(~train_trees.terminal & (train_trees.strong_child >= 0))
    np.testing.assert_array_equal(model.regeneration_cost,
                                  regeneration_cost(PriceCost(), train_trees, with_rewrite, model.token_edges, model.horizon, 50))
    assert model.regeneration_cost.shape == (model.horizon, len(model.rewrite_tokens))
    # A rewrite pays the strong call and the PRM's reading of the whole prefix: more units than its strong tokens.
    assert (model.regeneration_cost > model.rewrite_tokens).all()
    assert model.regeneration_cost[-1].mean() > model.regeneration_cost[0].mean()  # and the prefix grows along a solution
    loaded = PomdpModel.load(model.save(tmp_path / "model.json"))
    np.testing.assert_array_equal(loaded.regeneration_cost, model.regeneration_cost)
    assert loaded.cost_model == model.cost_model
    content = model.to_dict()
    del content["cost_model"]
    with pytest.raises(ValueError, match="fields 'rewrite_cost' and 'cost_model' come together"):
        PomdpModel.from_dict(content)
    content = {**model.to_dict(), "cost_model": {"name": "dollars"}}
    with pytest.raises(ValueError, match="field 'cost_model' = .*'dollars'.* is not a cost model's settings"):
        PomdpModel.from_dict(content)


def regenerations(router: PomdpRouter, trees: RolloutTrees) -> float:
    return float(np.mean(run_episodes(trees, router).escalations))


def test_dearer_rewrites_are_regenerated_less_at_the_same_lambda(train_trees: RolloutTrees, tiny_trees: RolloutTrees) -> None:
    # The PRM's price does not move the cost unit (a strong-only query's cost), so a dearer PRM makes
    # every rewrite (which the PRM scores) dearer in cost units.
    cheap = fit(train_trees, PriceCost())
    dear = fit(train_trees, PriceCost(prm=TokenPrice(input_per_mtok=2.5, output_per_mtok=1.0)))
    assert (dear.regeneration_cost > cheap.regeneration_cost).all()
    counts = []
    for lam in (0.005, 0.02):
        cheap_router = solve_router(cheap, lam, UNIT, "bayes", 301, train_trees.max_strong_steps)
        dear_router = solve_router(dear, lam, UNIT, "bayes", 301, train_trees.max_strong_steps)
        counts.append((regenerations(cheap_router, tiny_trees), regenerations(dear_router, tiny_trees)))
        assert counts[-1][1] <= counts[-1][0]
    assert any(dear_count < cheap_count for cheap_count, dear_count in counts), counts


def test_a_new_operating_point_is_solved_with_the_fitted_rewrite_costs(train_trees: RolloutTrees) -> None:
    model = fit(train_trees, PriceCost())
    router = solve_router(model, 0.01, UNIT, "bayes", 301, train_trees.max_strong_steps)
    moved = router.at_operating_point(0.03)
    np.testing.assert_allclose(moved.policy.rewrite_cost, 0.03 * model.regeneration_cost / UNIT, rtol=1e-12)
    fresh = solve_router(model, 0.03, UNIT, "bayes", 301, train_trees.max_strong_steps)
    np.testing.assert_array_equal(moved.policy.start_value, fresh.policy.start_value)


def pomdp_overrides(data_dir: Path, cache: Path, *extra: str) -> list[str]:
    return ["policy=pomdp", "lambda=0.01", "policy.grid_size=301", f"policy.model_cache_dir={cache}", "progress_bar=false",
            f"data.path={data_dir}", "data.persist_growth=false", *extra]


def test_train_and_evaluate_pomdp_under_price_record_the_cost_model_and_cost_per_query(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    results = train(compose_config(*pomdp_overrides(tiny_dataset_dir, cache, "cost=price")), tmp_path / "price")
    assert results["config"]["cost"] == PriceCost().to_dict()
    weak, strong, point = results["points"]
    assert point["policy"] == "pomdp" and 0.0 < weak["cost_per_query"] < point["cost_per_query"]
    assert point["normalized_cost"] == pytest.approx(point["cost_per_query"] / strong["cost_per_query"])
    router_dir = tmp_path / "price" / "router"
    assert json.loads((router_dir / "config.json").read_text())["cost"] == PriceCost().to_dict()
    assert json.loads((router_dir / "pomdp_model.json").read_text())["cost_model"] == PriceCost().to_dict()
    # The strong-token fit is cached apart from the priced one (its rewrite costs differ).
    default = train(compose_config(*pomdp_overrides(tiny_dataset_dir, cache)), tmp_path / "default")
    assert default["points"][-1]["model_from_cache"] is False and len(list(cache.glob("pomdp-model-*.json"))) == 2
    assert "cost_per_query" not in default["points"][-1]

    result = run_script("scripts/evaluate.py", "policy=router", f"policy.path={router_dir}", f"data.path={tiny_dataset_dir}",
                        "data.persist_growth=false", "cost=price", f"hydra.run.dir={tmp_path / 'evaluate'}")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "evaluate" / "results.json").read_text())
    assert evaluated["config"]["cost"] == PriceCost().to_dict()
    assert evaluated["points"][-1]["cost_per_query"] == pytest.approx(point["cost_per_query"], rel=1e-12)
    assert evaluated["points"][-1]["accuracy"] == point["accuracy"]


def test_the_priced_validation_objective_is_the_priced_return(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    results = train(compose_config(*pomdp_overrides(tiny_dataset_dir, tmp_path / "cache", "cost=price")), tmp_path / "run")
    router = load_router(tmp_path / "run" / "router")
    train_split = load_trees(path=str(tiny_dataset_dir), split="train", grow=True, persist=False,
                             source=growth_source(tiny_dataset_dir, None))
    validation = train_split.subset(split_validation(train_split, results["config"]["validation_fraction"])[1])
    outcomes = run_episodes(validation, router, cost_model=PriceCost())
    expected = float(np.mean(outcomes.correct) - 0.01 * np.mean(outcomes.cost) / results["config"]["env"]["cost_unit_tokens"])
    assert results["points"][-1]["validation_objective"] == pytest.approx(expected, rel=1e-12)


def test_a_router_whose_config_and_model_disagree_on_the_cost_model_is_refused(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    train(compose_config(*pomdp_overrides(tiny_dataset_dir, tmp_path / "cache", "cost=price")), tmp_path / "run")
    config_path = tmp_path / "run" / "router" / "config.json"
    config = json.loads(config_path.read_text())
    config["cost"] = dataclasses.asdict(PriceCost(strong=TokenPrice(0.5, 2.0)))
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"field cost = .*'output_per_mtok': 2\.0.* but .*pomdp_model\.json prices rewrites under .*"
                                         r"'output_per_mtok': 1\.0"):
        load_router(tmp_path / "run" / "router")
