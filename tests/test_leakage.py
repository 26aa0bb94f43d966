"""No router sees what it would not know when deployed: a perturbation test, checked against a leaky router.

A router deciding at a node may know the PRM scores and token counts of the steps on its path and
of the weak step just proposed. So its decisions must not change when everything else is
randomised: hidden states and final outcomes of every node, and the content (score, length,
state, outcome) of every node the episode neither reached nor was shown — strong rewrites it did
not ask for included. The test plays every query with the batch evaluator, records what each
episode reached and was shown, randomises the rest, plays again and compares the decisions; a
deliberately leaky router (it peeks at the rewrite's length) must be caught by the same test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from agents.actor import ActorRouter
from agents.base import Router
from agents.networks import ActorNetwork
from agents.pomdp.fit import fit_model
from agents.pomdp.model import uniform_bin_edges
from agents.pomdp.router import solve_router
from agents.threshold import ThresholdRouter
from trim_env.evaluation import DecisionBatch, run_episodes
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import MAX_STEPS, RolloutTrees

N_QUERIES = 60


class Recorder:
    """Wraps a router for the batch evaluator, keeping every round's nodes and decisions."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.rounds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        actions = np.asarray(self.router.decide(batch), dtype=bool)
        self.rounds.append((batch.episodes.copy(), batch.nodes.copy(), actions.copy()))
        return actions


class PeeksAtTheRewrite(Router):
    """A leaky router: regenerates when the strong rewrite would be short (a deployed router cannot know that)."""

    def predict(self, observations: np.ndarray) -> np.ndarray:
        raise NotImplementedError("decides from the trees, not from observations")

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        trees = batch.trees
        rewrite = np.maximum(trees.strong_child[batch.nodes], 0)
        return (trees.strong_child[batch.nodes] >= 0) & (trees.step_tokens[rewrite] < 50)


class PeeksAtTheHiddenState(Router):
    """A leaky router: regenerates exactly where the proposed step is wrong."""

    def predict(self, observations: np.ndarray) -> np.ndarray:
        raise NotImplementedError("decides from the trees, not from observations")

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.trees.hidden_state[batch.trees.weak_child[batch.nodes]] != 0


