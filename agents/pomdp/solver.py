"""Finite-horizon belief-space dynamic programming for TRIM-POMDP, on a fine 1-D grid with a proven error bound.

**Why one dimension suffices.** The belief at a decision is a point ``b = (b0, b1, b2)`` on the
3-state simplex (S0, S1, S2 of the prefix + proposal), but what happens *after* the decision
depends on one number only, the probability ``π`` that the prefix is still clean:

- continue: ``π = b0``; the solution ends after the weak step with hazard ``h_w(t)``, earning
  ``R(π) = π·q_clean + (1 − π)·q_derailed``; otherwise the next weak proposal arrives with prior
  ``(π·p_w, 1 − π, π·(1 − p_w))`` and its observation;
- regenerate: pay ``λ·cost_k / cost_unit`` (``k`` = token bin of the proposal; ``cost_k`` the
  model's :attr:`~agents.pomdp.model.PomdpModel.regeneration_cost`: strong tokens, or cost units
  of step t under a cost model, where the calls read a prefix that grows with t); the
  rewrite is correct with ``p_s`` if the prefix before it was clean, probability ``c = b0 + b2``;
  optionally its own PRM score is observed; then it ends with ``h_s(t)`` or the next proposal arrives.

So with ``U_t(π)`` = value at the start of step ``t`` (before the proposal is seen),

    Q_continue(b)      = Wc_t(b0),          Wc_t(π) = h_w R(π) + (1 − h_w) U_{t+1}(π)
    Q_regenerate(b, k) = Ws_t(b0 + b2) − cost_k,
                          Ws_t(c) = h_s R(p_s c) + (1 − h_s) Σ_o P(o | c) U_{t+1}(π'(c, o))
    U_t(π) = Σ_o P(o | π) Σ_k P(k) max(Wc_t(b0'), Ws_t(b0' + b2') − cost_k)   (b' = posterior)

and the exact policy at *any* belief, step and token bin follows from the 1-D tables ``Wc_t`` and
``Ws_t``. Exact α-vector iteration would be exact here too, but the number of linear pieces of
``U_t`` grows by a factor of about the number of observations per step (hundreds) and never
prunes away in one dimension; a fine grid does not grow.

**Cap on strong steps.** Cached trees hold at most K strong steps per path, and past the cap the
environment only continues. With ``max_strong_steps = K`` the number ``u`` of strong steps used
(visible in the `seq` observation) joins the state: the tables get a level axis ``u = 0..K``, a
rewrite moves from ``u`` to ``u + 1`` and level K cannot regenerate, so the policy keeps its
rewrites for the steps where they pay most.

**Error bound.** ``U_t``, ``Wc_t`` and ``Ws_t`` are convex (a perspective of a convex function of
a posterior is convex), so linear interpolation between grid values lies above the function, and
on each cell the function lies above the extended secants of the neighbouring cells. The largest
gap between the chord and those secants bounds the interpolation error of that cell from the grid
values alone. Each backup (expectations and maxima) is monotone and does not expand errors, so
the errors of the steps add up: :attr:`SolvedPolicy.error_bound` is a proven bound (up to floating
point) on ``|computed − exact|`` for every Q-value the router looks up, and every computed value
is an upper bound of the exact one. With the default 2,001 grid points the bound is ~1e-4
in reward units on the default data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agents.pomdp.model import N_STATES, ObservationModel, PomdpModel

DEFAULT_GRID_SIZE = 2001


@dataclass
class Emissions:
    """Observation probabilities used in planning, per step (1-based step t at index t - 1).

    :param proposal: ``P(o | state)`` of the weak proposal's observation, shape (T, 3, n_o).
    :param rewrite: ``P(o | state)`` of a strong rewrite's PRM score, shape (T, 3, n_r), or ``None``
        when the rewrite's score is not used (the authors' per-step belief ignores it).
    :param token_bins: the proposal's token bin is part of its observation: column ``j`` of
        ``proposal`` is score observation ``j // token_bins`` and token bin ``j % token_bins``
        (1: the token bin is not observed as evidence, only priced by its frequency).
    """

    proposal: np.ndarray
    rewrite: np.ndarray | None
    token_bins: int = 1


def planning_emissions(
    observation: ObservationModel,
    horizon: int,
    joint: bool,
    observe_rewrite: bool,
    token_likelihood: np.ndarray | None = None,
) -> Emissions:
    """Emissions for the solver from a fitted observation model.

    :param observation: the fitted model.
    :param horizon: number of steps T.
    :param joint: observe (min earlier score, current score) cells (the authors' observation);
        else the current score only (the recursive filter carries the earlier scores itself).
    :param observe_rewrite: a strong rewrite's PRM score is observed (the recursive filter uses it).
    :param token_likelihood: ``P(token bin | state)`` (3, k): the proposal's length is observed
        too, independently of its score given the state.
    """
    n = observation.n_bins
    later = observation.later_steps(joint)
    first = observation.first_step()
    proposal = np.repeat(later[None], horizon, axis=0)
    # At step 1 there is no earlier step: only the "first step" row can be observed (the solver
    # needs the probabilities of the observations, not which cell they stand for).
    proposal[0] = 0.0
    proposal[0, :, :n] = first
    rewrite = None
    if observe_rewrite:
        current = observation.later_steps(False)
        rewrite = np.repeat(current[None], horizon, axis=0)
        rewrite[0] = first
    if token_likelihood is None:
        return Emissions(proposal, rewrite)
    k = token_likelihood.shape[1]
    with_tokens = proposal[..., :, None] * token_likelihood[None, :, None, :]
    return Emissions(with_tokens.reshape(horizon, N_STATES, -1), rewrite, token_bins=k)


def interpolate(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation on a uniform grid of [0, 1] (the last axis of ``table``).

    A 1-D ``table`` is read at every ``x``; a 2-D ``table`` pairs row ``i`` with ``x[i]``.
    """
    size = table.shape[-1]
    position = np.clip(x, 0.0, 1.0) * (size - 1)
    left = np.minimum(position.astype(np.int64), size - 2)
    weight = position - left
    if table.ndim == 1:
        return table[left] * (1.0 - weight) + table[left + 1] * weight
    rows = np.arange(len(table))
    return table[rows, left] * (1.0 - weight) + table[rows, left + 1] * weight


def interpolate_rows(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Every row of ``table`` (L, G) read at every ``x``, shape (*x.shape, L).

    The rows go last so that each lookup gathers one contiguous run of L values (several times
    faster than L separate gathers on this hot path of the solver).
    """
    size = table.shape[-1]
    position = np.clip(x, 0.0, 1.0) * (size - 1)
    left = np.minimum(position.astype(np.int64), size - 2)
    columns = np.ascontiguousarray(table.T)
    slopes = np.diff(columns, axis=0)
    return columns[left] + slopes[left] * (position - left)[..., None]


def interpolation_error(values: np.ndarray) -> float:
    """Bound on ``sup |interpolant − g|`` for a convex ``g`` known at a uniform grid (its ``values``).

    On cell j, ``g`` lies below the chord and above the secants of cells j−1 and j+1 extended into
    it; the chord minus the larger secant peaks where the two secants cross. Edge cells have one
    neighbour only.
    """
    size = len(values)
    width = 1.0 / (size - 1)
    slope = np.diff(values) / width
    rise = np.maximum(np.diff(slope), 0.0)  # slope increase between neighbouring cells (>= 0 by convexity)
    if len(rise) == 0:
        return 0.0
    left, right = rise[:-1], rise[1:]
    total = left + right
    interior = np.divide(left * right, total, out=np.zeros_like(total), where=total > 0) * width
    edges = np.array([rise[0], rise[-1]]) * width
    return float(max(interior.max(initial=0.0), edges.max()))


def _expected_best(d: np.ndarray, costs: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """``Σ_k P(k) · max(0, d − cost_k)``: the gain of being able to regenerate, over token bins.

    A piecewise-linear function of ``d`` with kinks at the costs, evaluated by ``np.interp``
    (one pass). Q-values lie in [0, 1], so ``|d| <= 1``: the last knot, 2 past the largest cost,
    extends the final slope (1) far enough for the result to be exact.
    """
    knots = np.unique(costs)
    weights = np.array([probability[costs == knot].sum() for knot in knots])
    values = np.maximum(knots[:, None] - knots[None, :], 0.0) @ weights
    knots = np.append(knots, knots[-1] + 2.0)
    values = np.append(values, values[-1] + 2.0)
    return np.interp(d, knots, values, left=0.0)


def _observe(prior: np.ndarray, emission: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For priors (3, G) and an emission (3, n_o): P(o) (G, n_o) and unnormalised posteriors (3, G, n_o)."""
    joint = prior[:, :, None] * emission[:, None, :]
    return joint.sum(axis=0), joint


@dataclass
class SolvedPolicy:
    """The solved POMDP for one λ: Q-value tables over the 1-D grid, per step and strong steps used.

    ``continue_value[t - 1, u]`` is ``Wc_t`` on the grid of ``π = b0`` with ``u`` strong steps
    already in the prefix; ``regenerate_value[t - 1, u]`` is ``Ws_t`` (before the rewrite cost)
    on the grid of ``c = b0 + b2``; ``start_value[t - 1, u]`` is ``U_t``. Without a cap on strong
    steps there is one level ``u = 0``; with cap K there are K + 1 and level K cannot regenerate.
    ``rewrite_cost[k]`` is ``λ · regeneration_cost[k] / cost_unit_tokens`` (the model's cost of a
    rewrite of a proposal in token bin k, in strong tokens); under a cost model it has a step axis,
    ``rewrite_cost[t - 1, k]`` in cost units.
    """

    continue_value: np.ndarray
    regenerate_value: np.ndarray
    start_value: np.ndarray
    rewrite_cost: np.ndarray
    lam: float
    cost_unit_tokens: float
    #: Cap K on strong steps per solution the policy plans for (``None``: uncapped).
    max_strong_steps: int | None
    error_bound: float
    solve_time_s: float

    @property
    def horizon(self) -> int:
        return len(self.continue_value)

    def q_values(self, step: np.ndarray, strong_used: np.ndarray, belief: np.ndarray,
                 token_bin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q_continue, Q_regenerate) at 1-based ``step`` with ``strong_used`` strong steps in the
        prefix, beliefs (B, 3) over (S0, S1, S2) and proposal token bins; Q_regenerate = -inf at the cap."""
        row = np.clip(np.asarray(step, dtype=np.int64), 1, self.horizon) - 1
        used = np.asarray(strong_used, dtype=np.int64)
        level = np.zeros_like(used) if self.max_strong_steps is None else np.minimum(used, self.max_strong_steps)
        q_continue = interpolate(self.continue_value[row, level], belief[:, 0])
        cost = self.rewrite_cost[token_bin] if self.rewrite_cost.ndim == 1 else self.rewrite_cost[row, token_bin]
        q_regenerate = interpolate(self.regenerate_value[row, level], belief[:, 0] + belief[:, 2]) - cost
        if self.max_strong_steps is not None:
            q_regenerate = np.where(level >= self.max_strong_steps, -np.inf, q_regenerate)
        return q_continue, q_regenerate


def _check_emissions(emissions: Emissions, horizon: int) -> None:
    for name, table in (("proposal", emissions.proposal), ("rewrite", emissions.rewrite)):
        if table is None:
            continue
        if table.ndim != 3 or table.shape[:2] != (horizon, N_STATES):
            raise ValueError(f"emissions.{name} has shape {table.shape}, expected ({horizon}, {N_STATES}, n_obs)")
        sums = table.sum(axis=2)
        bad = (np.abs(sums - 1.0) > 1e-6) | (table < 0).any(axis=2)
        if bad.any():
            t, state = np.argwhere(bad)[0]
            raise ValueError(
                f"emissions.{name}[step {t + 1}, state {state}]: probabilities sum to {sums[t, state]:.9g} "
                "(must be >= 0 and sum to 1)"
            )


def solve(
    model: PomdpModel,
    lam: float,
    cost_unit_tokens: float,
    emissions: Emissions,
    grid_size: int = DEFAULT_GRID_SIZE,
    max_strong_steps: int | None = None,
) -> SolvedPolicy:
    """Backward induction over steps T..1 on a grid of the clean-prefix probability.

    :param model: the fitted POMDP.
    :param lam: cost weight λ >= 0 (reward = correct − λ · cost / cost_unit_tokens, the cost in
        the model's unit: strong tokens, or cost units of its cost model).
    :param cost_unit_tokens: strong tokens per cost unit (> 0), as the environment's.
    :param emissions: planning observation probabilities (:func:`planning_emissions`).
    :param grid_size: grid points on [0, 1] (>= 3); the error bound falls about as 1/grid_size.
    :param max_strong_steps: cap K on strong steps per solution (cached trees have one, past which
        the environment only continues); the number used becomes part of the state. ``None``: no cap.
    """
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda = {lam} must be a finite number >= 0")
    if not np.isfinite(cost_unit_tokens) or cost_unit_tokens <= 0:
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens} must be a finite number > 0")
    if grid_size < 3:
        raise ValueError(f"grid_size = {grid_size} must be >= 3")
    if max_strong_steps is not None and (isinstance(max_strong_steps, bool) or max_strong_steps < 0):
        raise ValueError(f"max_strong_steps = {max_strong_steps!r} must be an integer >= 0 or None")
    horizon = model.horizon
    _check_emissions(emissions, horizon)
    start = time.perf_counter()
    p_w, p_s = model.weak_step_accuracy, model.strong_step_accuracy
    q_clean, q_derailed = model.final_correct_clean, model.final_correct_derailed
    costs = lam * model.regeneration_cost / cost_unit_tokens
    step_costs = np.broadcast_to(costs, (horizon, costs.shape[-1]))  # strong tokens: the same at every step
    token_probability = np.asarray(model.token_bin_probability, dtype=np.float64)
    if emissions.token_bins not in (1, costs.shape[-1]):
        raise ValueError(f"emissions observe {emissions.token_bins} token bins, the model has {costs.shape[-1]}")
    # Column j of the proposal observation names token bin j % k (when the token bin is observed).
    token_column = np.arange(emissions.proposal.shape[2]) % emissions.token_bins
    grid = np.linspace(0.0, 1.0, grid_size)
    end_reward = lambda clean: clean * q_clean + (1.0 - clean) * q_derailed  # noqa: E731
    proposal_prior = np.stack([grid * p_w, 1.0 - grid, grid * (1.0 - p_w)])
    rewrite_prior = np.stack([grid * p_s, 1.0 - grid, grid * (1.0 - p_s)])
    # Level u = strong steps used; a rewrite moves to u + 1; level K (capped) cannot regenerate.
    levels = 1 if max_strong_steps is None else int(max_strong_steps) + 1
    after_rewrite = np.minimum(np.arange(levels) + 1, levels - 1)
    can_regenerate = np.ones(levels, dtype=bool)
    if max_strong_steps is not None:
        can_regenerate[-1] = False

    continue_value = np.empty((horizon, levels, grid_size))
    regenerate_value = np.empty((horizon, levels, grid_size))
    start_value = np.empty((horizon, levels, grid_size))
    next_start = np.zeros((levels, grid_size))  # U_{T+1}: never reached (h(T) = 1)
    error_next = 0.0  # bound on sup |interpolated U_{t+1} − exact U_{t+1}| over levels
    q_error = np.zeros(horizon)
    for t in range(horizon, 0, -1):
        h_w, h_s = model.weak_hazard[t - 1], model.strong_hazard[t - 1]
        w_continue = h_w * end_reward(grid) + (1.0 - h_w) * next_start
        target = next_start[after_rewrite]
        if emissions.rewrite is None:
            after = interpolate_rows(target, p_s * grid).T
        else:
            probability, posterior = _observe(rewrite_prior, emissions.rewrite[t - 1])
            clean = np.divide(posterior[0], probability, out=np.zeros_like(probability), where=probability > 0)
            after = np.matmul(probability[:, None, :], interpolate_rows(target, clean))[:, 0].T
        w_regenerate = h_s * end_reward(p_s * grid) + (1.0 - h_s) * after

        # Decision at step t for every grid prior and proposal observation; levels on the last axis.
        probability, posterior = _observe(proposal_prior, emissions.proposal[t - 1])
        safe = np.where(probability > 0, probability, 1.0)
        q_continue = interpolate_rows(w_continue, posterior[0] / safe)
        q_regenerate = interpolate_rows(w_regenerate, (posterior[0] + posterior[2]) / safe)
        if emissions.token_bins == 1:  # the token bin is not observed: average the decision over its frequency
            gain = _expected_best(q_regenerate - q_continue, step_costs[t - 1], token_probability)
        else:  # the observation names the token bin, hence the rewrite's cost
            gain = np.maximum(q_regenerate - q_continue - step_costs[t - 1][token_column][None, :, None], 0.0)
        best = q_continue + gain * can_regenerate
        start_now = np.matmul(probability[:, None, :], best)[:, 0].T  # Σ_o P(o | π) · best

        # Error propagation (module docstring): Wc is exactly piecewise linear on the grid.
        error_continue = (1.0 - h_w) * error_next
        error_regenerate = max(interpolation_error(row) for row in w_regenerate[can_regenerate]) + (1.0 - h_s) * error_next \
            if can_regenerate.any() else 0.0
        q_error[t - 1] = max(error_continue, error_regenerate)
        error_next = max(interpolation_error(row) for row in start_now) + q_error[t - 1]

        continue_value[t - 1], regenerate_value[t - 1], start_value[t - 1] = w_continue, w_regenerate, start_now
        next_start = start_now
    return SolvedPolicy(
        continue_value=continue_value,
        regenerate_value=regenerate_value,
        start_value=start_value,
        rewrite_cost=costs,
        lam=float(lam),
        cost_unit_tokens=float(cost_unit_tokens),
        max_strong_steps=None if max_strong_steps is None else int(max_strong_steps),
        error_bound=float(q_error.max()),
        solve_time_s=time.perf_counter() - start,
    )
