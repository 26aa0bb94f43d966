"""TRIM-Thr: regenerate when the proposed step's PRM score is below a threshold k."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Fitted, Router, RouterSettings, SweepPoint, TrainingData
from trim_env.evaluation import DecisionBatch, run_thresholds, validation_objective
from trim_env.tree import RolloutTrees


def _default_thresholds() -> list[float]:
    return [round(0.05 * i, 2) for i in range(21)]


@dataclass
class ThresholdSettings(RouterSettings):
    """TRIM-Thr settings.

    :param thresholds: the candidate thresholds k (>= 0): training picks the one with the best
        validation return; evaluation gives one point per threshold.
    """

    thresholds: list[float] = field(default_factory=_default_thresholds)

    def check(self) -> ThresholdSettings:
        check_thresholds(self.thresholds)
        return self


def check_thresholds(thresholds: Any, key: str = "policy.thresholds") -> list[float]:
    """``thresholds`` as floats, refusing an empty list and values that are not finite numbers >= 0."""
    values = []
    for index, value in enumerate(list(thresholds)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}[{index}] = {value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{key}[{index}] = {value!r} must be a finite number >= 0")
        values.append(number)
    if not values:
        raise ValueError(f"{key} is empty; give at least one threshold")
    return values


class ThresholdRouter(Router):
    """Regenerate iff ``prm < threshold`` (k = 0: never, k > 1: always).

    :param threshold: the PRM-score threshold k.
    :param config: the router's self-description (see :class:`~agents.base.Router`).
    """

    kind = "threshold"
    observation_kind = "agg"
    Settings = ThresholdSettings
    supports_cost_models = True

    def __init__(self, threshold: float, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.threshold = check_thresholds([threshold], "threshold")[0]

    def predict(self, observations: np.ndarray) -> np.ndarray:
        return (observations[..., 0] < self.threshold).astype(np.int64)

    def operating_point_parameter(self) -> str:
        return "threshold"

    def set_operating_point(self, value: float) -> None:
        self.threshold = check_thresholds([value], "threshold")[0]

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.proposal_prm < self.threshold  # no feature matrix needed

    @classmethod
    def fit(cls, settings: ThresholdSettings, data: TrainingData, **groups: Any) -> Fitted:
        """The threshold with the best validation return (no environment steps)."""
        thresholds = check_thresholds(settings.thresholds)
        scores = [
            validation_objective(o.correct, o.cost, data.lam, data.cost_unit_tokens)
            for o in run_thresholds(data.validation, thresholds, data.cost_model)
        ]
        best = int(np.argmax(scores))
        config = {**data.identity(settings), "kind": cls.kind, "observation": "agg", "threshold": thresholds[best]}
        summary = {"threshold": thresholds[best], "validation_objective": scores[best], "train_wall_time_s": 0.0, "env_steps": 0}
        return Fitted(cls(thresholds[best], config), summary)

    @classmethod
    def sweep(cls, settings: ThresholdSettings, trees: RolloutTrees) -> list[SweepPoint]:
        """One point per threshold, in one batch run."""
        thresholds = check_thresholds(settings.thresholds)
        return [SweepPoint(settings.name, k, outcomes) for k, outcomes in zip(thresholds, run_thresholds(trees, thresholds))]

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> ThresholdRouter:
        if "threshold" not in config:
            raise ValueError(f"{directory / 'config.json'}: field threshold is missing")
        try:
            return cls(config["threshold"], config)
        except ValueError as error:
            raise ValueError(f"{directory / 'config.json'}: field {error}") from None
