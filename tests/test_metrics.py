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
        (0.8, 10.0, Reference(0.5, 0.9, 100.0, weak_strong_tokens_per_query=20.0)),
    ],
    ids=["zero_cost_point", "no_gap", "cheaper_than_weak_only"],
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
        pytest.param(
            lambda: Reference(0.5, 0.9, 10.0, weak_strong_tokens_per_query=10.0),
            r"weak_strong_tokens_per_query must be below strong_tokens_per_query .*c_w < 1.*got 10.0 >= 10.0",
            id="reference_weak_cost_equal_to_strong",
        ),
        pytest.param(
            lambda: Reference(0.5, 0.9, 10.0, weak_strong_tokens_per_query=12.0),
            "weak_strong_tokens_per_query must be below strong_tokens_per_query",
            id="reference_weak_cost_above_strong",
        ),
        pytest.param(
            lambda: Reference(0.5, 0.9, 10.0, weak_strong_tokens_per_query=math.nan),
            "weak_strong_tokens_per_query must be finite, got nan",
            id="reference_nan_weak_cost",
        ),
    ],
)
def test_invalid_inputs_raise_value_error_naming_argument(
    call: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- a weak anchor that costs something (c_w > 0) ----------------------------------------

# Weak-only costs 20 of strong-only's 100 (e.g. dollars): c_w = 0.2. The frontier, as (c, PGR):
# weak-only (0.2, 0), A (0.4, 0.5), B (0.6, 0.9), strong-only (1, 1).
PRICED = Reference(weak_accuracy=0.5, strong_accuracy=0.9, strong_tokens_per_query=100.0, weak_strong_tokens_per_query=20.0)
PRICED_ACCURACIES = [0.5, 0.7, 0.86, 0.9]
PRICED_COSTS = [20.0, 40.0, 60.0, 100.0]
PRICED_C = [0.2, 0.4, 0.6, 1.0]
PRICED_PGR = [0.0, 0.5, 0.9, 1.0]


def test_the_weak_anchor_sits_at_its_normalized_cost() -> None:
    assert PRICED.weak_normalized_cost == pytest.approx(0.2)
    assert REFERENCE.weak_normalized_cost == 0.0
    assert [normalized_cost(cost, PRICED) for cost in PRICED_COSTS] == pytest.approx(PRICED_C)
    assert [pgr(acc, PRICED) for acc in PRICED_ACCURACIES] == pytest.approx(PRICED_PGR)


def test_delta_ibc_is_measured_against_the_line_from_the_weak_anchor() -> None:
    # [PGR / (c − c_w)] / [1 / (1 − c_w)] − 1: A 0.5/0.2·0.8 − 1 = 1, B 0.9/0.4·0.8 − 1 = 0.8, strong-only 0.
    expected = [math.nan, 1.0, 0.8, 0.0]
    measured = [delta_ibc(acc, cost, PRICED) for acc, cost in zip(PRICED_ACCURACIES, PRICED_COSTS)]
    assert math.isnan(measured[0])
    assert measured[1:] == pytest.approx(expected[1:])
    # On the weak→strong line from (0.2, 0) to (1, 1): c = 0.6 gives PGR 0.5, ΔIBC 0.
    assert delta_ibc(0.7, 60.0, PRICED) == pytest.approx(0.0)


def test_metrics_of_a_frontier_with_a_priced_weak_anchor_match_hand_computed_values() -> None:
    # Nothing below c_w = 0.2; trapezoids 0.2·0.5/2 + 0.2·(0.5 + 0.9)/2 + 0.4·(0.9 + 1)/2 = 0.05 + 0.14 + 0.38.
    assert apgr(PRICED_C, PRICED_PGR) == pytest.approx(0.57)
    assert apgr([0.2, 1.0], [0.0, 1.0]) == pytest.approx(0.4)  # the straight line: (1 − c_w)/2
    assert cpt(PRICED_C, PRICED_PGR, 0.5) == pytest.approx(0.4)
    assert cpt(PRICED_C, PRICED_PGR, 0.8) == pytest.approx(0.4 + 0.2 * 0.3 / 0.4)  # 0.55
    assert cpt(PRICED_C, PRICED_PGR, 0.95) == pytest.approx(0.6 + 0.4 * 0.05 / 0.1)  # 0.8
    assert cpt(PRICED_C, PRICED_PGR, 0.0) == pytest.approx(0.2)  # the weak anchor itself
    summary = summarize_frontier(PRICED_ACCURACIES, PRICED_COSTS, PRICED)
    assert (summary.cpt50, summary.cpt80, summary.cpt95) == pytest.approx((0.4, 0.55, 0.8))
    assert summary.apgr == pytest.approx(0.57)
    assert summary.mean_delta_ibc == pytest.approx((1.0 + 0.8 + 0.0) / 3)  # weak-only's nan left out


def test_mean_envelope_delta_ibc_with_a_priced_weak_anchor_matches_hand_computed_values() -> None:
    # On [0.4, 0.6], with x = c − 0.2: PGR = 0.1 + 2x, so ΔIBC = 0.8·(0.1/x + 2) − 1 = 0.08/x + 0.6,
    # whose mean over x ∈ [0.2, 0.4] is 0.6 + 0.08·ln 2 / 0.2.
    assert mean_envelope_delta_ibc(PRICED_C, PRICED_PGR, 0.4, 0.6, weak_cost=0.2) == pytest.approx(0.6 + 0.4 * math.log(2.0))
    # One cost: AutoMix's ΔIBC of the Pareto point there.
    assert mean_envelope_delta_ibc(PRICED_C, PRICED_PGR, 0.4, 0.4, weak_cost=0.2) == pytest.approx(delta_ibc(0.7, 40.0, PRICED))
    assert mean_envelope_delta_ibc(PRICED_C, PRICED_PGR, 0.6, 0.6, weak_cost=0.2) == pytest.approx(delta_ibc(0.86, 60.0, PRICED))
    grid = np.linspace(0.3, 0.9, 200_001)
    expected = np.mean(envelope(PRICED_C, PRICED_PGR, grid) * 0.8 / (grid - 0.2) - 1.0)
    assert mean_envelope_delta_ibc(PRICED_C, PRICED_PGR, 0.3, 0.9, weak_cost=0.2) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("weak_cost", "lower", "message"),
    [
        (-0.1, 0.5, r"weak_cost \(the weak anchor's normalized cost c_w\) must lie in \[0, 1\), got -0.1"),
        (1.0, 1.5, r"weak_cost .* must lie in \[0, 1\), got 1.0"),
        (math.nan, 0.5, "weak_cost must be finite, got nan"),
        (0.2, 0.2, "lower must be positive and above weak_cost = 0.2"),
        (0.2, 0.1, "lower must be positive and above weak_cost = 0.2"),
    ],
    ids=["negative", "one", "nan", "lower_at_c_w", "lower_below_c_w"],
)
def test_mean_envelope_delta_ibc_refuses_a_bad_weak_cost(weak_cost: float, lower: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_envelope_delta_ibc(PRICED_C, PRICED_PGR, lower, 2.0, weak_cost=weak_cost)


def test_a_point_cheaper_than_the_weak_anchor_is_kept_as_measured() -> None:
    # (0.1, 0.3) costs less than weak-only (c_w = 0.2) and dominates it: the envelope starts there.
    costs, pgrs = [0.2, 0.1, 1.0], [0.0, 0.3, 1.0]
    np.testing.assert_array_equal(pareto_points(costs, pgrs), [1, 2])
    assert apgr(costs, pgrs) == pytest.approx(0.9 * (0.3 + 1.0) / 2)
    assert cpt(costs, pgrs, 0.3) == pytest.approx(0.1)
    # ΔIBC needs a cost above weak-only's: undefined for the point, refused as a range.
    assert math.isnan(delta_ibc(0.62, 10.0, PRICED))
    with pytest.raises(ValueError, match="lower must be positive and above weak_cost"):
        mean_envelope_delta_ibc(costs, pgrs, 0.1, 0.5, weak_cost=0.2)


# The formulas as they were before the weak anchor could cost anything, verbatim: with c_w = 0 the
# generalised ones must give the same floats, bit for bit.
def _old_delta_ibc(accuracy: float, tokens: float, reference: Reference) -> float:
    weak_cost = reference.weak_strong_tokens_per_query
    policy_extra_cost = tokens - weak_cost
    strong_extra_cost = reference.strong_tokens_per_query - weak_cost
    if policy_extra_cost == 0.0 or strong_extra_cost == 0.0:
        return math.nan
    ibc_base = (reference.strong_accuracy - reference.weak_accuracy) / strong_extra_cost
    if ibc_base == 0.0:
        return math.nan
    ibc_policy = (accuracy - reference.weak_accuracy) / policy_extra_cost
    return (ibc_policy - ibc_base) / ibc_base


def _old_mean_envelope_delta_ibc(costs: np.ndarray, pgrs: np.ndarray, low: float, high: float) -> float:
    optimal = pareto_points(costs, pgrs)
    curve_costs, curve_values = costs[optimal], pgrs[optimal]
    if low < curve_costs[0]:
        return math.nan
    if high == low:
        return float(np.interp(low, curve_costs, curve_values)) / low - 1.0
    interior = curve_costs[(curve_costs > low) & (curve_costs < high)]
    breakpoints = np.concatenate(([low], interior, [high]))
    heights = np.interp(breakpoints, curve_costs, curve_values)
    slopes = np.diff(heights) / np.diff(breakpoints)
    intercepts = heights[:-1] - slopes * breakpoints[:-1]
    integral = np.sum(intercepts * np.log(breakpoints[1:] / breakpoints[:-1]) + slopes * np.diff(breakpoints))
    return float(integral) / (high - low) - 1.0


def test_a_free_weak_anchor_gives_the_old_values_bit_for_bit() -> None:
    rng = np.random.default_rng(14)
    for _ in range(300):
        n = int(rng.integers(1, 9))
        costs = np.concatenate(([0.0], rng.uniform(0.0, 1.3, n)))
        pgrs = np.concatenate(([0.0], rng.uniform(-0.3, 1.2, n)))
        low, high = np.sort(rng.uniform(1e-3, 1.4, 2))
        for weak_cost in ({}, {"weak_cost": 0.0}):
            assert mean_envelope_delta_ibc(costs, pgrs, low, high, **weak_cost) == _old_mean_envelope_delta_ibc(costs, pgrs, low, high)
            assert mean_envelope_delta_ibc(costs, pgrs, low, low, **weak_cost) == _old_mean_envelope_delta_ibc(costs, pgrs, low, low)
        weak, strong = np.sort(rng.uniform(0.0, 1.0, 2))
        reference = Reference(weak, strong, float(rng.uniform(1.0, 900.0)))
        for acc, cost in zip(rng.uniform(0.0, 1.0, 5), rng.uniform(0.0, 1000.0, 5)):
            new, old = delta_ibc(acc, cost, reference), _old_delta_ibc(acc, cost, reference)
            assert new == old or (math.isnan(new) and math.isnan(old))