def seen_nodes(trees: RolloutTrees, rounds: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Nodes some episode reached (its path) or was shown (each decision's proposal)."""
    seen = np.zeros(trees.num_nodes, dtype=bool)
    for _, nodes, _ in rounds:
        seen[nodes] = True
        seen[trees.weak_child[nodes]] = True
    return seen


def randomized(trees: RolloutTrees, seen: np.ndarray, seed: int) -> RolloutTrees:
    """Copy of ``trees`` with hidden states and outcomes of all nodes, and the content of unseen nodes, redrawn."""
    rng = np.random.default_rng(seed)
    n = trees.num_nodes
    unseen = ~seen
    tokens = trees.step_tokens.copy()
    tokens[unseen & (trees.parent >= 0)] = rng.integers(1, 400, size=int((unseen & (trees.parent >= 0)).sum()))
    prm = trees.step_prm.copy()
    prm[unseen] = rng.random(int(unseen.sum()), dtype=np.float32)
    correct = np.where(trees.terminal, rng.integers(0, 2, size=n), trees.correct).astype(np.int8)
    return dataclasses.replace(
        trees,
        step_tokens=tokens,
        step_prm=prm,
        hidden_state=rng.integers(0, 3, size=n).astype(np.int8),
        correct=correct,
    )


def decisions_change_under_randomization(trees: RolloutTrees, router: Any, seeds: range = range(3)) -> bool:
    """Play, randomise what the episodes could not know, play again: do any decisions differ?"""
    first = Recorder(router)
    run_episodes(trees, first)
    seen = seen_nodes(trees, first.rounds)
    for seed in seeds:
        again = Recorder(router)
        run_episodes(randomized(trees, seen, seed), again)
        if len(again.rounds) != len(first.rounds):
            return True
        for (episodes_a, nodes_a, actions_a), (episodes_b, nodes_b, actions_b) in zip(first.rounds, again.rounds):
            if not (np.array_equal(episodes_a, episodes_b) and np.array_equal(nodes_a, nodes_b) and np.array_equal(actions_a, actions_b)):
                return True
    return False


# ----------------------------------------------------------------------------------------------
# Trees: frozen cached trees, and a snapshot of trees grown on demand (uncapped)


@pytest.fixture(scope="module")
def params() -> SimulatorParams:
    return SimulatorParams.preset("math500-qwen1.5b-7b")


@pytest.fixture(scope="module")
def cached(params: SimulatorParams) -> RolloutTrees:
    trees = SimulatedTrees(params, 3, np.arange(N_QUERIES), max_strong_steps=2, namespace="leakage/cached")
    trees.expand_all()
    return trees.to_cached()


@pytest.fixture(scope="module")
def grown(params: SimulatorParams) -> RolloutTrees:
    """Uncapped trees grown by playing random routing and every-step regeneration, frozen as a snapshot."""
    trees = SimulatedTrees(params, 4, np.arange(N_QUERIES), namespace="leakage/grown")
    rng = np.random.default_rng(0)

    class Random:
        def decide(self, batch: DecisionBatch) -> np.ndarray:
            return rng.random(len(batch.nodes)) < 0.4

    for _ in range(3):
        run_episodes(trees, Random())
    trees.grow_complete(2)
    return trees.snapshot()


def _balanced_actor(observation: str, trees: RolloutTrees) -> ActorRouter:
    """A random-weight actor whose output bias is set so that it regenerates about half the time."""
    torch.manual_seed(0)
    seq = {"d_model": 8, "n_layers": 1, "n_heads": 2, "ff_dim": 16} if observation == "seq" else None
    network = ActorNetwork(observation, 7 if observation == "agg" else MAX_STEPS * 4, [16], "tanh", seq)
    router = ActorRouter(network, observation)
    nodes = np.flatnonzero(~trees.terminal & (trees.weak_child >= 0))[:2000]
    batch = DecisionBatch(trees, nodes, np.arange(len(nodes)))
    with torch.no_grad():
        logits = network(torch.as_tensor(batch.agg() if observation == "agg" else batch.seq()))
    margin = float(torch.median(logits[:, 1] - logits[:, 0]))
    with torch.no_grad():
        network.action_net.bias[1] -= margin
    return router


def _pomdp(trees: RolloutTrees) -> Router:
    model = fit_model(trees, uniform_bin_edges(10), n_token_bins=4)
    return solve_router(model, 0.01, 10.0, "bayes", grid_size=201)


ROUTERS = {
    "thr": lambda trees: ThresholdRouter(0.5),
    "agg": lambda trees: _balanced_actor("agg", trees),
    "seq": lambda trees: _balanced_actor("seq", trees),
    "pomdp": _pomdp,
}


@pytest.mark.parametrize("name", sorted(ROUTERS))
@pytest.mark.parametrize("trees_kind", ["cached", "grown"])
def test_step_level_routers_decide_only_from_what_a_deployed_router_knows(name: str, trees_kind: str, request: pytest.FixtureRequest) -> None:
    trees = request.getfixturevalue(trees_kind)
    router = ROUTERS[name](trees)
    recorder = Recorder(router)
    run_episodes(trees, recorder)
    actions = np.concatenate([a for _, _, a in recorder.rounds])
    assert 0 < actions.mean() < 1, "a router that always does the same thing would pass trivially"
    assert not decisions_change_under_randomization(trees, router)


@pytest.mark.parametrize("leaky", [PeeksAtTheRewrite, PeeksAtTheHiddenState])
@pytest.mark.parametrize("trees_kind", ["cached", "grown"])
def test_the_same_test_catches_a_leaky_router(leaky: type, trees_kind: str, request: pytest.FixtureRequest) -> None:
    trees = request.getfixturevalue(trees_kind)
    assert decisions_change_under_randomization(trees, leaky())
