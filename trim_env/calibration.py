"""Calibration of simulator presets to real measurements (figures, not model outputs).

The targets come from ``trim_env/references/trim_qwen1.5b_7b_math.json`` (measured by the TRIM
authors' code release: Qwen2.5-1.5B-Instruct weak, Qwen2.5-7B-Instruct strong, Qwen2.5-Math-PRM-7B;
shipped in the package as published measurements reproduced with attribution, see
``trim_env/references/README.md``) and from AUROCs measured on real MATH-500 trajectories (the
constants below, with their sources). The fitted parameters are committed in ``trim_env/presets/<preset>.json``, with the
source named.

The fit matches the *on-policy* TRIM-Thr frontier (accuracy and normalised cost at 21 thresholds),
weak-only and strong-only accuracy, tokens and steps, and the signal quality of the minimum step
score and of the difficulty level. It uses common random numbers (the simulator's randomness is
keyed on paths, so every evaluation of the objective sees the same draws) and weighted least
squares with each real frontier point given about ±2.5 points of sampling noise, so the smooth
model is fitted rather than the noise.

Command line (writes the preset)::

    python -m trim_env.calibration --out trim_env/presets/math500-qwen1.5b-7b.json   # --reference FILE: other figures
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from trim_env import metrics
from trim_env.atomic import write_text
from trim_env.evaluation import reference as split_reference
from trim_env.evaluation import run_thresholds
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import MAX_STEPS

DEFAULT_REFERENCE = Path(__file__).resolve().parent / "references" / "trim_qwen1.5b_7b_math.json"

#: Real signal-quality figures measured on real MATH-500 trajectories (math-verify grading): Qwen2.5-1.5B with the
#: Math-Shepherd PRM (compute-optimal-tts release) and Llama-3.2-3B / Llama-3.1-8B with the RLHFlow PRM (search-and-learn).
MIN_SCORE_AUROC_TARGET = 0.87  # 0.862-0.884 across three weak models and two PRMs
LEVEL_AUROC_TARGET = 0.74  # 0.72 (Llama-3.2-3B) and 0.76 (Llama-3.1-8B)


@dataclass(frozen=True)
class Targets:
    """Calibration targets read from the reference file."""

    weak_accuracy: float
    strong_accuracy: float
    weak_tokens: float
    strong_tokens: float
    strong_steps: float
    thresholds: np.ndarray
    thr_accuracy: np.ndarray
    thr_cost: np.ndarray
    weak_hazard: np.ndarray
    strong_hazard: np.ndarray

    @classmethod
    def load(cls, path: str | Path = DEFAULT_REFERENCE) -> Targets:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"calibration reference {path} not found; the published figures ship with trim as {DEFAULT_REFERENCE}"
            )
        data = json.loads(path.read_text())
        strong_only = data["math500_strong_only"]
        frontier = data["math500_trim_thr_frontier"]
        hazard = data["termination_hazard"]
        return cls(
            weak_accuracy=data["math500_weak_only"]["accuracy"],
            strong_accuracy=strong_only["accuracy"],
            weak_tokens=data["math500_weak_only"]["weak_tokens_per_question"],
            strong_tokens=strong_only["strong_tokens_per_question"],
            strong_steps=frontier[-1]["avg_target_calls_per_question"],
            thresholds=np.array([p["threshold"] for p in frontier]),
            thr_accuracy=np.array([p["accuracy"] for p in frontier]),
            thr_cost=np.array([p["avg_target_tokens_per_question"] for p in frontier]) / strong_only["strong_tokens_per_question"],
            weak_hazard=np.array([hazard["weak_qwen2.5-1.5b"][str(t)] for t in range(MAX_STEPS + 1)]),
            strong_hazard=np.array([hazard["strong_qwen2.5-7b"][str(t)] for t in range(MAX_STEPS + 1)]),
        )


def fit_hazard(hazard: np.ndarray) -> tuple[float, float, float]:
    """Fit ``max * sigmoid((t - midpoint) / width)`` to a hazard table over steps 1..29."""
    steps = np.arange(1, MAX_STEPS)
    observed = hazard[1:MAX_STEPS]

    def residual(theta: np.ndarray) -> np.ndarray:
        peak, mid, width = theta
        return peak / (1 + np.exp(-(steps - mid) / width)) - observed

    solution = least_squares(residual, x0=[0.22, 5.0, 1.0], bounds=([0, 0, 0.1], [1, 20, 10]))
    peak, mid, width = solution.x
    return float(peak), float(mid), float(width)


@dataclass
class SimulatedFigures:
    """What the calibration compares with the targets, measured on simulated queries."""

    weak_accuracy: float
    strong_accuracy: float
    weak_tokens: float
    strong_tokens: float
    weak_steps: float
    strong_steps: float
    thr_accuracy: np.ndarray
    thr_cost: np.ndarray
    thr_cap_binding: np.ndarray
    min_score_auroc: float
    last_score_auroc: float
    level_auroc: float
    level_accuracy: np.ndarray


def measure(params: SimulatorParams, seed: int, n_queries: int, thresholds: np.ndarray) -> SimulatedFigures:
    """Simulate ``n_queries`` queries (uncapped) and measure the calibration figures."""
    trees = SimulatedTrees(params, seed, np.arange(n_queries))
    return measure_trees(trees, thresholds)


def measure_trees(trees: Any, thresholds: np.ndarray) -> SimulatedFigures:
    """The calibration figures of any split (cached or simulated)."""
    anchors = split_reference(trees)
    outcomes = run_thresholds(trees, thresholds)
    # Weak-only solution's minimum and last step score, as a query-level router would see them.
    weak_final = (outcomes[0] if thresholds[0] <= 0 else run_thresholds(trees, [0.0])[0]).final_node
    weak_correct = trees.weak_only_correct
    level = np.asarray(trees.level)
    return SimulatedFigures(
        weak_accuracy=anchors.weak_accuracy,
        strong_accuracy=anchors.strong_accuracy,
        weak_tokens=float(np.mean(trees.weak_only_tokens)),
        strong_tokens=anchors.strong_tokens_per_query,
        weak_steps=float(np.mean(trees.weak_only_steps)),
        strong_steps=float(np.mean(trees.strong_only_steps)),
        thr_accuracy=np.array([o.correct.mean() for o in outcomes]),
        thr_cost=np.array([o.strong_tokens.mean() for o in outcomes]) / anchors.strong_tokens_per_query,
        thr_cap_binding=np.array([np.mean(o.cap_overrides > 0) for o in outcomes]),
        min_score_auroc=metrics.auroc(trees.path_min_prm[weak_final], weak_correct),
        last_score_auroc=metrics.auroc(trees.step_prm[weak_final], weak_correct),
        level_auroc=metrics.auroc(-level, weak_correct),
        level_accuracy=np.array([weak_correct[level == k].mean() if (level == k).any() else np.nan for k in range(1, 6)]),
    )


# Parameters the least-squares fit moves, with the transform that keeps each in its domain.
_FITTED: dict[str, str] = {
    "weak_step_logit": "identity",
    "strong_step_logit": "identity",
    "weak_difficulty_slope": "log",
    "strong_difficulty_slope": "log",
    "final_correct_if_clean": "logit",
    "final_correct_if_derailed": "logit",
    "prm_logit_correct": "identity",
    "prm_logit_last_wrong": "identity",
    "prm_logit_derailed": "identity",
    "prm_noise_sd": "log",
    "prm_query_sd": "log",
    "prm_difficulty_slope": "identity",
    "weak_tokens_per_step": "log",
    "strong_tokens_per_step": "log",
    "wrong_step_length_factor": "log",
    "level_noise_sd": "log",
}


def _encode(params: SimulatorParams) -> np.ndarray:
    out = []
    for name, transform in _FITTED.items():
        value = getattr(params, name)
        if transform == "log":
            value = np.log(value)
        elif transform == "logit":
            value = np.log(value / (1 - value))
        out.append(value)
    return np.array(out, dtype=np.float64)


def _decode(theta: np.ndarray, base: SimulatorParams) -> SimulatorParams:
    values: dict[str, Any] = {}
    for (name, transform), x in zip(_FITTED.items(), theta):
        if transform == "log":
            x = np.exp(x)
        elif transform == "logit":
            x = 1 / (1 + np.exp(-x))
        values[name] = float(x)
    return dataclasses.replace(base, **values)


def residuals(figures: SimulatedFigures, targets: Targets) -> np.ndarray:
    """Standardised differences simulator − reference (each divided by its tolerated error)."""
    inner = slice(1, -1)  # k = 0 and k = 1 are weak-only and strong-only, matched separately
    return np.concatenate(
        [
            [(figures.weak_accuracy - targets.weak_accuracy) / 0.01],
            [(figures.strong_accuracy - targets.strong_accuracy) / 0.01],
            [(figures.weak_tokens / targets.weak_tokens - 1) / 0.03],
            [(figures.strong_tokens / targets.strong_tokens - 1) / 0.02],
            [(figures.strong_steps - targets.strong_steps) / 0.3],
            (figures.thr_accuracy[inner] - targets.thr_accuracy[inner]) / 0.025,
            (figures.thr_cost[inner] - targets.thr_cost[inner]) / 0.03,
            [(figures.min_score_auroc - MIN_SCORE_AUROC_TARGET) / 0.015],
            [(figures.level_auroc - LEVEL_AUROC_TARGET) / 0.015],
        ]
    )


def fit(
    targets: Targets,
    start: SimulatorParams,
    seed: int = 1000,
    n_queries: int = 4000,
    max_evaluations: int = 400,
    verbose: bool = True,
) -> SimulatorParams:
    """Weighted least-squares fit of the simulator to ``targets`` with common random numbers."""
    weak_hazard = fit_hazard(targets.weak_hazard)
    strong_hazard = fit_hazard(targets.strong_hazard)
    base = dataclasses.replace(
        start,
        weak_hazard_max=weak_hazard[0],
        weak_hazard_midpoint=weak_hazard[1],
        weak_hazard_width=weak_hazard[2],
        strong_hazard_max=strong_hazard[0],
        strong_hazard_midpoint=strong_hazard[1],
        strong_hazard_width=strong_hazard[2],
    )
    calls = 0
    began = time.time()

    def objective(theta: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        figures = measure(_decode(theta, base), seed, n_queries, targets.thresholds)
        r = residuals(figures, targets)
        if verbose and calls % 20 == 0:
            print(f"  evaluation {calls}: loss {0.5 * float(r @ r):.2f} ({time.time() - began:.0f} s)", flush=True)
        return r

    solution = least_squares(
        objective, _encode(base), diff_step=0.03, max_nfev=max_evaluations, x_scale=1.0, method="trf"
    )
    return _decode(solution.x, base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default=str(DEFAULT_REFERENCE))
    parser.add_argument("--out", required=True, help="preset JSON to write")
    parser.add_argument("--start", default=None, help="preset to start from (default: the SimulatorParams defaults)")
    parser.add_argument("--n-queries", type=int, default=4000)
    parser.add_argument("--max-evaluations", type=int, default=400)
    args = parser.parse_args()
    targets = Targets.load(args.reference)
    start = SimulatorParams.preset(args.start) if args.start else SimulatorParams()
    params = fit(targets, start, n_queries=args.n_queries, max_evaluations=args.max_evaluations)
    figures = measure(params, 1000, args.n_queries, targets.thresholds)
    loss = 0.5 * float(np.sum(residuals(figures, targets) ** 2))
    write_text(
        args.out,
        json.dumps(
            {
                "about": (
                    "Simulator preset fitted by trim_env.calibration to figures measured with Qwen2.5-1.5B-Instruct "
                    "(weak), Qwen2.5-7B-Instruct (strong) and Qwen2.5-Math-PRM-7B on MATH-500 "
                    f"(source: {Path(args.reference).name}, the TRIM authors' release, shipped in trim_env/references/) "
                    "and AUROCs from real MATH-500 trajectories (trim_env.calibration). Simulated, not real model output."
                ),
                "fit": {"loss": loss, "n_queries": args.n_queries, "seed": 1000},
                "params": dataclasses.asdict(params),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out} (loss {loss:.2f})")


if __name__ == "__main__":
    main()
