"""Random step routing: regenerate each proposed step with a fixed probability p, ignoring the PRM.

The floor a step-level router has to clear: it spends strong tokens on steps picked blindly.
"""

from __future__ import annotations

import numpy as np

from agents.base import Router, register_router
from trim_env.evaluation import DecisionBatch, Outcomes, run_grid
from trim_env.tree import RolloutTrees


def _check_probability(probability: float) -> float:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability = {probability} must be in [0, 1]")
    return float(probability)


@register_router("random")
class RandomRouter(Router):
    """Regenerate each step with probability ``probability`` (0: weak-only; 1: regenerate all).

    :param probability: chance of regenerating a proposed step, in [0, 1].
    :param seed: seed of the router's random generator.
    """

    observation_kind = "agg"

    def __init__(self, probability: float, seed: int = 0) -> None:
        self.probability = _check_probability(probability)
        self.rng = np.random.default_rng(seed)

    def predict(self, observations: np.ndarray) -> np.ndarray:
        return (self.rng.random(len(observations)) < self.probability).astype(np.int64)

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return self.rng.random(len(batch.nodes)) < self.probability  # no feature matrix needed


class _RandomGrid:
    """Random routing for several probabilities at once: episode ``e`` uses ``probabilities[e // n]``."""

    def __init__(self, probabilities: np.ndarray, n_queries: int, seed: int) -> None:
        self.probabilities = probabilities
        self.n_queries = n_queries
        self.rng = np.random.default_rng(seed)

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return self.rng.random(len(batch.nodes)) < self.probabilities[batch.episodes // self.n_queries]


def run_random(trees: RolloutTrees, probabilities: np.ndarray | list[float], seed: int = 0) -> list[Outcomes]:
    """Random routing for every probability p, in one batch run.

    :param trees: the split to play.
    :param probabilities: regenerate probabilities in [0, 1], one frontier point each.
    :param seed: seed of the shared random generator.
    """
    values = np.asarray([_check_probability(p) for p in np.atleast_1d(probabilities)], dtype=np.float64)
    if values.size == 0:
        raise ValueError("probabilities must not be empty")
    return run_grid(trees, _RandomGrid(values, trees.num_queries, seed), len(values))
