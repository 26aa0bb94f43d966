"""Cost/performance metrics comparing step-level routing policies with weak- and strong-only models.

A *point* is one routing-policy setting evaluated on a split: its accuracy and its mean cost
per query (C̄: strong-model tokens under the paper's unit, or cost units of another cost model,
:mod:`trim_env.cost`). Points are placed on a normalized cost axis
``c = C̄ / C̄_strong_only`` (both in the same unit) and a performance axis PGR (performance gap
recovered). A set of points forms a *frontier*, summarised by:

* **CPT(x)** - least normalized cost at which the frontier's upper envelope reaches PGR ≥ x.
* **APGR** - area under the PGR-vs-cost envelope on ``c ∈ [0, 1]``.
* **ΔIBC** - AutoMix's relative incremental benefit per cost over the weak→strong line.
* **mean envelope ΔIBC** - ΔIBC along the envelope, averaged over a given cost range, so that
  frontiers measured at different costs are compared on the same range.

**The weak anchor's cost.** Counting strong tokens, weak-only is free: its point is (c, PGR) =
(0, 0). Under a cost model that also charges the weak model (price, FLOPs, latency) it sits at
``c_w = C̄_weak_only / C̄_strong_only > 0`` (:attr:`Reference.weak_normalized_cost`, ``0 ≤ c_w < 1``).
Then the weak→strong line runs from (c_w, 0) to (1, 1); ΔIBC is measured against it,
``ΔIBC = [PGR / (c − c_w)] / [1 / (1 − c_w)] − 1``, and is undefined (``nan``) at ``c ≤ c_w``;
APGR still integrates on ``c ∈ [0, 1]`` and counts nothing below the frontier's cheapest point, so
the straight line scores ``(1 − c_w) / 2`` instead of 0.5 (compare APGRs under one cost model).
A point cheaper than weak-only is not expected (a routed query pays a weak call and a PRM call
per step; weak-only pays one weak call) but not impossible (a strong rewrite can shorten the
solution), so it is kept as measured: it joins the envelope like any other point. With
``c_w = 0`` every formula is, operation for operation, the one used before the weak anchor could
cost anything, so results are bit for bit unchanged.

The upper envelope connects consecutive Pareto-optimal points with straight lines (a router
can mix two policies at random and land anywhere on that segment). It is deliberately *not*
the convex hull: it only interpolates between neighbours on the Pareto staircase.

Degenerate cases (no accuracy gap between the models, zero-cost points) return ``nan``
rather than raising, so that sweeps over many splits do not abort; malformed inputs
(empty or mismatched arrays, NaN/inf values) raise :class:`ValueError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Reference",
    "FrontierSummary",
    "accuracy",
    "strong_tokens_per_query",
    "normalized_cost",
    "pgr",
    "delta_ibc",
    "pareto_points",
    "envelope",
    "cpt",
    "apgr",
    "mean_delta_ibc",
    "mean_envelope_delta_ibc",
    "summarize_frontier",
    "auroc",
]


def _check_finite_scalar(name: str, value: float) -> float:
    """Return ``value`` as a float, raising if it is NaN or infinite.

    :param name: Argument name used in the error message.
    :param value: Scalar to check.
    :raises ValueError: If ``value`` is not finite.
    """
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be finite, got {as_float!r}")
    return as_float


def _check_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float, raising unless it is a finite number in ``[0, 1]``.

    :param name: Argument name used in the error message.
    :param value: Scalar to check.
    :raises ValueError: If ``value`` is not finite or lies outside ``[0, 1]``.
    """
    as_float = _check_finite_scalar(name, value)
    if not 0.0 <= as_float <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {as_float!r}")
    return as_float


def _as_finite_1d(name: str, values: ArrayLike) -> np.ndarray:
    """Convert ``values`` to a non-empty, finite, one-dimensional float array.

    :param name: Argument name used in error messages.
    :param values: Array-like input.
    :raises ValueError: If the input is not 1-D, is empty, or contains NaN/inf.
    """
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    bad = ~np.isfinite(array)
    if bad.any():
        first_bad = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite, got {float(array[first_bad])!r} at index {first_bad}"
        )
    return array


