"""Tests for trim_env.cost: each cost model on a hand-built tree, path identities, today's unit, config checks."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agents.cli.common import compose, settings_of
from trim_env.cost import (
    REFERENCE_DECODED_TOKENS,
    REFERENCE_PROMPT_TOKENS,
    CallSpeed,
    CostModel,
    CostModelError,
    FlopsCost,
    LatencyCost,
    PriceCost,
    QueryCostMeter,
    StrongTokensCost,
    TokenPrice,
    anchor_cost,
    cost_model_from_dict,
    path_cost,
    regeneration_extra_cost,
    rewrite_penalty_scale,
    step_cost,
)
from trim_env.env import StepRoutingEnv
from trim_env.tree import RolloutTrees, load_split, save_dataset

# ----------------------------------------------------------------------------------------------
# A hand-built tree: one query, prompt 100 tokens, K = 2.
#
#   node 0 (root) --W--> 1 (10 tokens) --W--> 3 (5, terminal)
#                                     --S--> 4 (8, terminal)
#                 --S--> 2 (20 tokens) --W--> 5 (6, terminal)
#                                     --S--> 6 (7, terminal)
#
# Weak-only path 0-1-3, strong-only path 0-2-6, mixed path 0-1-4 (continue, then regenerate).

PROMPT = 100


def hand_tree(prompt_tokens: int | None = PROMPT) -> RolloutTrees:
    return RolloutTrees(
        query=np.zeros(7, np.int32),
        parent=np.array([-1, 0, 0, 1, 1, 2, 2], np.int32),
        weak_child=np.array([1, 3, 5, -1, -1, -1, -1], np.int32),
        strong_child=np.array([2, 4, 6, -1, -1, -1, -1], np.int32),
        depth=np.array([0, 1, 1, 2, 2, 2, 2], np.int16),
        strong_steps=np.array([0, 0, 1, 0, 1, 1, 2], np.int16),
        step_tokens=np.array([0, 10, 20, 5, 8, 6, 7], np.int32),
        step_prm=np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32),
        step_is_strong=np.array([False, False, True, False, True, False, True]),
        terminal=np.array([False, False, False, True, True, True, True]),
        correct=np.array([-1, -1, -1, 0, 1, 0, 1], np.int8),
        hidden_state=np.full(7, -1, np.int8),
        query_id=["hand"],
        root=np.array([0], np.int32),
        level=np.array([3], np.int8),
        features=np.zeros((1, 0), np.float32),
        weak_only_correct=np.array([0], np.int8),
        weak_only_tokens=np.array([15], np.int32),
        weak_only_steps=np.array([2], np.int16),
        strong_only_correct=np.array([1], np.int8),
        strong_only_tokens=np.array([27], np.int32),
        strong_only_steps=np.array([2], np.int16),
        prompt_tokens=None if prompt_tokens is None else np.array([prompt_tokens], np.int64),
        max_strong_steps=2,
    )


WEAK_ONLY, STRONG_ONLY, MIXED = 3, 6, 4

# Test settings with round numbers (not the presets).
PRICE = PriceCost(weak=TokenPrice(1.0, 2.0), strong=TokenPrice(3.0, 10.0), prm=TokenPrice(4.0, 0.0))
FLOPS = FlopsCost(weak_parameters=1.0, strong_parameters=10.0, prm_parameters=5.0)
LATENCY = LatencyCost(weak=CallSpeed(1.0, 100.0, 10.0), strong=CallSpeed(2.0, 50.0, 5.0), prm=CallSpeed(0.5, 200.0, 1.0))

# Natural costs worked out by hand, call by call (prefill, decoded), from the tree above.
# Strong-only, step 1 at the root (prefix 100; proposal 10, rewrite 20):
#   weak(100, 10), prm(110, 0), strong(100, 20), prm(120, 0)
# step 2 at node 2 (prefix 120; proposal 6, rewrite 7):
#   weak(120, 6), prm(126, 0), strong(120, 7), prm(127, 0)
# Weak-only: weak(100, 10), prm(110, 0); then at node 1 (prefix 110, proposal 5): weak(110, 5), prm(115, 0).
# Mixed: weak(100, 10), prm(110, 0); at node 1: weak(110, 5), prm(115, 0), strong(110, 8), prm(118, 0).
HAND = {
    # price in USD per million tokens: in*prefill + out*decoded, / 1e6
    "price": {
        STRONG_ONLY: ((100 + 20) + 440 + (300 + 200) + 480 + (120 + 12) + 504 + (360 + 70) + 508) / 1e6,
        WEAK_ONLY: ((100 + 20) + 440 + (110 + 10) + 460) / 1e6,
        MIXED: ((100 + 20) + 440 + (110 + 10) + 460 + (330 + 80) + 472) / 1e6,
        "unit": (96 * 3 + 480 * 10) / 480 / 1e6,
        "strong_only_anchor": (100 * 3 + 27 * 10) / 1e6,
        "weak_only_anchor": (100 * 1 + 15 * 2) / 1e6,
    },
    # FLOPs: 2 * N * (prefill + decoded)
    "flops": {
        STRONG_ONLY: 2 * 1 * 110 + 2 * 5 * 110 + 2 * 10 * 120 + 2 * 5 * 120 + 2 * 1 * 126 + 2 * 5 * 126 + 2 * 10 * 127 + 2 * 5 * 127,
        WEAK_ONLY: 2 * 1 * 110 + 2 * 5 * 110 + 2 * 1 * 115 + 2 * 5 * 115,
        MIXED: 2 * 1 * 110 + 2 * 5 * 110 + 2 * 1 * 115 + 2 * 5 * 115 + 2 * 10 * 118 + 2 * 5 * 118,
        "unit": 2 * 10 * (96 + 480) / 480,
        "strong_only_anchor": 2 * 10 * 127,
        "weak_only_anchor": 2 * 1 * 115,
    },
    # seconds: overhead + prefill / prefill rate + decoded / decode rate
    "latency": {
        STRONG_ONLY: (1 + 1.0 + 1.0) + (0.5 + 0.55) + (2 + 2.0 + 4.0) + (0.5 + 0.6)
        + (1 + 1.2 + 0.6) + (0.5 + 0.63) + (2 + 2.4 + 1.4) + (0.5 + 0.635),
        WEAK_ONLY: (1 + 1.0 + 1.0) + (0.5 + 0.55) + (1 + 1.1 + 0.5) + (0.5 + 0.575),
        MIXED: (1 + 1.0 + 1.0) + (0.5 + 0.55) + (1 + 1.1 + 0.5) + (0.5 + 0.575) + (2 + 2.2 + 1.6) + (0.5 + 0.59),
        "unit": (2 + 96 / 50 + 480 / 5) / 480,
        "strong_only_anchor": 2 + 100 / 50 + 27 / 5,
        "weak_only_anchor": 1 + 100 / 100 + 15 / 10,
    },
    # strong tokens: what the strong model decodes
    "strong_tokens": {STRONG_ONLY: 27, WEAK_ONLY: 0, MIXED: 8, "unit": 1.0, "strong_only_anchor": 27, "weak_only_anchor": 0},
}
MODELS: dict[str, CostModel] = {"price": PRICE, "flops": FLOPS, "latency": LATENCY, "strong_tokens": StrongTokensCost()}


@pytest.mark.parametrize("name", list(MODELS))
def test_path_costs_match_the_hand_computed_calls(name: str) -> None:
    model, hand, trees = MODELS[name], HAND[name], hand_tree()
    assert model.unit == pytest.approx(hand["unit"], rel=1e-12)
    leaves = np.array([STRONG_ONLY, WEAK_ONLY, MIXED])
    natural = path_cost(model, trees, leaves) * model.unit
    np.testing.assert_allclose(natural, [hand[leaf] for leaf in leaves], rtol=1e-12)
    assert anchor_cost(model, trees, "strong_only")[0] * model.unit == pytest.approx(hand["strong_only_anchor"], rel=1e-12)
    assert anchor_cost(model, trees, "weak_only")[0] * model.unit == pytest.approx(hand["weak_only_anchor"], rel=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_one_event_costs_add_up_to_the_path(name: str) -> None:
    model, trees = MODELS[name], hand_tree()
    # Regenerate at the root, continue at node 2: the path to node 5.
    events = step_cost(model, trees, np.array([0, 2]), np.array([2, 5]), np.array([True, False]))
    assert events.sum() == pytest.approx(path_cost(model, trees, np.array([5]))[0], rel=1e-12)
    # A continue costs the proposal's weak and PRM calls; a regenerate adds the rewrite's.
    continue_at_root = step_cost(model, trees, np.array([0]), np.array([1]), np.array([False]))[0]
    assert events[0] > continue_at_root or name == "strong_tokens"


# With a prefix cache each model prefills only what it has not processed for the query; cached
# input costs `cached_input_per_mtok` under price and nothing under flops.
PRICE_CACHED = PriceCost(prefix_cache=True, weak=TokenPrice(1.0, 2.0, 0.5), strong=TokenPrice(3.0, 10.0, 1.0), prm=TokenPrice(4.0, 0.0, 2.0))
FLOPS_CACHED = dataclasses.replace(FLOPS, prefix_cache=True)
# Calls as (fresh prefill, decoded, cached), worked out by hand:
# Strong-only, at the root (nothing cached): weak(100, 10, 0), prm(110, 0, 0), strong(100, 20, 0),
#   prm(20, 0, 100) (the rewrite's scoring shares the prefix just scored);
#   at node 2 (prefix 120; weak saw 100, PRM 120, strong 120): weak(20, 6, 100), prm(6, 0, 120),
#   strong(0, 7, 120), prm(7, 0, 120).
# Weak-only: weak(100, 10, 0), prm(110, 0, 0); at node 1 (everyone but strong saw 110): weak(0, 5, 110), prm(5, 0, 110).
# Mixed: the weak-only calls, then strong(110, 8, 0) (never called before), prm(8, 0, 110).
HAND_CACHED = {
    "price": {
        STRONG_ONLY: (120 + 440 + 500 + (80 + 200) + (20 + 12 + 50) + (24 + 240) + (70 + 120) + (28 + 240)) / 1e6,
        WEAK_ONLY: (120 + 440 + (10 + 55) + (20 + 220)) / 1e6,
        MIXED: (120 + 440 + (10 + 55) + (20 + 220) + (330 + 80) + (32 + 220)) / 1e6,
    },
    "flops": {
        STRONG_ONLY: 2 * 1 * 110 + 2 * 5 * 110 + 2 * 10 * 120 + 2 * 5 * 20 + 2 * 1 * 26 + 2 * 5 * 6 + 2 * 10 * 7 + 2 * 5 * 7,
        WEAK_ONLY: 2 * 1 * 110 + 2 * 5 * 110 + 2 * 1 * 5 + 2 * 5 * 5,
        MIXED: 2 * 1 * 110 + 2 * 5 * 110 + 2 * 1 * 5 + 2 * 5 * 5 + 2 * 10 * 118 + 2 * 5 * 8,
    },
}


@pytest.mark.parametrize(("name", "model"), [("price", PRICE_CACHED), ("flops", FLOPS_CACHED)])
def test_a_prefix_cache_prefills_only_what_each_model_has_not_seen(name: str, model: CostModel) -> None:
    trees, hand = hand_tree(), HAND_CACHED[name]
    assert model.unit == pytest.approx(HAND[name]["unit"], rel=1e-12)  # the unit is an uncached call
    leaves = np.array([STRONG_ONLY, WEAK_ONLY, MIXED])
    np.testing.assert_allclose(path_cost(model, trees, leaves) * model.unit, [hand[leaf] for leaf in leaves], rtol=1e-12)
    # The cache only removes work, and the anchors (one call each) do not change.
    uncached = dataclasses.replace(model, prefix_cache=False)
    assert (path_cost(model, trees, leaves) < path_cost(uncached, trees, leaves)).all()
    for run in ("weak_only", "strong_only"):
        assert anchor_cost(model, trees, run)[0] == anchor_cost(uncached, trees, run)[0]
    # Event by event (as the environment charges) equals the path.
    events = step_cost(model, trees, np.array([0, 2]), np.array([2, 6]), np.array([True, True]))
    assert events.sum() == pytest.approx(path_cost(model, trees, np.array([STRONG_ONLY]))[0], rel=1e-12)


def test_the_strong_model_rereads_the_steps_written_since_its_last_rewrite(tiny_trees: RolloutTrees) -> None:
    # Deep paths of the simulator's trees: regenerate at the root, then continue to the end.
    model = dataclasses.replace(FLOPS_CACHED, weak_parameters=1e-9, prm_parameters=1e-9)  # strong calls only, in effect
    assert tiny_trees.prompt_tokens is not None
    checked = 0
    for root in tiny_trees.root:
        # Regenerate at the root, continue twice, then regenerate again.
        first = node = int(tiny_trees.strong_child[root])
        for _ in range(2):
            node = int(tiny_trees.weak_child[node]) if node >= 0 else -1
        if node < 0 or tiny_trees.strong_child[node] < 0:
            continue
        rewrite = int(tiny_trees.strong_child[node])
        cost = step_cost(model, tiny_trees, np.array([node]), np.array([rewrite]), np.array([True]))[0] * model.unit
        since_last = int(tiny_trees.prefix_tokens(np.array([node]))[0] - tiny_trees.prefix_tokens(np.array([first]))[0])
        strong = 2 * model.strong_parameters * (since_last + int(tiny_trees.step_tokens[rewrite]))
        assert since_last > 0 and cost == pytest.approx(strong, rel=1e-6)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("model", [PRICE, PRICE_CACHED, FLOPS_CACHED, dataclasses.replace(LATENCY, prefix_cache=True), StrongTokensCost()],
                         ids=["price", "price-cached", "flops-cached", "latency-cached", "strong_tokens"])
def test_a_live_meter_prices_a_path_as_the_tree_does(tiny_trees: RolloutTrees, model: CostModel) -> None:
    assert tiny_trees.prompt_tokens is not None
    rng = np.random.default_rng(3)
    for query, root in enumerate(tiny_trees.root):
        meter = QueryCostMeter(model, int(tiny_trees.prompt_tokens[query]))
        node = int(root)
        while tiny_trees.weak_child[node] >= 0:
            proposal = int(tiny_trees.step_tokens[tiny_trees.weak_child[node]])
            if tiny_trees.strong_child[node] >= 0 and rng.random() < 0.4:
                node = int(tiny_trees.strong_child[node])
                meter.add_step(proposal, int(tiny_trees.step_tokens[node]))
            else:
                node = int(tiny_trees.weak_child[node])
                meter.add_step(proposal, None)
        assert meter.total == pytest.approx(path_cost(model, tiny_trees, np.array([node]))[0], rel=1e-12)


def test_a_strong_tokens_model_has_no_prefix_cache_setting() -> None:
    with pytest.raises(Exception, match="prefix_cache"):
        settings_of(compose("evaluate", ["cost=strong_tokens", "cost.prefix_cache=true"]).cost)
    with pytest.raises(CostModelError, match="cost.prefix_cache = 'yes' must be true or false"):
        FlopsCost(prefix_cache="yes")  # type: ignore[arg-type]
    assert settings_of(compose("evaluate", ["cost=latency", "cost.prefix_cache=true"]).cost).caches_prefixes


def test_the_rewrite_penalty_scale_is_the_mean_rewrite_in_strong_tokens_over_its_mean_priced_cost() -> None:
    trees = hand_tree()
    # Regenerating rather than continuing at nodes 0, 1, 2 adds strong(prefix, rewrite) + prm(prefix + rewrite, 0):
    # (300 + 200) + 480, (330 + 80) + 472, (360 + 70) + 508 USD per 10^6; the rewrites are 20, 8 and 7 strong tokens.
    extra = np.array([980.0, 882.0, 938.0]) / 1e6 / PRICE.unit
    np.testing.assert_allclose(regeneration_extra_cost(PRICE, trees, np.array([0, 1, 2])), extra, rtol=1e-12)
    assert rewrite_penalty_scale(PRICE, trees) == pytest.approx((20 + 8 + 7) / 3 / extra.mean(), rel=1e-12)
    assert rewrite_penalty_scale(StrongTokensCost(), trees) == 1.0


def test_a_child_of_the_wrong_kind_or_a_missing_child_is_refused() -> None:
    with pytest.raises(ValueError, match="children\\[0\\] = 1 is not the strong child of node 0"):
        step_cost(PRICE, hand_tree(), np.array([0]), np.array([1]), np.array([True]))
    with pytest.raises(ValueError, match="children\\[1\\] = -1 is not the weak child of node 3"):
        step_cost(PRICE, hand_tree(), np.array([0, 3]), np.array([1, -1]), np.array([False, False]))


def strong_only_paths(trees: RolloutTrees) -> list[list[int]]:
    """Each query's all-S path in the stored tree (up to the cap), as node ids from the root."""
    paths = []
    for root in trees.root:
        path = [int(root)]
        while trees.strong_child[path[-1]] >= 0:
            path.append(int(trees.strong_child[path[-1]]))
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", ["price", "flops", "latency"])
def test_a_strong_only_path_costs_the_sum_of_its_calls(tiny_trees: RolloutTrees, name: str) -> None:
    model = MODELS[name]
    assert tiny_trees.prompt_tokens is not None
    paths = strong_only_paths(tiny_trees)
    expected = []
    for query, path in enumerate(paths):
        total, prefix = 0.0, int(tiny_trees.prompt_tokens[query])
        for node, rewrite in zip(path, path[1:]):
            proposal = int(tiny_trees.step_tokens[tiny_trees.weak_child[node]])
            tokens = int(tiny_trees.step_tokens[rewrite])
            calls = [("weak", prefix, proposal), ("prm", prefix + proposal, 0), ("strong", prefix, tokens), ("prm", prefix + tokens, 0)]
            total += sum(float(model.call_cost(role, np.array([read]), np.array([out]))[0]) for role, read, out in calls)
            prefix += tokens
        expected.append(total)
    ends = np.array([path[-1] for path in paths])
    np.testing.assert_allclose(path_cost(model, tiny_trees, ends) * model.unit, expected, rtol=1e-12)


