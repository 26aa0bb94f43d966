"""TRIM-Thr: regenerate when the proposed step's PRM score is below a threshold k."""

from __future__ import annotations

import numpy as np

from agents.base import Router, register_router
from trim_env.evaluation import DecisionBatch


@register_router("thr")
class ThresholdRouter(Router):
    """Regenerate iff ``prm < threshold`` (k = 0: never, k > 1: always).

    :param threshold: the PRM-score threshold k.
    """

    observation_kind = "agg"

    def __init__(self, threshold: float) -> None:
        if not np.isfinite(threshold) or threshold < 0:
            raise ValueError(f"threshold = {threshold} must be a finite number >= 0")
        self.threshold = float(threshold)

    def predict(self, observations: np.ndarray) -> np.ndarray:
        return (observations[..., 0] < self.threshold).astype(np.int64)

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.proposal_prm < self.threshold  # no feature matrix needed
