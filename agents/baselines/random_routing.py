"""Random step routing: regenerate each proposed step with a fixed probability p, ignoring the PRM.

The floor a step-level router has to clear: it spends strong tokens on steps picked blindly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Router, RouterSettings, SweepPoint
from trim_env.evaluation import DecisionBatch, Outcomes, run_grid
from trim_env.tree import RolloutTrees


def _check_probability(probability: float) -> float:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability = {probability} must be in [0, 1]")
    return float(probability)


@dataclass
class RandomSettings(RouterSettings):
    """Random step routing (``policy=random``).

    :param probabilities: regenerate probabilities in [0, 1], one frontier point each.
    :param seed: seed of the random generator.
    """

    probabilities: list[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(21)])
    seed: int = 0

    def check(self) -> RandomSettings:
        for index, probability in enumerate(self.probabilities):
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"policy.probabilities[{index}] = {probability} must be in [0, 1]")
        if self.seed < 0:
            raise ValueError(f"policy.seed = {self.seed} must be >= 0")
        return self


class RandomRouter(Router):
    """Regenerate each step with probability ``probability`` (0: weak-only; 1: regenerate all).

    :param probability: chance of regenerating a proposed step, in [0, 1].
    :param seed: seed of the router's random generator.
    :param config: the router's self-description (see :class:`~agents.base.Router`).
    """

    kind = "random"
    observation_kind = "agg"
    Settings = RandomSettings
    #: Its episodes are paths of the tree, priced by the evaluator under any ``cost=`` model.
    supports_cost_models = True

    def __init__(self, probability: float, seed: int = 0, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.probability = _check_probability(probability)
        self.rng = np.random.default_rng(seed)

    def predict(self, observations: np.ndarray) -> np.ndarray:
        return (self.rng.random(len(observations)) < self.probability).astype(np.int64)

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return self.rng.random(len(batch.nodes)) < self.probability  # no feature matrix needed

    @classmethod
    def sweep(cls, settings: RandomSettings, trees: RolloutTrees) -> list[SweepPoint]:
        """One point per probability, in one batch run."""
        probabilities = [float(p) for p in settings.probabilities]
        return [SweepPoint(settings.name, p, outcomes) for p, outcomes in zip(probabilities, run_random(trees, probabilities, settings.seed))]

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> RandomRouter:
        try:
            return cls(float(config["probability"]), int(config.get("seed", 0)), config)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{directory / 'config.json'}: field probability: {error}") from None


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
