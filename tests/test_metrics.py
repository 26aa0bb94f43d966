"""Tests for trim_env.metrics against hand-computed frontier, PGR, CPT, APGR and ΔIBC values."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from trim_env.metrics import (
    FrontierSummary,
    Reference,
    accuracy,
    apgr,
    cpt,
    delta_ibc,
    envelope,
    mean_delta_ibc,
    mean_envelope_delta_ibc,
    normalized_cost,
    pareto_points,
    pgr,
    strong_tokens_per_query,
    summarize_frontier,
)

# Weak model 50% accurate, strong model 90%, strong-only decodes 100 strong tokens per query.
REFERENCE = Reference(weak_accuracy=0.5, strong_accuracy=0.9, strong_tokens_per_query=100.0)
NO_GAP_REFERENCE = Reference(weak_accuracy=0.7, strong_accuracy=0.7, strong_tokens_per_query=100.0)

# Frontier used in several CPT/envelope tests: weak-only, one router setting, strong-like point.
THREE_POINT_COSTS = [0.0, 0.2, 0.6]
THREE_POINT_PGRS = [0.0, 0.4, 1.0]


# --- per-split scalars -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "expected"),
    [
        (np.array([1, 0, 1, 1]), 0.75),
        (np.array([True, False]), 0.5),
        (np.array([0, 0, 0]), 0.0),
    ],
)
def test_accuracy_is_fraction_correct(correct: np.ndarray, expected: float) -> None:
    assert accuracy(correct) == pytest.approx(expected)


def test_accuracy_rejects_non_binary_values() -> None:
    with pytest.raises(ValueError, match="correct must contain only 0/1"):
        accuracy(np.array([1, 2, 0]))


def test_strong_tokens_per_query_is_mean_count() -> None:
    assert strong_tokens_per_query(np.array([0, 100, 50])) == pytest.approx(50.0)


def test_strong_tokens_per_query_rejects_negative_counts() -> None:
    message = "strong_tokens must be non-negative, got -3.0 at index 1"
    with pytest.raises(ValueError, match=message):
        strong_tokens_per_query(np.array([5, -3]))


@pytest.mark.parametrize(
    ("tokens", "expected"), [(0.0, 0.0), (25.0, 0.25), (100.0, 1.0), (150.0, 1.5)]
)
def test_normalized_cost_divides_by_strong_only_tokens(tokens: float, expected: float) -> None:
    assert normalized_cost(tokens, REFERENCE) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("policy_accuracy", "expected"),
    [(0.5, 0.0), (0.9, 1.0), (0.7, 0.5), (0.4, -0.25)],
)
def test_pgr_is_fraction_of_weak_to_strong_gap(policy_accuracy: float, expected: float) -> None:
    assert pgr(policy_accuracy, REFERENCE) == pytest.approx(expected)


def test_pgr_is_nan_when_models_have_no_gap() -> None:
    assert math.isnan(pgr(0.7, NO_GAP_REFERENCE))


# --- ΔIBC ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy_accuracy", "tokens", "expected"),
    [
        (0.7, 50.0, 0.0),  # on the straight weak→strong line
        (0.9, 100.0, 0.0),  # strong-only itself
        (0.9, 50.0, 1.0),  # twice the accuracy gain per token
        (0.6, 50.0, -0.5),  # half the accuracy gain per token
    ],
)
def test_delta_ibc_measures_relative_efficiency_over_baseline_line(
    policy_accuracy: float, tokens: float, expected: float
) -> None:
    assert delta_ibc(policy_accuracy, tokens, REFERENCE) == pytest.approx(expected)


def test_delta_ibc_subtracts_weak_only_strong_tokens() -> None:
    reference = Reference(
        weak_accuracy=0.5,
        strong_accuracy=0.9,
        strong_tokens_per_query=110.0,
        weak_strong_tokens_per_query=10.0,
    )
    # IBC_π = 0.4 / 50 = 0.008, IBC_base = 0.4 / 100 = 0.004.
    assert delta_ibc(0.9, 60.0, reference) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("policy_accuracy", "tokens", "reference"),
    [
        (0.8, 0.0, REFERENCE),  # zero cost point
        (0.8, 50.0, NO_GAP_REFERENCE),  # no accuracy gap, IBC_base == 0
        (
            0.8,
            50.0,
            Reference(0.5, 0.9, strong_tokens_per_query=10.0, weak_strong_tokens_per_query=10.0),
        ),  # strong-only costs the same as weak-only
    ],
    ids=["zero_cost_point", "no_gap", "no_cost_gap"],
)
def test_delta_ibc_is_nan_in_degenerate_cases(
    policy_accuracy: float, tokens: float, reference: Reference
) -> None:
    assert math.isnan(delta_ibc(policy_accuracy, tokens, reference))


def test_mean_delta_ibc_averages_points_ignoring_nan() -> None:
    # ΔIBC per point: nan (zero cost), 0, 1, 0.
    accuracies = [0.5, 0.7, 0.9, 0.9]
    tokens = [0.0, 50.0, 50.0, 100.0]
    assert mean_delta_ibc(accuracies, tokens, REFERENCE) == pytest.approx(1.0 / 3.0)


def test_mean_delta_ibc_is_nan_when_every_point_is_nan() -> None:
    assert math.isnan(mean_delta_ibc([0.5, 0.6], [0.0, 0.0], REFERENCE))


@pytest.mark.parametrize(
    ("lower", "upper", "expected"),
    [
        (0.25, 0.5, 1.0),  # PGR = 2c on the first segment: ΔIBC(c) = 1 throughout
        (0.5, 1.0, 2.0 * math.log(2.0) - 1.0),  # flat PGR = 1: mean of 1/c − 1 is ln 2 / 0.5 − 1
        (0.5, 0.5, 1.0),  # one cost: ΔIBC at the point (0.5, 1)
    ],
    ids=["on_a_segment", "on_the_flat_tail", "single_cost"],
)
def test_mean_envelope_delta_ibc_averages_pgr_over_cost_on_the_range(
    lower: float, upper: float, expected: float
) -> None:
    assert mean_envelope_delta_ibc([0.0, 0.5], [0.0, 1.0], lower, upper) == pytest.approx(expected)


def test_mean_envelope_delta_ibc_matches_a_fine_grid_average() -> None:
    costs, pgrs = [0.0, 0.1, 0.3, 0.7, 0.5], [0.0, 0.4, 0.6, 0.9, 0.5]
    grid = np.linspace(0.15, 0.9, 200_001)
    expected = np.mean(envelope(costs, pgrs, grid) / grid - 1.0)
    assert mean_envelope_delta_ibc(costs, pgrs, 0.15, 0.9) == pytest.approx(expected, rel=1e-5)


def test_mean_envelope_delta_ibc_equals_automix_delta_ibc_at_a_pareto_point() -> None:
    # (c, PGR) = (0.2, 0.8) is accuracy 0.82 at 20 strong tokens under REFERENCE.
    assert mean_envelope_delta_ibc([0.0, 0.2], [0.0, 0.8], 0.2, 0.2) == pytest.approx(
        delta_ibc(0.82, 20.0, REFERENCE)
    )


def test_mean_envelope_delta_ibc_is_nan_below_the_cheapest_point() -> None:
    assert math.isnan(mean_envelope_delta_ibc([0.3, 0.6], [0.5, 0.9], 0.2, 0.5))


@pytest.mark.parametrize(
    ("lower", "upper", "message"),
    [(0.0, 0.5, "lower must be positive"), (0.5, 0.4, "upper must be >= lower")],
)
def test_mean_envelope_delta_ibc_rejects_a_bad_range(lower: float, upper: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_envelope_delta_ibc([0.0, 1.0], [0.0, 1.0], lower, upper)


# --- Pareto set and envelope -------------------------------------------------------------


def test_pareto_points_drops_dominated_points_and_sorts_by_cost() -> None:
    costs = [1.0, 0.3, 0.2, 0.5, 0.0]
    values = [1.0, 0.3, 0.5, 0.5, 0.0]
    # (0.3, 0.3) is beaten on both axes by (0.2, 0.5); (0.5, 0.5) costs more for the same value.
    np.testing.assert_array_equal(pareto_points(costs, values), [4, 2, 0])


def test_pareto_points_keeps_best_value_at_equal_cost() -> None:
    np.testing.assert_array_equal(pareto_points([0.4, 0.4], [0.1, 0.6]), [1])


def test_pareto_points_keeps_lowest_index_of_identical_points() -> None:
    np.testing.assert_array_equal(pareto_points([0.1, 0.1, 0.3], [0.2, 0.2, 0.5]), [0, 2])


def test_envelope_interpolates_between_pareto_points() -> None:
    at = [0.0, 0.1, 0.2, 0.4]
    result = envelope(THREE_POINT_COSTS, THREE_POINT_PGRS, at)
    np.testing.assert_allclose(result, [0.0, 0.2, 0.4, 0.7])


def test_envelope_ignores_dominated_point() -> None:
    costs = [*THREE_POINT_COSTS, 0.3]
    values = [*THREE_POINT_PGRS, 0.1]
    # 0.3 is a quarter of the way from 0.2 to 0.6: 0.4 + 0.25 * 0.6.
    assert envelope(costs, values, 0.3) == pytest.approx(0.55)


def test_envelope_is_nan_below_cheapest_point_and_flat_beyond_dearest() -> None:
    result = envelope([0.1, 0.5], [0.2, 0.6], [0.0, 0.1, 0.9])
    assert math.isnan(result[0])
    np.testing.assert_allclose(result[1:], [0.2, 0.6])


# --- CPT ----------------------------------------------------------------------------------


def test_cpt_interpolates_between_pareto_points() -> None:
    # 0.5 lies 0.1/0.6 of the way up the segment (0.2, 0.4) → (0.6, 1.0).
    assert cpt(THREE_POINT_COSTS, THREE_POINT_PGRS, 0.5) == pytest.approx(0.2 + 0.4 * (0.1 / 0.6))
    assert cpt(THREE_POINT_COSTS, THREE_POINT_PGRS, 0.5) == pytest.approx(0.26667, abs=1e-5)


@pytest.mark.parametrize(("target", "expected"), [(0.4, 0.2), (1.0, 0.6), (0.0, 0.0), (-0.5, 0.0)])
def test_cpt_returns_point_cost_when_target_is_met_exactly_or_already(
    target: float, expected: float
) -> None:
    assert cpt(THREE_POINT_COSTS, THREE_POINT_PGRS, target) == pytest.approx(expected)


def test_cpt_ignores_dominated_point() -> None:
    costs = [*THREE_POINT_COSTS, 0.5]
    pgrs = [*THREE_POINT_PGRS, 0.3]
    assert cpt(costs, pgrs, 0.5) == pytest.approx(0.2 + 0.4 * (0.1 / 0.6))


def test_cpt_connects_neighbouring_pareto_points_not_convex_hull() -> None:
    # (0.25, 0.45) sits below the hull segment but is Pareto-optimal, so it bends the envelope.
    costs = [*THREE_POINT_COSTS, 0.25]
    pgrs = [*THREE_POINT_PGRS, 0.45]
    assert cpt(costs, pgrs, 0.5) == pytest.approx(0.25 + 0.35 * (0.05 / 0.55))


def test_cpt_is_nan_when_target_is_never_reached() -> None:
    assert math.isnan(cpt([0.0, 0.5], [0.0, 0.7], 0.8))


# --- APGR ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("costs", "pgrs", "expected"),
    [
        ([0.0, 1.0], [0.0, 1.0], 0.5),  # straight weak→strong line
        ([0.0, 0.2, 1.0], [0.0, 0.8, 1.0], 0.08 + 0.72),  # 0.2*0.8/2 + 0.8*(0.8+1)/2
        ([0.0, 0.5], [0.0, 1.0], 0.25 + 0.5),  # flat at 1 after the last point
        ([0.0, 0.5], [0.0, 0.7], 0.175 + 0.35),  # flat at 0.7, not drawn up to strong-only
        ([0.5, 1.0], [0.5, 1.0], 0.375),  # zero below the cheapest point: 0.5*(0.5+1)/2
        ([0.0, 2.0], [0.0, 1.0], 0.25),  # clipped at c=1 where the envelope is 0.5
        ([1.0], [1.0], 0.0),  # nothing cheaper than strong-only
    ],
    ids=["diagonal", "knee", "flat_tail", "stops_short_of_strong", "no_weak_anchor", "clipped_at_one", "only_strong"],
)
def test_apgr_integrates_envelope_exactly_on_unit_cost(
    costs: list[float], pgrs: list[float], expected: float
) -> None:
    assert apgr(costs, pgrs) == pytest.approx(expected)


def test_apgr_ignores_dominated_point() -> None:
    assert apgr([0.0, 0.2, 1.0, 0.5], [0.0, 0.8, 1.0, 0.3]) == pytest.approx(0.8)


# --- summary ------------------------------------------------------------------------------


def test_summarize_frontier_reports_hand_computed_metrics() -> None:
    # Points map to (c, PGR) = (0, 0), (0.2, 0.8), (1, 1); ΔIBC = nan, 3, 0.
    summary = summarize_frontier([0.5, 0.82, 0.9], [0.0, 20.0, 100.0], REFERENCE)
    assert summary.cpt50 == pytest.approx(0.125)
    assert summary.cpt80 == pytest.approx(0.2)
    assert summary.cpt95 == pytest.approx(0.8)
    assert summary.apgr == pytest.approx(0.8)
    assert summary.mean_delta_ibc == pytest.approx(1.5)
    assert summary.n_points == 3


def test_summarize_frontier_is_all_nan_when_models_have_no_gap() -> None:
    summary = summarize_frontier([0.7, 0.7], [0.0, 100.0], NO_GAP_REFERENCE)
    assert isinstance(summary, FrontierSummary)
    metrics = (summary.cpt50, summary.cpt80, summary.cpt95, summary.apgr, summary.mean_delta_ibc)
    assert all(math.isnan(value) for value in metrics)
    assert summary.n_points == 2


# --- input validation ---------------------------------------------------------------------

PairFunction = Callable[[Any, Any], Any]

FRONTIER_FUNCTIONS = [
    pytest.param(pareto_points, id="pareto_points"),
    pytest.param(lambda costs, values: envelope(costs, values, 0.5), id="envelope"),
    pytest.param(lambda costs, values: cpt(costs, values, 0.5), id="cpt"),
    pytest.param(apgr, id="apgr"),
]
POINT_FUNCTIONS = [
    pytest.param(lambda acc, tokens: mean_delta_ibc(acc, tokens, REFERENCE), id="mean_delta_ibc"),
    pytest.param(
        lambda acc, tokens: summarize_frontier(acc, tokens, REFERENCE), id="summarize_frontier"
    ),
]


@pytest.mark.parametrize("function", FRONTIER_FUNCTIONS)
def test_frontier_functions_reject_mismatched_lengths(function: PairFunction) -> None:
    with pytest.raises(ValueError, match="costs and values must have the same length, got 2 and 3"):
        function([0.0, 1.0], [0.0, 0.5, 1.0])


@pytest.mark.parametrize("function", FRONTIER_FUNCTIONS)
def test_frontier_functions_reject_empty_costs(function: PairFunction) -> None:
    with pytest.raises(ValueError, match="costs must not be empty"):
        function([], [])


@pytest.mark.parametrize("function", FRONTIER_FUNCTIONS)
def test_frontier_functions_reject_nan_costs(function: PairFunction) -> None:
    with pytest.raises(ValueError, match="costs must be finite, got nan at index 1"):
        function([0.0, math.nan], [0.0, 1.0])


@pytest.mark.parametrize("function", POINT_FUNCTIONS)
def test_point_functions_reject_mismatched_lengths(function: PairFunction) -> None:
    message = "accuracies and strong_tokens_per_query must have the same length, got 1 and 2"
    with pytest.raises(ValueError, match=message):
        function([0.5], [0.0, 100.0])


@pytest.mark.parametrize("function", POINT_FUNCTIONS)
def test_point_functions_reject_nan_costs(function: PairFunction) -> None:
    message = "strong_tokens_per_query must be finite, got nan at index 0"
    with pytest.raises(ValueError, match=message):
        function([0.5], [math.nan])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: accuracy(np.array([])), "correct must not be empty", id="accuracy_empty"
        ),
        pytest.param(
            lambda: accuracy(np.ones((2, 2))),
            r"correct must be one-dimensional, got shape \(2, 2\)",
            id="accuracy_2d",
        ),
        pytest.param(
            lambda: strong_tokens_per_query(np.array([])),
            "strong_tokens must not be empty",
            id="tokens_empty",
        ),
        pytest.param(
            lambda: normalized_cost(math.nan, REFERENCE),
            "strong_tokens_per_query must be finite, got nan",
            id="normalized_cost_nan",
        ),
        pytest.param(
            lambda: normalized_cost(-1.0, REFERENCE),
            "strong_tokens_per_query must be non-negative, got -1.0",
            id="normalized_cost_negative",
        ),
        pytest.param(
            lambda: pgr(1.5, REFERENCE),
            r"accuracy must lie in \[0, 1\], got 1.5",
            id="pgr_out_of_range",
        ),
        pytest.param(
            lambda: delta_ibc(0.7, math.inf, REFERENCE),
            "strong_tokens_per_query must be finite, got inf",
            id="delta_ibc_inf_cost",
        ),
        pytest.param(
            lambda: cpt([0.0, 1.0], [0.0, 1.0], math.nan),
            "target must be finite, got nan",
            id="cpt_nan_target",
        ),
        pytest.param(
            lambda: envelope([0.0, 1.0], [0.0, 1.0], [math.nan]),
            "at must be finite",
            id="envelope_nan_at",
        ),
        pytest.param(
            lambda: apgr([0.0, 1.0], [0.0, math.nan]),
            "values must be finite, got nan at index 1",
            id="apgr_nan_pgr",
        ),
        pytest.param(
            lambda: Reference(0.5, 0.9, strong_tokens_per_query=0.0),
            "strong_tokens_per_query must be positive, got 0.0",
            id="reference_zero_strong_cost",
        ),
        pytest.param(
            lambda: Reference(-0.1, 0.9, strong_tokens_per_query=10.0),
            r"weak_accuracy must lie in \[0, 1\], got -0.1",
            id="reference_bad_accuracy",
        ),
        pytest.param(
            lambda: Reference(0.5, 0.9, 10.0, weak_strong_tokens_per_query=-1.0),
            "weak_strong_tokens_per_query must be non-negative, got -1.0",
            id="reference_negative_weak_cost",
        ),
    ],
)
def test_invalid_inputs_raise_value_error_naming_argument(
    call: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call()