def _as_paired_1d(
    first_name: str, first: ArrayLike, second_name: str, second: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Validate two per-point arrays and check that they have the same length.

    :param first_name: Name of the first argument, for error messages.
    :param first: First per-point array.
    :param second_name: Name of the second argument, for error messages.
    :param second: Second per-point array.
    :raises ValueError: If either array is invalid or their lengths differ.
    """
    first_array = _as_finite_1d(first_name, first)
    second_array = _as_finite_1d(second_name, second)
    if first_array.size != second_array.size:
        raise ValueError(
            f"{first_name} and {second_name} must have the same length, "
            f"got {first_array.size} and {second_array.size}"
        )
    return first_array, second_array


@dataclass(frozen=True)
class Reference:
    """Weak-only and strong-only anchors on one split.

    The two cost fields keep the names of the paper's unit (strong tokens) so that results files
    stay as they are; under another cost model they hold C̄ in that model's unit, the same unit as
    the points measured against them.

    :param weak_accuracy: Accuracy of the weak model alone, in ``[0, 1]``.
    :param strong_accuracy: Accuracy of the strong model alone, in ``[0, 1]``.
    :param strong_tokens_per_query: C̄ of the strong-only policy; must be positive because it
        is the unit of the normalized cost axis.
    :param weak_strong_tokens_per_query: C̄ of the weak-only policy: 0 in strong tokens, positive
        under a cost model that charges the weak model; must be below strong-only's C̄.
    :raises ValueError: If any field is out of range, naming it.
    """

    weak_accuracy: float
    strong_accuracy: float
    strong_tokens_per_query: float
    weak_strong_tokens_per_query: float = 0.0

    def __post_init__(self) -> None:
        _check_fraction("weak_accuracy", self.weak_accuracy)
        _check_fraction("strong_accuracy", self.strong_accuracy)
        strong_cost = _check_finite_scalar("strong_tokens_per_query", self.strong_tokens_per_query)
        if strong_cost <= 0.0:
            raise ValueError(
                "strong_tokens_per_query must be positive, "
                f"got {float(self.strong_tokens_per_query)!r}"
            )
        weak_cost = _check_finite_scalar(
            "weak_strong_tokens_per_query", self.weak_strong_tokens_per_query
        )
        if weak_cost < 0.0:
            raise ValueError(
                "weak_strong_tokens_per_query must be non-negative, "
                f"got {weak_cost!r}"
            )
        # c_w ≥ 1 leaves no weak→strong line to measure ΔIBC against, nor a gap to route in.
        if weak_cost >= strong_cost:
            raise ValueError(
                "weak_strong_tokens_per_query must be below strong_tokens_per_query "
                f"(weak-only's normalized cost c_w < 1), got {weak_cost!r} >= {strong_cost!r}"
            )

    @property
    def weak_normalized_cost(self) -> float:
        """``c_w = C̄_weak_only / C̄_strong_only`` in ``[0, 1)``: where the weak anchor sits on the cost axis."""
        return self.weak_strong_tokens_per_query / self.strong_tokens_per_query


@dataclass(frozen=True)
class FrontierSummary:
    """Headline metrics of one frontier (see :func:`summarize_frontier`).

    :param cpt50: CPT(50%), normalized cost to recover half the performance gap.
    :param cpt80: CPT(80%).
    :param cpt95: CPT(95%).
    :param apgr: Area under the PGR envelope on normalized cost ``[0, 1]``.
    :param mean_delta_ibc: Mean ΔIBC over the frontier's points, ignoring ``nan``.
    :param n_points: Number of points the summary was computed from.
    """

    cpt50: float
    cpt80: float
    cpt95: float
    apgr: float
    mean_delta_ibc: float
    n_points: int


def accuracy(correct: np.ndarray) -> float:
    """Fraction of queries answered correctly.

    :param correct: One-dimensional per-query correctness, booleans or 0/1.
    :return: Mean correctness in ``[0, 1]``.
    :raises ValueError: If ``correct`` is empty, not 1-D, or holds values other than 0/1.
    """
    as_float = _as_finite_1d("correct", correct)
    not_binary = (as_float != 0.0) & (as_float != 1.0)
    if not_binary.any():
        first_bad = int(np.flatnonzero(not_binary)[0])
        raise ValueError(
            f"correct must contain only 0/1 or booleans, got {float(as_float[first_bad])!r} "
            f"at index {first_bad}"
        )
    return float(as_float.mean())


def strong_tokens_per_query(strong_tokens: np.ndarray) -> float:
    """Mean number of tokens decoded by the strong model per query (C̄).

    :param strong_tokens: One-dimensional per-query strong-token counts.
    :return: Mean strong tokens per query.
    :raises ValueError: If ``strong_tokens`` is empty, not 1-D, non-finite or negative.
    """
    counts = _as_finite_1d("strong_tokens", strong_tokens)
    negative = counts < 0
    if negative.any():
        first_bad = int(np.flatnonzero(negative)[0])
        raise ValueError(
            f"strong_tokens must be non-negative, got {float(counts[first_bad])!r} "
            f"at index {first_bad}"
        )
    return float(counts.mean())


def normalized_cost(strong_tokens_per_query: float, reference: Reference) -> float:
    """Normalized cost ``c(π) = C̄_π / C̄_strong_only``.

    :param strong_tokens_per_query: C̄ of the policy being measured, in the unit of ``reference``.
    :param reference: Anchors of the split; supplies C̄ of the strong-only policy.
    :return: 1 for strong-only; ``c_w`` for weak-only (0 when counting strong tokens).
    :raises ValueError: If ``strong_tokens_per_query`` is not finite or is negative.
    """
    policy_cost = _check_finite_scalar("strong_tokens_per_query", strong_tokens_per_query)
    if policy_cost < 0.0:
        raise ValueError(
            f"strong_tokens_per_query must be non-negative, got {policy_cost!r}"
        )
    return policy_cost / reference.strong_tokens_per_query


def pgr(accuracy: float, reference: Reference) -> float:
    """Performance gap recovered, ``(acc_π − acc_weak) / (acc_strong − acc_weak)``.

    :param accuracy: Accuracy of the policy being measured, in ``[0, 1]``.
    :param reference: Anchors of the split.
    :return: 0 at weak-only accuracy, 1 at strong-only accuracy; ``nan`` when
        ``acc_strong == acc_weak`` because there is no gap to recover.
    :raises ValueError: If ``accuracy`` is not a finite number in ``[0, 1]``.
    """
    policy_accuracy = _check_fraction("accuracy", accuracy)
    gap = reference.strong_accuracy - reference.weak_accuracy
    if gap == 0.0:
        return math.nan
    return (policy_accuracy - reference.weak_accuracy) / gap


def delta_ibc(accuracy: float, strong_tokens_per_query: float, reference: Reference) -> float:
    """AutoMix's ΔIBC: relative gain in incremental benefit per cost over the weak→strong line.

    ``IBC_π = (acc_π − acc_weak) / (C̄_π − C̄_weak)``,
    ``IBC_base = (acc_strong − acc_weak) / (C̄_strong − C̄_weak)`` and
    ``ΔIBC = (IBC_π − IBC_base) / IBC_base``; in normalized terms
    ``[PGR / (c − c_w)] / [1 / (1 − c_w)] − 1``. A point on the straight weak→strong line
    (from (c_w, 0) to (1, 1)) scores 0; a point twice as efficient scores 1.

    :param accuracy: Accuracy of the policy being measured, in ``[0, 1]``.
    :param strong_tokens_per_query: C̄ of the policy being measured, in the unit of ``reference``.
    :param reference: Anchors of the split.
    :return: ΔIBC, or ``nan`` when the policy costs no more than weak-only
        (``C̄_π ≤ C̄_weak``: no extra cost to divide by) or when ``IBC_base`` is 0 (no accuracy gap).
    :raises ValueError: If ``accuracy`` or ``strong_tokens_per_query`` is invalid.
    """
    policy_accuracy = _check_fraction("accuracy", accuracy)
    policy_cost = _check_finite_scalar("strong_tokens_per_query", strong_tokens_per_query)
    if policy_cost < 0.0:
        raise ValueError(
            f"strong_tokens_per_query must be non-negative, got {policy_cost!r}"
        )
    weak_cost = reference.weak_strong_tokens_per_query
    policy_extra_cost = policy_cost - weak_cost
    # Positive: Reference refuses a weak-only C̄ at or above strong-only's.
    strong_extra_cost = reference.strong_tokens_per_query - weak_cost
    if policy_extra_cost <= 0.0:
        return math.nan
    ibc_base = (reference.strong_accuracy - reference.weak_accuracy) / strong_extra_cost
    if ibc_base == 0.0:
        return math.nan
    ibc_policy = (policy_accuracy - reference.weak_accuracy) / policy_extra_cost
    return (ibc_policy - ibc_base) / ibc_base


def pareto_points(costs: ArrayLike, values: ArrayLike) -> np.ndarray:
    """Indices of the Pareto-optimal points, sorted by increasing cost.

    A point is dominated when another point has cost ≤ and value ≥, with at least one
    inequality strict. Of several identical (cost, value) points only the lowest index is
    kept, so the returned costs and values are both strictly increasing.

    :param costs: Per-point costs (lower is better).
    :param values: Per-point values (higher is better).
    :return: Integer index array into ``costs``/``values``.
    :raises ValueError: If the arrays are empty, non-finite, or of different lengths.
    """
    cost_array, value_array = _as_paired_1d("costs", costs, "values", values)
    # Cost ascending, then value descending, then index ascending: the first point seen at
    # each cost is the best one there, so a single running-max pass finds the staircase.
    order = np.lexsort((np.arange(cost_array.size), -value_array, cost_array))
    kept: list[int] = []
    best_value = -math.inf
    for index in order:
        if value_array[index] > best_value:
            kept.append(int(index))
            best_value = float(value_array[index])
    return np.asarray(kept, dtype=np.intp)


def _pareto_curve(costs: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (cost, value) of the upper envelope, both strictly increasing.

    :param costs: Per-point costs.
    :param values: Per-point values.
    """
    cost_array, value_array = _as_paired_1d("costs", costs, "values", values)
    optimal = pareto_points(cost_array, value_array)
    return cost_array[optimal], value_array[optimal]


def envelope(costs: ArrayLike, values: ArrayLike, at: ArrayLike) -> np.ndarray:
    """Upper envelope of a frontier evaluated at the given costs.

    The envelope linearly interpolates between consecutive Pareto-optimal points, is
    ``nan`` below the cheapest point (no policy is that cheap) and stays flat at the best
    value beyond the most expensive Pareto point.

    :param costs: Per-point costs.
    :param values: Per-point values (e.g. PGR).
    :param at: Costs at which to evaluate the envelope (scalar or array).
    :return: Float array with the shape of ``at``.
    :raises ValueError: If the frontier is invalid or ``at`` contains NaN/inf.
    """
    curve_costs, curve_values = _pareto_curve(costs, values)
    query = np.asarray(at, dtype=float)
    if not np.isfinite(query).all():
        raise ValueError(f"at must be finite, got {at!r}")
    # np.interp already clamps to the last value on the right, which is the flat extension.
    result = np.interp(query, curve_costs, curve_values)
    return np.where(query < curve_costs[0], math.nan, result)


def cpt(costs: ArrayLike, pgrs: ArrayLike, target: float) -> float:
    """Cost to reach a performance threshold: least cost where the envelope has PGR ≥ ``target``.

    :param costs: Per-point normalized costs.
    :param pgrs: Per-point PGR values.
    :param target: PGR threshold as a fraction (0.5 for CPT(50%)).
    :return: The least such cost, interpolated linearly between consecutive Pareto points
        (never below the cheapest point: with the weak anchor (c_w, 0) cheapest, CPT(x ≤ 0) is
        c_w); ``nan`` if no point reaches ``target``.
    :raises ValueError: If the frontier is invalid or ``target`` is not finite.
    """
    threshold = _check_finite_scalar("target", target)
    curve_costs, curve_values = _pareto_curve(costs, pgrs)
    reached = np.flatnonzero(curve_values >= threshold)
    if reached.size == 0:
        return math.nan
    first = int(reached[0])
    if first == 0:
        return float(curve_costs[0])
    # The envelope is increasing, so the crossing lies on the segment ending at `first`.
    cost_lo, cost_hi = curve_costs[first - 1], curve_costs[first]
    value_lo, value_hi = curve_values[first - 1], curve_values[first]
    fraction = (threshold - value_lo) / (value_hi - value_lo)
    return float(cost_lo + fraction * (cost_hi - cost_lo))


def apgr(costs: ArrayLike, pgrs: ArrayLike) -> float:
    """Area under the PGR-vs-normalized-cost envelope on ``c ∈ [0, 1]``.

    The envelope is integrated exactly with the trapezoid rule at its breakpoints. Below the
    cheapest point it counts as 0: callers include the weak-only point (c_w, 0), so with a free
    weak model this never applies and with a priced one ``[0, c_w)`` adds nothing (no policy is
    that cheap). A point cheaper than the weak anchor is a measurement like any other: the
    envelope starts there. Beyond the most expensive Pareto point the envelope stays flat at
    that point's PGR, as in :func:`envelope`, so a frontier given without the strong-only point
    is not drawn up to it. Points with c > 1 only contribute through the segment that crosses
    c = 1. PGR values are integrated as given, so negative PGR subtracts area.

    :param costs: Per-point normalized costs.
    :param pgrs: Per-point PGR values.
    :return: The area; ``(1 − c_w) / 2`` for the straight weak→strong line, 0.5 when ``c_w = 0``.
    :raises ValueError: If the frontier is invalid.
    """
    curve_costs, curve_values = _pareto_curve(costs, pgrs)
    lower = max(float(curve_costs[0]), 0.0)
    if lower >= 1.0:
        return 0.0
    interior = curve_costs[(curve_costs > lower) & (curve_costs < 1.0)]
    breakpoints = np.concatenate(([lower], interior, [1.0]))
    heights = np.interp(breakpoints, curve_costs, curve_values)
    return float(np.sum(np.diff(breakpoints) * (heights[:-1] + heights[1:]) / 2.0))


def mean_delta_ibc(
    accuracies: ArrayLike, strong_tokens_per_query: ArrayLike, reference: Reference
) -> float:
    """Average ΔIBC over a frontier's points, ignoring points where ΔIBC is ``nan``.

    :param accuracies: Per-point accuracies.
    :param strong_tokens_per_query: Per-point C̄ (raw strong tokens, not normalized).
    :param reference: Anchors of the split.
    :return: Mean ΔIBC, or ``nan`` if every point's ΔIBC is ``nan``.
    :raises ValueError: If the arrays are empty, non-finite, or of different lengths.
    """
    accuracy_array, cost_array = _as_paired_1d(
        "accuracies", accuracies, "strong_tokens_per_query", strong_tokens_per_query
    )
    per_point = np.array(
        [delta_ibc(acc, cost, reference) for acc, cost in zip(accuracy_array, cost_array)]
    )
    defined = per_point[~np.isnan(per_point)]
    # Checked explicitly because np.nanmean warns on an all-nan input.
    if defined.size == 0:
        return math.nan
    return float(defined.mean())


def mean_envelope_delta_ibc(
    costs: ArrayLike, pgrs: ArrayLike, lower: float, upper: float, weak_cost: float = 0.0
) -> float:
    """Mean of ``ΔIBC(c) = PGR_env(c) · (1 − c_w) / (c − c_w) − 1`` over normalized costs ``c ∈ [lower, upper]``.

    ``c_w`` is ``weak_cost``, the weak anchor's normalized cost (0 when counting strong tokens,
    where ``ΔIBC(c) = PGR_env(c) / c − 1``). ``PGR_env`` is the frontier's upper envelope
    (:func:`envelope`: straight between neighbouring Pareto points, flat beyond the most expensive
    one). The mean is exact: on each envelope segment ``PGR_env(c) = α + β (c − c_w)`` and
    ``PGR_env / (c − c_w)`` integrates to ``α ln((c₂ − c_w)/(c₁ − c_w)) + β (c₂ − c₁)``.

    Relation to :func:`delta_ibc`: AutoMix's per-point ``ΔIBC = IBC_π / IBC_base − 1 =
    [PGR_π / (c_π − c_w)] / [1 / (1 − c_w)] − 1``, so ``ΔIBC(c)`` equals :func:`delta_ibc` of every
    Pareto point at that point's cost and follows the envelope between them.
    :func:`mean_delta_ibc` averages over whichever points a frontier happens to have; this averages
    over a fixed range, so two frontiers are compared at the same costs.

    :param costs: Per-point normalized costs.
    :param pgrs: Per-point PGR values.
    :param lower: Lowest normalized cost of the range; must lie above ``weak_cost`` (ΔIBC(c) is
        undefined at ``c ≤ c_w``), so positive.
    :param upper: Highest normalized cost of the range, ``≥ lower``; ``upper == lower`` gives ΔIBC
        at that one cost.
    :param weak_cost: ``c_w`` in ``[0, 1)`` (:attr:`Reference.weak_normalized_cost`).
    :return: The mean; ``nan`` if ``lower`` is below the cheapest point (the envelope is undefined
        there).
    :raises ValueError: If the frontier is invalid, ``weak_cost`` is outside ``[0, 1)``, ``lower``
        is not above ``weak_cost`` or ``upper < lower``.
    """
    low = _check_finite_scalar("lower", lower)
    high = _check_finite_scalar("upper", upper)
    weak = _check_finite_scalar("weak_cost", weak_cost)
    if not 0.0 <= weak < 1.0:
        raise ValueError(f"weak_cost (the weak anchor's normalized cost c_w) must lie in [0, 1), got {weak!r}")
    if low <= weak:
        raise ValueError(
            f"lower must be positive and above weak_cost = {weak!r} "
            f"(ΔIBC(c) = PGR · (1 − c_w)/(c − c_w) − 1 is undefined at c ≤ c_w), got {low!r}"
        )
    if high < low:
        raise ValueError(f"upper must be >= lower, got upper={high!r} < lower={low!r}")
    curve_costs, curve_values = _pareto_curve(costs, pgrs)
    if low < curve_costs[0]:
        return math.nan
    # Every operation below is exact for weak = 0 (x − 0 = x, x · 1 = x), so c_w = 0 gives the
    # values of the formula PGR_env(c) / c − 1 bit for bit.
    line_slope = 1.0 - weak
    if high == low:
        return float(np.interp(low, curve_costs, curve_values)) * line_slope / (low - weak) - 1.0
    interior = curve_costs[(curve_costs > low) & (curve_costs < high)]
    breakpoints = np.concatenate(([low], interior, [high]))
    heights = np.interp(breakpoints, curve_costs, curve_values)
    slopes = np.diff(heights) / np.diff(breakpoints)
    extra_costs = breakpoints - weak
    intercepts = heights[:-1] - slopes * extra_costs[:-1]
    integral = np.sum(
        intercepts * np.log(extra_costs[1:] / extra_costs[:-1]) + slopes * np.diff(breakpoints)
    )
    return float(integral) * line_slope / (high - low) - 1.0


def summarize_frontier(
    accuracies: ArrayLike, strong_tokens_per_query: ArrayLike, reference: Reference
) -> FrontierSummary:
    """CPT(50/80/95%), APGR and mean ΔIBC of one frontier.

    Anchors are not added automatically: include the weak-only and strong-only points in the
    inputs if they should be part of the frontier. With no accuracy gap between the models
    PGR is undefined, so every metric is ``nan``.

    :param accuracies: Per-point accuracies.
    :param strong_tokens_per_query: Per-point C̄ (raw strong tokens, not normalized).
    :param reference: Anchors of the split.
    :return: The frontier's summary; ``n_points`` is the number of input points.
    :raises ValueError: If the arrays are empty, non-finite, or of different lengths.
    """
    accuracy_array, cost_array = _as_paired_1d(
        "accuracies", accuracies, "strong_tokens_per_query", strong_tokens_per_query
    )
    mean_ibc = mean_delta_ibc(accuracy_array, cost_array, reference)
    if reference.strong_accuracy == reference.weak_accuracy:
        return FrontierSummary(
            cpt50=math.nan,
            cpt80=math.nan,
            cpt95=math.nan,
            apgr=math.nan,
            mean_delta_ibc=mean_ibc,
            n_points=int(accuracy_array.size),
        )
    costs = np.array([normalized_cost(cost, reference) for cost in cost_array])
    pgrs = np.array([pgr(acc, reference) for acc in accuracy_array])
    return FrontierSummary(
        cpt50=cpt(costs, pgrs, 0.5),
        cpt80=cpt(costs, pgrs, 0.8),
        cpt95=cpt(costs, pgrs, 0.95),
        apgr=apgr(costs, pgrs),
        mean_delta_ibc=mean_ibc,
        n_points=int(accuracy_array.size),
    )


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` for predicting ``labels`` (1 = positive), ties averaged.

    :param scores: Higher means more likely positive.
    :param labels: 0/1 outcomes.
    :return: AUROC in [0, 1]; ``nan`` if only one class is present.
    """
    score_array = np.asarray(scores, dtype=np.float64).ravel()
    label_array = np.asarray(labels).ravel().astype(bool)
    if score_array.size != label_array.size:
        raise ValueError(f"scores ({score_array.size}) and labels ({label_array.size}) differ in length")
    positives = int(label_array.sum())
    negatives = label_array.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(score_array, kind="mergesort")
    ranks = np.empty(score_array.size, dtype=np.float64)
    sorted_scores = score_array[order]
    # Average ranks over ties (Mann-Whitney U).
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [score_array.size]])
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    rank_sum = ranks[label_array].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))
