"""Gather runs into one Pareto-frontier report: frontier.md, frontier.json, frontier.png and frontier.pdf.

Any mix of run directories (a Hydra multirun dir, single run dirs) and ``results.json`` files is
searched for ``results.json``; every point in them is grouped by its ``policy`` field. A file that
cannot be read or is malformed (bad JSON, a half-written file, a missing or invalid field) is named
on stderr and skipped; the report fails only if nothing usable remains. The weak-only and
strong-only anchors must agree across files (otherwise the runs used different splits).

Every number is measured by a method's own points
-------------------------------------------------
Costs are ``c(π) = strong tokens / strong-only tokens`` (per query, means over the split), or, for
results of another cost model (their config's ``cost``: :mod:`trim_env.cost`), cost / strong-only
cost in that model's unit, read from each point's ``cost_per_query`` (its ``strong_tokens_per_query``
stays the strong model's tokens there). The weak-only anchor sits at ``c_w`` = its cost / strong-only's
(0 in strong tokens: the weak-only point's ``strong_tokens_per_query``, 0 if absent).

* **Frontier.** A method's frontier (one seed) is its own points plus the weak-only anchor
  (c = c_w, PGR = 0) -- never the strong-only anchor. The envelope joins neighbouring Pareto points
  and stays flat beyond the most expensive one (:func:`trim_env.metrics.envelope`). A point
  cheaper than weak-only (c < c_w) is kept as measured and counted in the markdown.
* **CPT(x)** is the least c at which that envelope reaches PGR ≥ x. A CPT the points do not reach
  is ``not reached (max PGR y at c z)``, y and z from the method's best point (JSON: ``value``
  null, ``max_pgr``, ``at_cost``).
* **APGR** is the area under that envelope on c ∈ [0, 1], flat beyond the last point (nothing
  below the cheapest point: the straight weak→strong line scores (1 − c_w) / 2).
* **Mean ΔIBC** is :func:`trim_env.metrics.mean_envelope_delta_ibc`: the mean of
  ``ΔIBC(c) = PGR_env(c) · (1 − c_w) / (c − c_w) − 1`` (``PGR_env(c) / c − 1`` when c_w = 0) over
  one common range [a, b] for every method, where [a, b] is the intersection of the measured cost
  ranges of every seed of every non-oracle method, a measured range being [cheapest point with
  c > c_w, most expensive point] (ΔIBC is undefined at c ≤ c_w). At each Pareto point ΔIBC(c)
  equals AutoMix's per-point ΔIBC
  (:func:`trim_env.metrics.delta_ibc`). A method whose own points do not cover [a, b] (the
  oracle, or a method with no point at c > 0) is marked †.
* **Seeds.** Each seed is summarised on its own; the table shows mean ± SD over seeds (ddof = 1;
  one seed: no ±). A CPT counts as reached only if every seed reaches it; otherwise it is
  ``not reached`` with the number of seeds that did and y, z averaged over seeds.
* **Matched cost.** Every other method's per-parameter mean points are compared with the baseline's
  envelope (its own per-parameter mean points, no anchors) at the same c, only for c inside the
  baseline's measured range; points outside are listed as such, not extrapolated.

Figure: per method the envelope of its per-parameter mean points (mean over seeds) as a solid
line, the points as dots, a band of accuracy mean ± SD over seeds, and a dashed line from the last
point to strong-only labelled as interpolation. The hindsight oracle (``oracle``) has its own panel.
``real_reference=packaged`` (or a file) overlays the real TRIM-Thr frontier from the TRIM authors' release
(in strong tokens, so only over results in strong tokens).

Usage (``trim-frontier`` or ``python scripts/frontier.py``; Hydra overrides, conf/frontier.yaml)::

    trim-frontier 'paths=[multirun/train/2026-…,outputs/evaluate/thr/…]' out=report/ real_reference=packaged

With ``logger=wandb`` (offline by default, conf/logger/wandb.yaml) the report is also a W&B run
(job type ``frontier``, its files under ``out/wandb/``): the figure as the image ``frontier``, the
method table as the table ``frontier_methods`` and each method's APGR in the summary (:func:`log_report`).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import matplotlib

matplotlib.use("Agg")
import hydra
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from omegaconf import DictConfig, OmegaConf

from agents.cli import config_dir
from agents.tracking import Tracker, make_tracker
from trim_env import metrics
from trim_env.cost import CostModelError, cost_model_from_dict

Point = dict[str, Any]

ANCHORS = ("weak-only", "strong-only")
ORACLE = "oracle"
CPT_TARGETS = {"cpt50": 0.5, "cpt80": 0.8, "cpt95": 0.95}
COST_LABEL = "c(π) = strong tokens / strong-only tokens"
#: The cost model of results whose config names none (every results file before issue #14).
DEFAULT_COST_MODEL = "strong_tokens"
INTERPOLATION_LABEL = "to strong-only (interpolation, not measured)"
REAL_LABEL = "real TRIM-Thr (Qwen2.5-1.5B→7B, authors' release)"
#: The file trim_env.calibration.DEFAULT_REFERENCE names (not imported: calibration loads the simulator).
PACKAGED_REFERENCE = Path(str(importlib.resources.files("trim_env") / "references" / "trim_qwen1.5b_7b_math.json"))
OUTPUTS = ("frontier.md", "frontier.json", "frontier.png", "frontier.pdf")


@dataclass(frozen=True)
class CostAxis:
    """The cost model the results were measured in (their config's ``cost``), for labels.

    :param name: The ``cost=`` option (``strong_tokens``, ``price``, ...).
    :param natural_unit: What one natural unit of that model is ("strong tokens", "USD", ...).
    """

    name: str
    natural_unit: str

    @property
    def label(self) -> str:
        """The cost axis: :data:`COST_LABEL` in strong tokens, else the model and its unit."""
        if self.name == DEFAULT_COST_MODEL:
            return COST_LABEL
        return f"c(π) = cost / strong-only cost (cost={self.name}, {self.natural_unit})"


class ReportError(ValueError):
    """The report cannot be made (nothing usable, anchors disagree, a bad reference file)."""


class MalformedResults(ValueError):
    """One results.json cannot be used; the report skips it."""


def warn(message: str) -> None:
    """Print ``message`` to stderr, prefixed with the script's name.

    :param message: What was skipped and why.
    """
    print(f"frontier.py: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Gathering results.json files


def find_results(paths: list[str]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (files are taken as they are); missing paths are named on stderr.

    :param paths: Run dirs, multirun dirs or results.json files.
    :return: The files found, in the order of ``paths`` (sorted within a directory), each once.
    """
    found: dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            under = [path]
        elif path.is_dir():
            under = sorted(path.rglob("results.json"))
            if not under:
                warn(f"{path}: no results.json under this directory; skipped")
        else:
            warn(f"{path}: no such file or directory; skipped")
            continue
        # A file named twice (itself and through its run dir) would count its points twice.
        for file in under:
            found.setdefault(file.resolve(), file)
    return list(found.values())


def _is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (JSON ``true`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_point(file: Path, index: int, point: Any) -> Point:
    """Return ``point`` if it has what the report reads, else raise :class:`MalformedResults` naming the field.

    :param file: The results.json, for the message.
    :param index: The point's index in ``points``.
    :param point: The parsed point.
    """
    where = f"{file}: points[{index}]"
    if not isinstance(point, dict):
        raise MalformedResults(f"{where} is {type(point).__name__}, expected an object")
    policy = point.get("policy")
    if not isinstance(policy, str) or not policy:
        raise MalformedResults(f"{where}: field 'policy' is {policy!r}, expected a method name")
    accuracy = point.get("accuracy")
    if not _is_number(accuracy) or not 0.0 <= accuracy <= 1.0:
        raise MalformedResults(f"{where} ({policy}): field 'accuracy' is {accuracy!r}, expected a number in [0, 1]")
    if policy == "weak-only" and "strong_tokens_per_query" not in point:
        # Weak-only costs nothing in strong tokens; a priced weak model records its cost here.
        point = {**point, "strong_tokens_per_query": 0.0}
    tokens = point.get("strong_tokens_per_query")
    if not _is_number(tokens) or tokens < 0.0 or (policy == "strong-only" and tokens == 0.0):
        expected = "a positive number" if policy == "strong-only" else "a number >= 0"
        raise MalformedResults(f"{where} ({policy}): field 'strong_tokens_per_query' is {tokens!r}, expected {expected}")
    for field in ("lambda", "parameter"):
        if point.get(field) is not None and not _is_number(point[field]):
            raise MalformedResults(f"{where} ({policy}): field '{field}' is {point[field]!r}, expected a number or null")
    if "seed" in point and not (isinstance(point["seed"], int) and not isinstance(point["seed"], bool)):
        raise MalformedResults(f"{where} ({policy}): field 'seed' is {point['seed']!r}, expected an integer")
    return point


def _cost_axis(file: Path, content: dict[str, Any]) -> CostAxis:
    """The cost model named by ``content["config"]["cost"]`` (:data:`DEFAULT_COST_MODEL` if none).

    :param file: The results.json, for the message.
    :param content: Its parsed content.
    :raises MalformedResults: If ``config.cost`` is not a valid cost model's settings.
    """
    config = content.get("config")
    settings = config.get("cost") if isinstance(config, dict) else None
    if settings is None:
        settings = {"name": DEFAULT_COST_MODEL}
    if not isinstance(settings, dict):
        raise MalformedResults(f"{file}: field 'config.cost' is {settings!r}, expected a cost model's settings")
    try:
        model = cost_model_from_dict(settings)
    except (CostModelError, TypeError) as error:
        raise MalformedResults(f"{file}: field 'config.cost' is not a valid cost model ({error})") from error
    return CostAxis(model.name, model.natural_unit)


def read_points(file: Path) -> tuple[list[Point], CostAxis]:
    """The checked points of one results.json and the cost model they were measured in.

    :param file: A results.json (``{"points": [...], "config": {...}}``).
    :raises MalformedResults: If the file cannot be read or parsed, any point lacks a field the report
        reads, or ``config.cost`` is not a cost model.
    """
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise MalformedResults(f"{file}: cannot read ({error})") from error
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise MalformedResults(f"{file}: not valid JSON, perhaps half-written ({error})") from error
    points = content.get("points") if isinstance(content, dict) else None
    if not isinstance(points, list) or not points:
        raise MalformedResults(f"{file}: field 'points' is missing, empty or not a list")
    axis = _cost_axis(file, content)
    return [_check_point(file, index, _cost_in_axis(file, index, point, axis)) for index, point in enumerate(points)], axis


def _cost_in_axis(file: Path, index: int, point: Any, axis: CostAxis) -> Any:
    """``point`` with its cost in the report's field ``strong_tokens_per_query``: under a model other than
    strong tokens a point records its strong tokens there and its cost (cost units) in ``cost_per_query``
    (:mod:`trim_env.evaluation`), which the report then reads.

    :raises MalformedResults: If such a point has no ``cost_per_query``.
    """
    if axis.name == DEFAULT_COST_MODEL or not isinstance(point, dict):
        return point
    if "cost_per_query" not in point:
        raise MalformedResults(f"{file}: points[{index}] ({point.get('policy')}): field 'cost_per_query' is missing, "
                               f"expected the cost per query under cost={axis.name}")
    return {**point, "strong_tokens_per_query": point["cost_per_query"]}


def gather(files: list[Path]) -> tuple[metrics.Reference, dict[str, list[Point]], list[dict[str, str]], CostAxis]:
    """The split's anchors, the points of every method, the files skipped and the cost model.

    Unusable files are named on stderr and skipped. The weak anchor's cost is the weak-only point's
    ``strong_tokens_per_query`` (0 in strong tokens; positive under a cost model that charges the weak model).

    :param files: results.json files.
    :return: ``(reference, {method: points}, [{"file", "reason"}], cost axis)``; each point gets a ``source`` field.
    :raises ReportError: If no usable file has both anchors and a method point, if the anchors or cost
        models of two files disagree, if weak-only costs as much as strong-only, or if weak-only and
        strong-only are equally accurate (PGR undefined).
    """
    anchors: dict[str, tuple[Path, Point]] = {}
    methods: dict[str, list[Point]] = defaultdict(list)
    skipped: list[dict[str, str]] = []
    cost_axes: dict[CostAxis, Path] = {}
    for file in files:
        try:
            points, cost_axis = read_points(file)
        except MalformedResults as error:
            warn(f"skipped {error}")
            skipped.append({"file": str(file), "reason": str(error)})
            continue
        cost_axes.setdefault(cost_axis, file)
        if len(cost_axes) > 1:
            other = next(axis for axis in cost_axes if axis != cost_axis)
            raise ReportError(
                f"{file}: measured with cost={cost_axis.name}, {cost_axes[other]} with cost={other.name}; "
                "costs in different units cannot share one frontier, report them separately"
            )
        for point in points:
            name = point["policy"]
            if name not in ANCHORS:
                methods[name].append({**point, "source": str(file)})
                continue
            first_file, first = anchors.setdefault(name, (file, point))
            for field in ("accuracy", "strong_tokens_per_query"):
                if not math.isclose(first[field], point[field], rel_tol=1e-9, abs_tol=1e-9):
                    raise ReportError(
                        f"{file}: {name} {field} {point[field]} differs from {first[field]} in {first_file}; "
                        "the runs were evaluated on different splits, report them separately"
                    )
    missing = [name for name in ANCHORS if name not in anchors]
    if missing:
        raise ReportError(f"no {' or '.join(missing)} point in the {len(files) - len(skipped)} usable results files "
                          f"({len(skipped)} skipped); cannot normalise costs")
    if not methods:
        raise ReportError(f"no method points (only anchors) in the {len(files) - len(skipped)} usable results files")
    (weak_file, weak), (strong_file, strong) = anchors["weak-only"], anchors["strong-only"]
    if weak["strong_tokens_per_query"] >= strong["strong_tokens_per_query"]:
        raise ReportError(
            f"{weak_file}: weak-only strong_tokens_per_query {weak['strong_tokens_per_query']} is not below strong-only's "
            f"{strong['strong_tokens_per_query']} ({strong_file}); the weak anchor must cost less than strong-only (c_w < 1)"
        )
    reference = metrics.Reference(
        weak_accuracy=weak["accuracy"],
        strong_accuracy=strong["accuracy"],
        strong_tokens_per_query=strong["strong_tokens_per_query"],
        weak_strong_tokens_per_query=weak["strong_tokens_per_query"],
    )
    if reference.strong_accuracy == reference.weak_accuracy:
        raise ReportError(f"weak-only and strong-only are both {reference.weak_accuracy} accurate; PGR is undefined")
    return reference, dict(methods), skipped, next(iter(cost_axes))


# ----------------------------------------------------------------------------------------------
# Summaries


def by_seed(points: list[Point]) -> dict[int, list[Point]]:
    """Points grouped by their ``seed`` field (0 when absent, e.g. TRIM-Thr and baselines).

    :param points: One method's points.
    """
    groups: dict[int, list[Point]] = defaultdict(list)
    for point in points:
        groups[int(point.get("seed", 0))].append(point)
    return dict(groups)


def _sd(values: list[float]) -> float | None:
    """SD over seeds with ddof = 1; ``None`` for a single value (no spread measured)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def mean_over_seeds(points: list[Point], reference: metrics.Reference) -> list[Point]:
    """One point per parameter (λ or threshold): mean and SD (ddof = 1) of accuracy and cost over seeds.

    :param points: One method's points.
    :param reference: The split's anchors (for ``normalized_cost``).
    :return: Points sorted by parameter; SDs are ``None`` where the parameter has one seed.
    """
    groups: dict[Any, list[Point]] = defaultdict(list)
    for point in points:
        groups[point.get("lambda", point.get("parameter"))].append(point)
    mean_points = []
    for key, group in sorted(groups.items(), key=lambda item: (item[0] is None, item[0] or 0.0)):
        accuracy = [p["accuracy"] for p in group]
        cost = [metrics.normalized_cost(p["strong_tokens_per_query"], reference) for p in group]
        mean_points.append(
            {
                "parameter": key,
                "n_seeds": len(group),
                "accuracy": float(np.mean(accuracy)),
                "accuracy_sd": _sd(accuracy),
                "strong_tokens_per_query": float(np.mean([p["strong_tokens_per_query"] for p in group])),
                "normalized_cost": float(np.mean(cost)),
                "normalized_cost_sd": _sd(cost),
            }
        )
    return mean_points


def _costs_and_pgrs(points: list[Point], reference: metrics.Reference) -> tuple[np.ndarray, np.ndarray]:
    """Normalized costs and PGRs of ``points``."""
    costs = np.array([metrics.normalized_cost(p["strong_tokens_per_query"], reference) for p in points])
    pgrs = np.array([metrics.pgr(p["accuracy"], reference) for p in points])
    return costs, pgrs


def measured_range(points: list[Point], reference: metrics.Reference) -> tuple[float, float] | None:
    """The cost range ΔIBC is measured on: [cheapest point with c > c_w, most expensive point].

    :param points: One seed's points of one method.
    :param reference: The split's anchors (c_w: the weak anchor's normalized cost, 0 in strong tokens).
    :return: ``None`` if no point costs more than weak-only (ΔIBC is undefined at c ≤ c_w).
    """
    costs, _ = _costs_and_pgrs(points, reference)
    positive = costs[costs > reference.weak_normalized_cost]
    return (float(positive.min()), float(costs.max())) if positive.size else None


def common_cost_range(methods: dict[str, list[Point]], reference: metrics.Reference) -> tuple[float, float] | None:
    """The intersection of the measured ranges of every seed of every non-oracle method.

    Methods with no point at c > c_w have no measured range and do not take part.

    :param methods: Points per method.
    :param reference: The split's anchors.
    :return: ``(a, b)`` with ``c_w < a <= b``, or ``None`` if the ranges do not overlap or none exists.
    """
    ranges = [
        measured
        for name, points in methods.items()
        if name != ORACLE
        for seed_points in by_seed(points).values()
        if (measured := measured_range(seed_points, reference)) is not None
    ]
    if not ranges:
        return None
    lower, upper = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return (lower, upper) if lower <= upper else None


def summarize_seed(points: list[Point], reference: metrics.Reference, ibc_range: tuple[float, float] | None) -> dict[str, Any]:
    """CPTs, APGR and mean ΔIBC of one seed's frontier: its own points plus the weak-only anchor.

    :param points: One seed's points of one method.
    :param reference: The split's anchors.
    :param ibc_range: The common ΔIBC cost range, or ``None`` if there is none.
    """
    own_costs, own_pgrs = _costs_and_pgrs(points, reference)
    best = int(metrics.pareto_points(own_costs, own_pgrs)[-1])
    best_point = {"max_pgr": float(own_pgrs[best]), "at_cost": float(own_costs[best])}
    # The weak-only anchor (c_w, PGR = 0) is always available; strong-only is deliberately left out.
    weak_cost = reference.weak_normalized_cost
    costs, pgrs = np.concatenate(([weak_cost], own_costs)), np.concatenate(([0.0], own_pgrs))
    summary: dict[str, Any] = {"n_points": len(points), "best_point": best_point}
    for key, target in CPT_TARGETS.items():
        value = metrics.cpt(costs, pgrs, target)
        summary[key] = {"value": value} if math.isfinite(value) else {"value": None, **best_point}
    summary["apgr"] = metrics.apgr(costs, pgrs)
    measured = measured_range(points, reference)
    summary["measured_cost_range"] = measured
    if ibc_range is None:
        summary["mean_delta_ibc"], summary["covers_delta_ibc_range"] = None, False
    else:
        summary["mean_delta_ibc"] = metrics.mean_envelope_delta_ibc(costs, pgrs, *ibc_range, weak_cost=weak_cost)
        summary["covers_delta_ibc_range"] = measured is not None and measured[0] <= ibc_range[0] and measured[1] >= ibc_range[1]
    return summary


def _aggregate_cpt(per_seed: list[dict[str, Any]], n_seeds: int) -> dict[str, Any]:
    """One CPT over seeds: mean ± SD if every seed reaches it, else not reached with the short seeds' best points."""
    reached = [s["value"] for s in per_seed if s["value"] is not None]
    if len(reached) == n_seeds:
        return {"value": float(np.mean(reached)), "sd": _sd(reached)}
    # y and z describe the seeds that fall short: their best points.
    short_pgr = [s["max_pgr"] for s in per_seed if s["value"] is None]
    short_cost = [s["at_cost"] for s in per_seed if s["value"] is None]
    return {
        "value": None,
        "sd": None,
        "max_pgr": float(np.mean(short_pgr)),
        "max_pgr_sd": _sd(short_pgr),
        "at_cost": float(np.mean(short_cost)),
        "at_cost_sd": _sd(short_cost),
        "seeds_reached": len(reached),
        "n_seeds": n_seeds,
    }


def summarize_method(points: list[Point], reference: metrics.Reference, ibc_range: tuple[float, float] | None) -> dict[str, Any]:
    """Per-seed summaries of one method and their mean ± SD over seeds (ddof = 1).

    :param points: All of one method's points.
    :param reference: The split's anchors.
    :param ibc_range: The common ΔIBC cost range (see :func:`common_cost_range`).
    :return: ``cpt50/80/95``, ``apgr`` and ``mean_delta_ibc`` as ``{"value", "sd", ...}`` (``value``
        null when not measured; a CPT not reached adds ``max_pgr``, ``at_cost``, ``seeds_reached``),
        plus ``per_seed``, ``seeds``, ``n_points`` and ``measured_cost_range`` (all points, c).
    """
    per_seed = {seed: summarize_seed(group, reference, ibc_range) for seed, group in sorted(by_seed(points).items())}
    seeds = list(per_seed.values())
    costs, _ = _costs_and_pgrs(points, reference)
    summary: dict[str, Any] = {
        "n_points": len(points),
        "seeds": sorted(per_seed),
        "measured_cost_range": [float(costs.min()), float(costs.max())],
    }
    for key in CPT_TARGETS:
        summary[key] = _aggregate_cpt([s[key] for s in seeds], len(seeds))
    apgrs = [s["apgr"] for s in seeds]
    summary["apgr"] = {"value": float(np.mean(apgrs)), "sd": _sd(apgrs)}
    ibcs = [s["mean_delta_ibc"] for s in seeds]
    if any(value is None or not math.isfinite(value) for value in ibcs):
        summary["mean_delta_ibc"] = {"value": None, "sd": None, "covers_range": False}
    else:
        covers = all(s["covers_delta_ibc_range"] for s in seeds)
        summary["mean_delta_ibc"] = {"value": float(np.mean(ibcs)), "sd": _sd(ibcs), "covers_range": covers}
    summary["per_seed"] = per_seed
    return summary


def summarize_methods(
    methods: dict[str, list[Point]], reference: metrics.Reference
) -> tuple[dict[str, dict[str, Any]], tuple[float, float] | None]:
    """:func:`summarize_method` for every method, mean ΔIBC on their :func:`common_cost_range`.

    :param methods: Points per method.
    :param reference: The split's anchors.
    :return: ``({method: summary}, common ΔIBC range or None)``.
    """
    ibc_range = common_cost_range(methods, reference)
    return {name: summarize_method(points, reference, ibc_range) for name, points in methods.items()}, ibc_range


def accuracy_at_matched_cost(
    points: list[Point], baseline: list[Point], reference: metrics.Reference, baseline_name: str
) -> dict[str, Any]:
    """Each of ``points`` against the baseline's envelope at the same c, inside the baseline's measured range only.

    :param points: Per-parameter mean points of one method (:func:`mean_over_seeds`).
    :param baseline: All points of the baseline method.
    :param reference: The split's anchors.
    :param baseline_name: For the note on points outside the range.
    :return: ``{"baseline_range", "points": [...], "n_compared", "share_at_least_baseline"}``; a point
        outside the range has ``baseline_accuracy`` null and a ``note``.
    """
    baseline_points = mean_over_seeds(baseline, reference)
    costs = np.array([p["normalized_cost"] for p in baseline_points])
    accuracy = np.array([p["accuracy"] for p in baseline_points])
    lower, upper = float(costs.min()), float(costs.max())
    rows = []
    for point in sorted(points, key=lambda p: p["normalized_cost"]):
        cost = point["normalized_cost"]
        row: dict[str, Any] = {"normalized_cost": cost, "accuracy": point["accuracy"]}
        if lower <= cost <= upper:
            row["baseline_accuracy"] = float(metrics.envelope(costs, accuracy, [cost])[0])
        else:
            row["baseline_accuracy"] = None
            row["note"] = f"outside {baseline_name}'s measured c range [{lower:.3f}, {upper:.3f}]"
        rows.append(row)
    compared = [r for r in rows if r["baseline_accuracy"] is not None]
    share = float(np.mean([r["accuracy"] >= r["baseline_accuracy"] for r in compared])) if compared else None
    return {"baseline_range": [lower, upper], "points": rows, "n_compared": len(compared), "share_at_least_baseline": share}


# ----------------------------------------------------------------------------------------------
# Real reference overlay


def load_real_reference(path: Path) -> dict[str, Any]:
    """The real TRIM-Thr frontier and anchors of a reference file (e.g. the packaged authors' figures).

    Cost of a point: ``avg_target_tokens_per_question / math500_strong_only.strong_tokens_per_question``.

    :param path: A reference JSON with ``math500_weak_only``, ``math500_strong_only`` and ``math500_trim_thr_frontier``.
    :raises ReportError: If the file cannot be read or lacks a field.
    """
    try:
        data = json.loads(path.read_text())
        strong_tokens = float(data["math500_strong_only"]["strong_tokens_per_question"])
        points = [
            {
                "threshold": point["threshold"],
                "accuracy": float(point["accuracy"]),
                "normalized_cost": float(point["avg_target_tokens_per_question"]) / strong_tokens,
            }
            for point in data["math500_trim_thr_frontier"]
        ]
        return {
            "file": str(path),
            "label": REAL_LABEL,
            "weak_accuracy": float(data["math500_weak_only"]["accuracy"]),
            "strong_accuracy": float(data["math500_strong_only"]["accuracy"]),
            "strong_tokens_per_question": strong_tokens,
            "points": sorted(points, key=lambda p: p["normalized_cost"]),
        }
    except (OSError, json.JSONDecodeError) as error:
        raise ReportError(f"real reference {path}: cannot read ({error})") from error
    except (KeyError, TypeError, ValueError) as error:
        raise ReportError(f"real reference {path}: missing or invalid field {error}") from error


# ----------------------------------------------------------------------------------------------
# Figure


def _draw_method(
    axis: Axes, name: str, points: list[Point], reference: metrics.Reference, color: Any, interpolation_label: str
) -> tuple[bool, bool]:
    """One method: seed band, dots, solid envelope of its own points, dashed interpolation to strong-only.

    :param axis: The panel.
    :param name: The method, its legend label.
    :param points: All of its points.
    :param reference: The split's anchors.
    :param color: Its colour.
    :param interpolation_label: Legend label of the dashed line (``"_nolegend_"`` once one is labelled).
    :return: ``(band drawn, dashed line drawn)``.
    """
    mean_points = mean_over_seeds(points, reference)
    costs = np.array([p["normalized_cost"] for p in mean_points])
    accuracy = np.array([p["accuracy"] for p in mean_points])
    spread = np.array([p["accuracy_sd"] or 0.0 for p in mean_points])
    order = np.argsort(costs, kind="stable")
    banded = any(p["accuracy_sd"] is not None for p in mean_points)
    if banded:
        axis.fill_between(costs[order], (accuracy - spread)[order], (accuracy + spread)[order], color=color, alpha=0.15, linewidth=0)
    axis.plot(costs, accuracy, "o", color=color, alpha=0.6, markersize=3.5)
    envelope_costs = np.concatenate(([reference.weak_normalized_cost], costs))
    envelope_accuracy = np.concatenate(([reference.weak_accuracy], accuracy))
    pareto = metrics.pareto_points(envelope_costs, envelope_accuracy)
    axis.plot(envelope_costs[pareto], envelope_accuracy[pareto], "-", color=color, linewidth=1.6, label=name)
    last_cost, last_accuracy = envelope_costs[pareto[-1]], envelope_accuracy[pareto[-1]]
    # Only where strong-only lies beyond and above the last point: the line the old report measured with.
    dashed = bool(last_cost < 1.0 and last_accuracy < reference.strong_accuracy)
    if dashed:
        axis.plot([last_cost, 1.0], [last_accuracy, reference.strong_accuracy], "--", color=color, linewidth=1.0, alpha=0.7,
                  label=interpolation_label)
    return banded, dashed


def _draw_anchors(axis: Axes, reference: metrics.Reference) -> None:
    """The split's weak-only (at c_w) and strong-only (at 1) points and the straight line between them."""
    weak_cost = reference.weak_normalized_cost
    axis.plot([weak_cost], [reference.weak_accuracy], "k*", markersize=12, label="weak-only (simulated)")
    axis.plot([1], [reference.strong_accuracy], "r*", markersize=12, label="strong-only (simulated)")
    axis.plot([weak_cost, 1], [reference.weak_accuracy, reference.strong_accuracy], "k:", linewidth=0.8, label="weak→strong line (ΔIBC = 0)")


def _finish_panel(axis: Axes, title: str, max_cost: float, band: bool, cost_label: str) -> None:
    """Legend (with one entry for the seed bands, if any), axis labels with the cost unit, title and limits."""
    handles, labels = axis.get_legend_handles_labels()
    if band:
        handles.append(Patch(color="grey", alpha=0.3))
        labels.append("accuracy mean ± SD over seeds (ddof = 1)")
    axis.legend(handles, labels, fontsize=7, loc="lower right")
    axis.set_xlabel(cost_label)
    axis.set_ylabel("accuracy")
    axis.set_title(title, fontsize=10)
    axis.set_xlim(-0.02, max(1.02, max_cost + 0.02))
    axis.grid(alpha=0.3)


def draw_figure(
    methods: dict[str, list[Point]],
    reference: metrics.Reference,
    title: str,
    ibc_range: tuple[float, float] | None,
    real: dict[str, Any] | None = None,
    cost_label: str = COST_LABEL,
) -> tuple[Figure, dict[str, list[str]]]:
    """The frontier figure: a main panel with every method but the oracle, and an oracle panel if there is one.

    :param methods: Points per method.
    :param reference: The split's anchors (the weak anchor is drawn at c_w).
    :param title: Figure title.
    :param ibc_range: The common ΔIBC cost range, shaded in the main panel.
    :param real: A :func:`load_real_reference` overlay for the main panel, or ``None``.
    :param cost_label: The x axis (:attr:`CostAxis.label`).
    :return: ``(figure, {"main": [...], "oracle": [...]})``, the methods drawn in each panel.
    """
    panels = {"main": sorted(name for name in methods if name != ORACLE), "oracle": [ORACLE] if ORACLE in methods else []}
    figure, axes = plt.subplots(1, 2 if panels["oracle"] else 1, figsize=(13, 5.5) if panels["oracle"] else (7.5, 5.5), squeeze=False)
    main_axis = axes[0][0]
    colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors  # type: ignore[attr-defined]
    band = False
    interpolation_label = INTERPOLATION_LABEL
    max_cost = 1.0
    for index, name in enumerate(panels["main"]):
        banded, dashed = _draw_method(main_axis, name, methods[name], reference, colors[index % len(colors)], interpolation_label)
        band |= banded
        if dashed:
            interpolation_label = "_nolegend_"  # one legend entry for all dashed lines
        max_cost = max(max_cost, *(metrics.normalized_cost(p["strong_tokens_per_query"], reference) for p in methods[name]))
    _draw_anchors(main_axis, reference)
    if ibc_range is not None:
        main_axis.axvspan(*ibc_range, color="grey", alpha=0.08, label=f"mean ΔIBC range c ∈ [{ibc_range[0]:.3f}, {ibc_range[1]:.3f}]")
    main_title = "simulated methods"
    if real is not None:
        # Same rule as for the simulated methods: the envelope of its own points, no line to strong-only.
        real_costs = np.array([p["normalized_cost"] for p in real["points"]])
        real_accuracy = np.array([p["accuracy"] for p in real["points"]])
        pareto = metrics.pareto_points(real_costs, real_accuracy)
        main_axis.plot(real_costs, real_accuracy, "s", color="black", markersize=3, alpha=0.6)
        main_axis.plot(real_costs[pareto], real_accuracy[pareto], "-", color="black", linewidth=1.2, label=real["label"])
        main_axis.plot([0, 1], [real["weak_accuracy"], real["strong_accuracy"]], "*", color="black", markerfacecolor="none", markersize=13,
                       linestyle="none", label="real weak-only / strong-only (authors' release)")
        main_title += " + real TRIM-Thr overlay (real)"
    _finish_panel(main_axis, main_title, max_cost, band, cost_label)
    if panels["oracle"]:
        oracle_axis = axes[0][1]
        oracle_band, _ = _draw_method(oracle_axis, ORACLE, methods[ORACLE], reference, "tab:purple", INTERPOLATION_LABEL)
        _draw_anchors(oracle_axis, reference)
        oracle_cost = max(metrics.normalized_cost(p["strong_tokens_per_query"], reference) for p in methods[ORACLE])
        _finish_panel(oracle_axis, "hindsight oracle (sees outcomes: an upper bound, simulated)", oracle_cost, oracle_band, cost_label)
    figure.suptitle(title)
    figure.tight_layout()
    return figure, panels


# ----------------------------------------------------------------------------------------------
# Markdown


def _value(value: float, sd: float | None) -> str:
    """``value ± sd`` to three decimals; no ``±`` without an SD (one seed)."""
    return f"{value:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def format_cpt(entry: dict[str, Any]) -> str:
    """A CPT cell: ``mean ± SD``, or ``not reached (max PGR y at c z)`` (y, z: mean ± SD over the seeds that fall short).

    :param entry: A method's ``cptXX`` summary.
    """
    if entry["value"] is not None:
        return _value(entry["value"], entry["sd"])
    best = f"max PGR {_value(entry['max_pgr'], entry['max_pgr_sd'])} at c {_value(entry['at_cost'], entry['at_cost_sd'])}"
    if entry["seeds_reached"] == 0:
        return f"not reached ({best})"
    return f"not reached by every seed ({entry['seeds_reached']} of {entry['n_seeds']} do; the others: {best})"


def _range(values: tuple[float, float] | list[float] | None) -> str:
    """``[a, b]`` to three decimals, or ``none``."""
    return "none" if values is None else f"[{values[0]:.3f}, {values[1]:.3f}]"


def format_markdown(
    summaries: dict[str, dict[str, Any]],
    reference: metrics.Reference,
    ibc_range: tuple[float, float] | None,
    matched: dict[str, dict[str, Any]],
    baseline: str,
    real: dict[str, Any] | None,
    skipped: list[dict[str, str]],
    cost: CostAxis,
    below_weak: int,
) -> str:
    """The report: what is simulated and what is real, the rules, the method table and the matched-cost tables.

    In strong tokens with a free weak anchor the text is the one every earlier report had; otherwise it
    names the cost model and unit, gives c_w and the rules with it.

    :param summaries: :func:`summarize_method` per method.
    :param reference: The split's anchors.
    :param ibc_range: The common ΔIBC cost range.
    :param matched: :func:`accuracy_at_matched_cost` per method.
    :param baseline: The baseline's name.
    :param real: The real overlay, or ``None``.
    :param skipped: Files skipped, with the reason.
    :param cost: The results' cost model.
    :param below_weak: How many method points cost less than weak-only (c < c_w).
    """
    weak_cost = reference.weak_normalized_cost
    if cost.name == DEFAULT_COST_MODEL and weak_cost == 0.0:
        anchor_line = (
            f"Anchors: weak-only accuracy {reference.weak_accuracy:.3f}, strong-only accuracy {reference.strong_accuracy:.3f} "
            f"at {reference.strong_tokens_per_query:.1f} strong tokens/query. Cost: {COST_LABEL}."
        )
    else:
        anchor_line = (
            f"Anchors: weak-only accuracy {reference.weak_accuracy:.3f} at {reference.weak_strong_tokens_per_query:.4g}/query "
            f"(c_w = {weak_cost:.3f}), strong-only accuracy {reference.strong_accuracy:.3f} at "
            f"{reference.strong_tokens_per_query:.4g}/query, as the results record them under cost={cost.name} "
            f"(natural unit: {cost.natural_unit}). Cost: {cost.label}."
        )
    if weak_cost == 0.0:
        weak_anchor, ibc_formula, above_weak, line_apgr = "c = 0", "PGR_env(c)/c − 1", "c > 0", ""
    else:
        weak_anchor = f"c = c_w = {weak_cost:.3f}"
        ibc_formula, above_weak = "PGR_env(c)·(1 − c_w)/(c − c_w) − 1", "c > c_w"
        line_apgr = f" APGR counts nothing below c_w: the straight weak→strong line scores (1 − c_w)/2 = {(1.0 - weak_cost) / 2:.3f}."
    lines = ["All methods in this report were measured on simulated rollout trees: they are simulated, not real model results."]
    if real is not None:
        lines.append(
            f"The figure's overlay \"{real['label']}\" is real: published measurements from {Path(real['file']).name} "
            f"(weak-only {real['weak_accuracy']:.3f}, strong-only {real['strong_accuracy']:.3f} on MATH-500)."
        )
    lines += [
        "",
        anchor_line,
        "",
        (
            f"Rules: CPT and APGR come from each method's own points plus the weak-only anchor ({weak_anchor}, PGR 0), never the "
            "strong-only anchor; beyond a method's most expensive point its envelope stays flat. Seeds: mean ± SD over seeds "
            f"(ddof = 1); a CPT counts as reached only if every seed reaches it. Mean ΔIBC: mean of {ibc_formula} over the "
            f"intersection of every non-oracle seed's measured range [cheapest point with {above_weak}, most expensive point]; "
            "† = the method's own points do not cover that range. In the figure, dashed lines to strong-only are "
            f"interpolation, not measurements.{line_apgr}"
        ),
        "",
    ]
    if below_weak:
        lines += [
            (
                f"{below_weak} method point(s) cost less than weak-only (c < c_w): kept as measured, so an envelope may "
                "start below c_w; ΔIBC is undefined there."
            ),
            "",
        ]
    ibc_header = f"mean ΔIBC, c ∈ {_range(ibc_range)}" if ibc_range is not None else "mean ΔIBC (no common c range)"
    lines += [
        f"| method | points | seeds | measured c | CPT(50%) | CPT(80%) | CPT(95%) | APGR | {ibc_header} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, summary in sorted(summaries.items(), key=lambda item: -item[1]["apgr"]["value"]):
        ibc = summary["mean_delta_ibc"]
        ibc_cell = "—" if ibc["value"] is None else _value(ibc["value"], ibc["sd"]) + ("" if ibc["covers_range"] else " †")
        cells = [
            name,
            str(summary["n_points"]),
            str(len(summary["seeds"])),
            _range(summary["measured_cost_range"]),
            *(format_cpt(summary[key]) for key in CPT_TARGETS),
            _value(summary["apgr"]["value"], summary["apgr"]["sd"]),
            ibc_cell,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for name, comparison in sorted(matched.items()):
        share = comparison["share_at_least_baseline"]
        verdict = (
            f"accuracy ≥ {baseline}'s envelope at {share:.0%} of the {comparison['n_compared']} points inside its range"
            if share is not None
            else f"no point inside {baseline}'s range"
        )
        lines += [
            "",
            (
                f"{name} vs {baseline} at matched c(π) (per-parameter means over seeds; {baseline}'s measured c range "
                f"{_range(comparison['baseline_range'])}, no extrapolation): {verdict}"
            ),
            "",
            f"| c(π) | {name} | {baseline} |",
            "|---|---|---|",
        ]
        for row in comparison["points"]:
            other = f"{row['baseline_accuracy']:.3f}" if row["baseline_accuracy"] is not None else row["note"]
            lines.append(f"| {row['normalized_cost']:.3f} | {row['accuracy']:.3f} | {other} |")
    if skipped:
        lines += ["", "Skipped results files:", ""] + [f"- {entry['reason']}" for entry in skipped]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Output


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through a temporary file in its directory and ``os.replace`` it into place.

    A reader (or a crash) never sees a half-written report.

    :param path: The final file.
    :param write: Writes the content to the path it is given.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; a report is for others to read
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _json_ready(value: Any) -> Any:
    """``value`` with NaN/inf as null and tuples as lists, so the JSON is standard."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(
    paths: list[str], baseline: str, real_reference: Path | None, title: str
) -> tuple[str, dict[str, Any], Figure]:
    """Gather, summarise and draw: the markdown, the JSON content and the figure.

    :param paths: Run dirs, multirun dirs or results.json files.
    :param baseline: Method to compare the others with at matched c(π).
    :param real_reference: Reference file for the real overlay, or ``None``.
    :param title: Figure title.
    :raises ReportError: If nothing usable remains (see :func:`gather`) or the real reference is bad.
    """
    files = find_results(paths)
    if not files:
        raise ReportError(f"no results.json under {paths}")
    reference, methods, skipped, cost = gather(files)
    if real_reference is not None and cost.name != DEFAULT_COST_MODEL:
        raise ReportError(
            f"real_reference: the real overlay counts strong tokens, these results cost={cost.name} ({cost.natural_unit}); "
            "drop real_reference or report results measured in strong tokens"
        )
    real = load_real_reference(real_reference) if real_reference is not None else None
    summaries, ibc_range = summarize_methods(methods, reference)
    matched = {}
    if baseline in methods:
        for name, points in methods.items():
            if name != baseline:
                matched[name] = accuracy_at_matched_cost(mean_over_seeds(points, reference), methods[baseline], reference, baseline)
    figure, panels = draw_figure(methods, reference, title, ibc_range, real, cost.label)
    below_weak = sum(
        metrics.normalized_cost(p["strong_tokens_per_query"], reference) < reference.weak_normalized_cost
        for points in methods.values()
        for p in points
    )
    report = format_markdown(summaries, reference, ibc_range, matched, baseline, real, skipped, cost, below_weak)
    content = {
        "simulated": "every method below was measured on simulated rollout trees",
        "cost_unit": cost.label,
        "reference": reference.__dict__,
        "delta_ibc_range": ibc_range,
        "methods": summaries,
        "mean_points": {name: mean_over_seeds(points, reference) for name, points in methods.items()},
        "baseline": baseline,
        "matched_cost": matched,
        "figure": {"panels": panels, "files": ["frontier.png", "frontier.pdf"]},
        "real_reference": real,
        "files": [str(file) for file in files],
        "skipped_files": skipped,
    }
    return report, _json_ready(content), figure


def write_report(paths: list[str], out: str | Path, baseline: str = "thr", real_reference: str | None = None,
                 title: str = "Accuracy vs normalised strong cost") -> Path:
    """Write frontier.md/json/png/pdf to ``out`` (each atomically) and print the markdown.

    :param paths: run dirs, multirun dirs or results.json files.
    :param out: directory for the report.
    :param baseline: method to compare the others with at matched c(π).
    :param real_reference: ``None`` (no overlay), ``packaged`` (the authors' figures shipped with
        trim) or a file in that format.
    :param title: figure title.
    :raises SystemExit: naming what made the report impossible (nothing usable, anchors disagree, ...).
    """
    reference_file = None if real_reference is None else PACKAGED_REFERENCE if real_reference == "packaged" else Path(real_reference)
    try:
        report, content, figure = build_report([str(path) for path in paths], baseline, reference_file, title)
    except ReportError as error:
        sys.exit(f"frontier.py: error: {error}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(out / "frontier.md", lambda path: path.write_text(report + "\n"))
        write_atomic(out / "frontier.json", lambda path: path.write_text(json.dumps(content, indent=2) + "\n"))
        write_atomic(out / "frontier.png", lambda path: figure.savefig(path, format="png", dpi=110))
        write_atomic(out / "frontier.pdf", lambda path: figure.savefig(path, format="pdf"))
    finally:
        plt.close(figure)
    print(report)
    print("\nwrote " + ", ".join(str(out / name) for name in OUTPUTS))
    return out


#: Columns of the method table logged to the tracker: one row per method, numbers as in frontier.json.
TABLE_COLUMNS = ["method", "points", "seeds", "apgr", "apgr_sd", "cpt50", "cpt80", "cpt95", "mean_delta_ibc"]


def log_report(tracker: Tracker, out: Path) -> None:
    """Log a written report to ``tracker``: ``frontier.png`` as the image ``frontier``, the method table
    (:data:`TABLE_COLUMNS`; ``None`` where a CPT is not reached) as ``frontier_methods`` and each
    method's APGR as the summary value ``frontier/<method>/apgr``.

    :param tracker: the run to log to (the base :class:`Tracker` ignores everything).
    :param out: the report directory :func:`write_report` wrote.
    """
    content = json.loads((out / "frontier.json").read_text())
    rows = [
        [name, summary["n_points"], len(summary["seeds"]), summary["apgr"]["value"], summary["apgr"]["sd"],
         *(summary[key]["value"] for key in CPT_TARGETS), summary["mean_delta_ibc"]["value"]]
        for name, summary in sorted(content["methods"].items())
    ]
    tracker.log_image("frontier", out / "frontier.png")
    tracker.log_table("frontier_methods", TABLE_COLUMNS, rows)
    tracker.summary({f"frontier/{name}/apgr": summary["apgr"]["value"] for name, summary in content["methods"].items()})


@hydra.main(config_path=str(config_dir()), config_name="frontier", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    paths = [cfg.paths] if isinstance(cfg.paths, str) else list(cfg.paths)
    real_reference = None if cfg.real_reference is None else str(cfg.real_reference)
    out = write_report([str(path) for path in paths], str(cfg.out), str(cfg.baseline), real_reference, str(cfg.title))
    settings = dict(cfg.logger)
    settings["job_type"] = settings.get("job_type") or "frontier"
    tracker = make_tracker(settings, OmegaConf.to_container(cfg, resolve=True), out, "frontier")  # type: ignore[arg-type]
    log_report(tracker, out)
    tracker.finish()


def main() -> None:
    """The ``trim-frontier`` console script."""
    _app()


if __name__ == "__main__":
    main()
