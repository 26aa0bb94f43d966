"""``trim-calibrate``: choose a router's operating point for a target cost on a dataset split (RouteLLM's ``calibrate_threshold``, per step).

    trim-calibrate router=OUT/router target.normalized_cost=0.3 data.path=DIR data.split=test out=thr-0.3.json
    trim-calibrate router=OUT/pomdp-router target.strong_tokens_per_query=400 data.path=DIR

The batch evaluator (:func:`trim_env.evaluation.run_episodes`) plays the router on every query of
the split at candidate operating points: TRIM-Thr thresholds k on ``[0, 1]`` (cost grows with k),
TRIM-POMDP cost weights λ on a log grid (cost falls as λ grows, each λ solved once). The chosen
point is the one that spends the most without exceeding the target — so the target is a budget —
refined by bisection between the two grid neighbours around the target. Prints the accuracy,
cost and PGR expected there and writes an operating-point file (JSON) that ``trim-serve``
(``routers.NAME.operating_point``) and :class:`~agents.serve.controller.Controller`
(``operating_point=``) accept.

The expected figures are measured on the calibration split: calibrate on data the router was not
trained on (a router that records its training queries refuses them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.base import Router
from agents.export import check_not_trained_on
from agents.serve.routers import (
    OperatingPoint,
    load_served_router,
    write_operating_point,
)
from trim_env.data import growth_source, load_trees
from trim_env.evaluation import reference, run_episodes, summarize
from trim_env.tree import RolloutTrees

#: The cost measures a target can be given in.
TARGETS = ("normalized_cost", "strong_tokens_per_query")


@dataclass(frozen=True)
class Candidate:
    """One operating point and its figures on the calibration split."""

    value: float
    figures: dict[str, float]


def calibrate(router: Router, trees: RolloutTrees, target_name: str, target: float, grid_points: int = 21,
              refine_steps: int = 8, lambda_range: tuple[float, float] = (1e-4, 1.0)) -> tuple[Candidate, list[Candidate]]:
    """The operating point of ``router`` spending the most without exceeding ``target`` on ``trees``.

    :param router: the exported router (:meth:`~agents.base.Router.at_operating_point` at each candidate;
        for POMDP its fitted model is solved at each λ).
    :param trees: the calibration split.
    :param target_name: ``normalized_cost`` (c(π) in [0, 1]) or ``strong_tokens_per_query``.
    :param target: the budget.
    :param grid_points: candidate points before refinement.
    :param refine_steps: bisection steps between the grid neighbours around the target.
    :param lambda_range: smallest and largest positive λ of the grid (λ = 0 is added), clipped to the
        range the router accepts (a λ-conditioned actor's training range, without λ = 0).
    :returns: (the chosen candidate, every candidate evaluated, in evaluation order).
    """
    parameter = router.operating_point_parameter()
    if parameter is None:
        raise ValueError(f"router kind {router.kind!r} has no operating point to calibrate (trained for one setting)")
    if target_name not in TARGETS:
        raise ValueError(f"target {target_name!r}; choose one of {TARGETS}")
    if not np.isfinite(target) or target < 0:
        raise ValueError(f"target.{target_name} = {target} must be a finite number >= 0")
    if grid_points < 2:
        raise ValueError(f"grid_points = {grid_points} must be >= 2")
    anchors = reference(trees)
    evaluated: list[Candidate] = []

    def measure(value: float) -> Candidate:
        candidate = Candidate(float(value), summarize(run_episodes(trees, router.at_operating_point(float(value))), anchors))
        evaluated.append(candidate)
        return candidate

    # Order the grid from cheapest to dearest: k grows, λ falls.
    bounds = router.operating_point_range()
    if parameter == "threshold":
        grid = np.linspace(0.0, 1.0, grid_points)
    elif bounds is None:
        grid = np.concatenate([np.geomspace(lambda_range[1], lambda_range[0], grid_points - 1), [0.0]])
    else:
        grid = np.geomspace(min(lambda_range[1], bounds[1]), max(lambda_range[0], bounds[0]), grid_points)
    def within(candidate: Candidate) -> bool:
        return bool(candidate.figures[target_name] <= target)

    candidates = [measure(value) for value in grid]
    affordable = [index for index, candidate in enumerate(candidates) if within(candidate)]
    if not affordable:
        raise ValueError(f"no operating point meets target.{target_name} = {target}: the cheapest "
                         f"({parameter} = {candidates[0].value:g}) costs {candidates[0].figures[target_name]:.4g}")
    best_index = max(affordable, key=lambda index: (candidates[index].figures[target_name], candidates[index].figures["accuracy"]))
    best = candidates[best_index]
    if best_index + 1 < len(candidates):  # the target lies between best and the next, dearer point
        low, high = best.value, candidates[best_index + 1].value
        for _ in range(refine_steps):
            middle = 0.5 * (low + high) if parameter == "threshold" or low == 0 or high == 0 else float(np.sqrt(low * high))
            candidate = measure(middle)
            if within(candidate):
                if (candidate.figures[target_name], candidate.figures["accuracy"]) > (best.figures[target_name], best.figures["accuracy"]):
                    best = candidate
                low = middle
            else:
                high = middle
    return best, evaluated


def format_point(parameter: str, candidate: Candidate) -> str:
    figures = candidate.figures
    return (f"{parameter} = {candidate.value:.6g}: expected accuracy {figures['accuracy']:.4f}, "
            f"strong tokens/query {figures['strong_tokens_per_query']:.1f}, c(pi) {figures['normalized_cost']:.4f}, "
            f"PGR {figures['pgr']:.4f}, escalations/query {figures['escalations_per_query']:.2f}")


def run(cfg: DictConfig) -> Path:
    """Calibrate the configured router and write its operating-point file; returns the file."""
    config: Any = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    targets = {name: value for name, value in (config.get("target") or {}).items() if value is not None}
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or len(targets) != 1:
        raise ValueError(f"target: give exactly one of target.normalized_cost (c(pi) in [0, 1]) or "
                         f"target.strong_tokens_per_query; got {targets or 'none'}")
    ((target_name, target),) = targets.items()
    router = load_served_router(config["router"])
    kind = str(router.config.get("kind"))
    parameter = router.operating_point_parameter()
    if parameter is None:
        raise ValueError(f"router = {config['router']}: kind {kind!r} has no operating point (trained for one setting); "
                         "calibrate a TRIM-Thr, TRIM-POMDP or λ-conditioned router")
    data = config["data"]
    trees = load_trees(path=data["path"], split=data["split"], preset=data["preset"], seed=data["seed"],
                       n_queries=data["n_queries"], grow=data["grow"], persist=data["persist_growth"],
                       source=growth_source(data["path"], data["backends"]))
    check_not_trained_on(config["router"], trees.query_id, bool(config["allow_training_queries"]))
    best, evaluated = calibrate(router, trees, target_name, float(target), int(config["grid_points"]),
                                int(config["refine_steps"]), tuple(config["lambda_range"]))
    trees.flush()
    anchors = reference(trees)
    print(f"calibrated {config['router']} (kind {kind}) for {target_name} <= {target:g} on {trees.num_queries} queries "
          f"({data['path'] or data['preset'] or 'default data'}, split {data['split']}); {len(evaluated)} points evaluated")
    print(f"weak-only accuracy {anchors.weak_accuracy:.4f}, strong-only accuracy {anchors.strong_accuracy:.4f} "
          f"at {anchors.strong_tokens_per_query:.1f} strong tokens/query")
    print(format_point(parameter, best))
    details = {
        "router": str(Path(config["router"]).resolve()),
        "target": {target_name: float(target)},
        "expected": best.figures,
        "data": {"path": data["path"], "preset": data["preset"], "split": data["split"], "n_queries": trees.num_queries},
        "anchors": {"weak_accuracy": anchors.weak_accuracy, "strong_accuracy": anchors.strong_accuracy,
                    "strong_tokens_per_query": anchors.strong_tokens_per_query},
    }
    path = write_operating_point(config["out"], kind, OperatingPoint(parameter, best.value), details)
    print(f"wrote {path.resolve()}")
    return path
