"""First-step routing: regenerate the first step of every solution with the strong model, no other.

The smallest complete router kind, and the README's worked example of adding one: this module
(settings, decision, fit, load) plus ``conf/policy/first_step.yaml`` (``router:`` naming the class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Fitted, Router, RouterSettings, SweepPoint, TrainingData
from trim_env.evaluation import run_episodes, validation_objective
from trim_env.features import AGG_FEATURES
from trim_env.tree import MAX_STEPS, RolloutTrees

#: Column of the step index t / MAX_STEPS in the ``agg`` observation.
_STEP = AGG_FEATURES.index("step")


@dataclass
class FirstStepSettings(RouterSettings):
    """First-step routing has nothing to tune; the dataclass is its (empty) structured config."""


class FirstStepRouter(Router):
    """Regenerate iff the proposed step is step 1 of the solution.

    :param config: the router's self-description (see :class:`~agents.base.Router`).
    """

    kind = "first_step"
    observation_kind = "agg"
    Settings = FirstStepSettings
    #: Its episodes are paths of the tree, priced by the evaluator under any ``cost=`` model.
    supports_cost_models = True

    def predict(self, observations: np.ndarray) -> np.ndarray:
        return (np.rint(observations[..., _STEP] * MAX_STEPS) == 1).astype(np.int64)

    @classmethod
    def fit(cls, settings: FirstStepSettings, data: TrainingData, **groups: Any) -> Fitted:
        """Nothing to learn: the router, and its return on the validation part (costed in ``data.cost_model``)."""
        router = cls({**data.identity(settings), "kind": cls.kind, "observation": cls.observation_kind})
        outcomes = run_episodes(data.validation, router, cost_model=data.cost_model)
        objective = validation_objective(outcomes.correct, outcomes.cost, data.lam, data.cost_unit_tokens)
        return Fitted(router, {"validation_objective": objective, "train_wall_time_s": 0.0, "env_steps": 0})

    @classmethod
    def sweep(cls, settings: FirstStepSettings, trees: RolloutTrees) -> list[SweepPoint]:
        """Its one point (parameter: the step it regenerates)."""
        return [SweepPoint(settings.name, 1, run_episodes(trees, cls()))]

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> FirstStepRouter:
        return cls(config)