def test_strong_tokens_is_the_envs_cost_step_by_step(tiny_trees: RolloutTrees) -> None:
    env = StepRoutingEnv(tiny_trees, lam=1.0, cost_unit_tokens=1.0, seed=0)
    model = StrongTokensCost()
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(30):
        _, info = env.reset()
        done = False
        episode = 0.0
        while not done:
            node = info["node"]
            action = int(rng.integers(2))
            regenerated = action == 1 and tiny_trees.strong_child[node] >= 0
            child = tiny_trees.strong_child[node] if regenerated else tiny_trees.weak_child[node]
            _, reward, done, _, info = env.step(action)
            cost = -(reward - info["correct"]) if done else -reward
            assert step_cost(model, tiny_trees, np.array([node]), np.array([child]), np.array([regenerated]))[0] == cost
            episode += cost
            checked += 1
        # Passive weak steps after the decision cost nothing: the path's cost is the episode's.
        assert path_cost(model, tiny_trees, np.array([info["node"]]))[0] == episode == info["strong_tokens"]
    assert checked > 30


def test_the_unit_makes_a_reference_strong_only_query_cost_480_units_in_every_model() -> None:
    for model in (PriceCost(), FlopsCost(), LatencyCost(), StrongTokensCost()):
        natural = model.call_cost("strong", np.array([REFERENCE_PROMPT_TOKENS]), np.array([REFERENCE_DECODED_TOKENS]))[0]
        assert natural / model.unit == pytest.approx(REFERENCE_DECODED_TOKENS)


