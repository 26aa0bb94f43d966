"""Calibration: the hazard fit, and the calibrated preset against the real reference figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trim_env.calibration import DEFAULT_REFERENCE, Targets, fit_hazard, measure, residuals
from trim_env.simulate import SimulatorParams
from trim_env.tree import MAX_STEPS


def test_the_reference_figures_ship_inside_the_package():
    import trim_env

    package = Path(trim_env.__file__).resolve().parent
    assert DEFAULT_REFERENCE.resolve().is_relative_to(package) and DEFAULT_REFERENCE.is_file()
    assert Targets.load().weak_accuracy == pytest.approx(0.364)
    with pytest.raises(FileNotFoundError, match="ship with trim"):
        Targets.load(package / "no_such_reference.json")


def test_fit_hazard_recovers_a_known_ramp():
    steps = np.arange(MAX_STEPS + 1)
    table = 0.25 / (1 + np.exp(-(steps - 6.0) / 1.5))
    peak, midpoint, width = fit_hazard(table)
    assert peak == pytest.approx(0.25, abs=1e-3)
    assert midpoint == pytest.approx(6.0, abs=1e-2)
    assert width == pytest.approx(1.5, abs=1e-2)


def test_calibrated_preset_matches_the_real_anchors_and_thr_frontier():
    targets = Targets.load()
    figures = measure(SimulatorParams.preset("math500-qwen1.5b-7b"), seed=7, n_queries=3000, thresholds=targets.thresholds)
    assert figures.weak_accuracy == pytest.approx(targets.weak_accuracy, abs=0.03)
    assert figures.strong_accuracy == pytest.approx(targets.strong_accuracy, abs=0.03)
    assert figures.strong_tokens == pytest.approx(targets.strong_tokens, rel=0.05)
    assert np.abs(figures.thr_accuracy - targets.thr_accuracy).mean() <= 0.03
    assert np.abs(figures.thr_cost - targets.thr_cost).mean() <= 0.05
    assert 0.84 <= figures.min_score_auroc <= 0.90
    assert 0.70 <= figures.level_auroc <= 0.78


def test_an_uncalibrated_simulator_is_measurably_worse():
    targets = Targets.load()
    calibrated = measure(SimulatorParams.preset("math500-qwen1.5b-7b"), 7, 1000, targets.thresholds)
    default = measure(SimulatorParams(), 7, 1000, targets.thresholds)
    assert np.sum(residuals(calibrated, targets) ** 2) < 0.5 * np.sum(residuals(default, targets) ** 2)


@pytest.mark.parametrize("preset", ["math500-qwen1.5b-7b", "aime-qwen1.5b-7b", "math500-qwen1.5b-qwen3-8b"])
def test_every_preset_loads(preset):
    params = SimulatorParams.preset(preset)
    params.validate()


def test_harder_preset_has_longer_solutions_and_stronger_preset_a_better_strong_model():
    base = measure(SimulatorParams.preset("math500-qwen1.5b-7b"), 2, 1500, np.array([0.0]))
    aime = measure(SimulatorParams.preset("aime-qwen1.5b-7b"), 2, 1500, np.array([0.0]))
    qwen3 = measure(SimulatorParams.preset("math500-qwen1.5b-qwen3-8b"), 2, 1500, np.array([0.0]))
    assert aime.weak_steps > base.weak_steps + 3 and aime.weak_accuracy < base.weak_accuracy
    assert qwen3.strong_accuracy > base.strong_accuracy + 0.03