# ----------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: PriceCost(weak=TokenPrice(input_per_mtok=-0.1, output_per_mtok=1.0)), "cost.weak.input_per_mtok = -0.1"),
        (lambda: PriceCost(strong=TokenPrice(input_per_mtok=1.0, output_per_mtok=float("nan"))), "cost.strong.output_per_mtok = nan"),
        (lambda: FlopsCost(prm_parameters=0.0), "cost.prm_parameters = 0.0"),
        (lambda: LatencyCost(strong=CallSpeed(0.1, 1000.0, 0.0)), "cost.strong.decode_tokens_per_s = 0.0"),
        (lambda: LatencyCost(prm=CallSpeed(0.1, 0.0, 1.0)), "cost.prm.prefill_tokens_per_s = 0.0"),
        (lambda: LatencyCost(weak=CallSpeed(-1.0, 1.0, 1.0)), "cost.weak.overhead_s = -1.0"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(build: Callable[[], CostModel], key: str) -> None:
    with pytest.raises(CostModelError) as error:
        build()
    assert key in str(error.value)


@pytest.mark.parametrize("name", ["strong_tokens", "price", "flops", "latency"])
def test_each_config_option_composes_to_its_model_with_the_dataclass_defaults(name: str) -> None:
    model = settings_of(compose("evaluate", [f"cost={name}"]).cost)
    assert type(model) is type(MODELS[name]) and model == type(model)()
    assert cost_model_from_dict(model.to_dict()) == model


def test_a_bad_config_value_is_refused_naming_the_key() -> None:
    with pytest.raises(CostModelError, match="cost.weak.decode_tokens_per_s = 0.0"):
        settings_of(compose("evaluate", ["cost=latency", "cost.weak.decode_tokens_per_s=0"]).cost)
    with pytest.raises(CostModelError, match=r"unknown key\(s\) \['weak_params'\]"):
        cost_model_from_dict({"name": "flops", "weak_params": 1.0})
    with pytest.raises(CostModelError, match="cost.name = 'dollars'"):
        cost_model_from_dict({"name": "dollars"})
    with pytest.raises(CostModelError, match="cost.name = 'flops' must be 'price' for PriceCost"):
        settings_of(compose("evaluate", ["cost=price", "cost.name=flops"]).cost)


def test_the_reference_presets_are_the_documented_figures() -> None:
    flops = FlopsCost()
    assert (flops.weak_parameters, flops.strong_parameters, flops.prm_parameters) == (1.54e9, 7.62e9, 7.07e9)
    price = PriceCost()
    assert price.strong.output_per_mtok / price.strong.input_per_mtok == 4
    assert price.strong.output_per_mtok / price.weak.output_per_mtok == 5


# ----------------------------------------------------------------------------------------------
# Older datasets


def test_an_old_dataset_gets_a_note_and_only_prefill_free_models_cost_it(
    tiny_trees: RolloutTrees, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "v2"
    save_dataset(directory, {"test": dataclasses.replace(tiny_trees, prompt_tokens=None)}, {"kind": "simulator"}, 2, None)
    with caplog.at_level(logging.WARNING, logger="trim_env.tree"):
        old = load_split(directory, "test")
    assert [record.getMessage() for record in caplog.records if "cost=strong_tokens" in record.getMessage()]
    leaves = np.flatnonzero(old.terminal)
    np.testing.assert_array_equal(path_cost(StrongTokensCost(), old, leaves), path_cost(StrongTokensCost(), tiny_trees, leaves))
    free_prefill = PriceCost(weak=TokenPrice(0.0, 1.0), strong=TokenPrice(0.0, 5.0), prm=TokenPrice(0.0, 0.0))
    assert np.isfinite(path_cost(free_prefill, old, leaves)).all()
    for model in (PriceCost(), FlopsCost(), LatencyCost()):
        with pytest.raises(CostModelError, match="'prompt_tokens'") as error:
            path_cost(model, old, leaves)
        assert f"cost={model.name}" in str(error.value)
        with pytest.raises(CostModelError, match="'prompt_tokens'"):
            anchor_cost(model, old, "strong_only")


def test_hand_tree_without_prompt_tokens_is_refused_by_price() -> None:
    with pytest.raises(CostModelError, match="'prompt_tokens'"):
        step_cost(PRICE, hand_tree(prompt_tokens=None), np.array([0]), np.array([1]), np.array([False]))
