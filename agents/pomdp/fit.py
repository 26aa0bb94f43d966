"""Fitting the whole TRIM-POMDP from cached trees: :func:`fit_model`.

Besides the observation model (:mod:`agents.pomdp.observation`, from the trees or from labelled
records), the trees give the transitions: the weak model's next-step accuracy ``p_w`` (given a
correct prefix), the strong model's ``p_s``, the termination hazards of weak and strong steps
``h(t)``, the final-answer accuracy of a clean and of a derailed solution, and the step-length
distribution: token bins of the weak proposal, their frequencies, and the mean length of the
strong rewrite of a proposal in each bin (its predicted cost in strong tokens).

**Under a cost model** (``cost=price|flops|latency``, :mod:`trim_env.cost`) the predicted cost of
regenerating is :func:`regeneration_cost`, per step t and token bin of the proposal: the mean, over
the trees' (node, rewrite) pairs of that step and bin, of what regenerating costs *beyond*
continuing, ``step_cost(regenerate) − step_cost(continue)``: the strong call and the PRM's scoring
of the rewrite. The weak proposal and its score are paid before the decision, whatever it is, so
they do not enter it. The step matters because those calls read the whole prefix, which grows
along a solution: under ``price`` a rewrite at step 10 costs several times one at step 1. In
strong tokens the difference is the rewrite's strong tokens and does not depend on the step, so
the model is the strong-token one exactly (per bin, ``rewrite_tokens``). Left out: the later
steps' calls, which a decision moves only indirectly (a strong step ends a solution with another
hazard than a weak one, and its length changes every later prefix); the planner's value holds no
per-step cost, so it treats them as paid whatever the router does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.pomdp.model import N_STATES, PomdpFitError, PomdpModel
from agents.pomdp.observation import ScoreSamples, fit_observation_model, observation_samples_from_trees
from trim_env.cost import CostModel, StrongTokensCost, regeneration_extra_cost
from trim_env.tree import MAX_STEPS, STATE_CORRECT, UNKNOWN_STATE, RolloutTrees

#: Version of the fitting method; part of the key of cached fitted models, so bump it whenever
#: a change of the fitting code changes its results.
FIT_VERSION = 2


def _rate(numerator: np.ndarray, denominator: np.ndarray, where: str) -> float:
    if denominator.sum() == 0:
        raise PomdpFitError(f"{where}: no samples")
    return float(numerator.sum() / denominator.sum())


def _hazard(depth: np.ndarray, terminal: np.ndarray, horizon: int, min_at_risk: int) -> np.ndarray:
    """P(end at step t | reached t) per step; steps with fewer than ``min_at_risk`` samples share one pooled rate."""
    at_risk = np.bincount(depth, minlength=horizon + 1)[1 : horizon + 1].astype(np.float64)
    ended = np.bincount(depth, weights=terminal, minlength=horizon + 1)[1 : horizon + 1]
    hazard = np.divide(ended, at_risk, out=np.zeros(horizon), where=at_risk > 0)
    sparse = np.flatnonzero(at_risk < min_at_risk)
    if sparse.size:
        tail = sparse[0]
        pooled = ended[tail:].sum() / at_risk[tail:].sum() if at_risk[tail:].sum() > 0 else 1.0
        hazard[tail:] = pooled
    hazard[-1] = 1.0  # the step cap ends every solution
    return hazard


def _weak_only_pairs(trees: RolloutTrees) -> tuple[np.ndarray, np.ndarray]:
    """(state of the node, state of its weak proposal) along every query's weak-only path."""
    node = trees.root.astype(np.int64).copy()
    active = np.arange(len(node))
    parents, children = [], []
    while active.size:
        here = node[active]
        child = trees.weak_child[here].astype(np.int64)
        parents.append(trees.hidden_state[here])
        children.append(trees.hidden_state[child])
        node[active] = child
        active = active[~trees.terminal[child]]
    return np.concatenate(parents), np.concatenate(children)


def regeneration_cost(cost_model: CostModel, trees: RolloutTrees, nodes: np.ndarray, token_edges: np.ndarray,
                      horizon: int, min_samples: int) -> np.ndarray:
    """Mean cost units of regenerating rather than continuing, per step and token bin of the weak proposal.

    A (step, bin) cell with fewer than ``min_samples`` pairs takes the mean of its bin over that
    step and every later one (late steps are rare; their prefixes are the longest), and a bin
    with no pair from that step on the mean of the bin over all steps (0 for an empty bin).

    :param cost_model: prices the calls (:func:`trim_env.cost.regeneration_extra_cost`).
    :param trees: the trees.
    :param nodes: decision nodes with both a weak and a strong child.
    :param token_edges: token bin edges of the proposal (first 0, last inf).
    :param horizon: number of steps T (a node at depth d decides step d + 1 <= T).
    :param min_samples: fewest pairs for a cell's own mean.
    :returns: shape (T, token bins); row t - 1 is step t.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    extra = regeneration_extra_cost(cost_model, trees, nodes)
    k = len(token_edges) - 1
    token_bin = np.searchsorted(token_edges, trees.step_tokens[trees.weak_child[nodes]], side="right") - 1
    cell = np.minimum(trees.depth[nodes].astype(np.int64), horizon - 1) * k + token_bin
    count = np.bincount(cell, minlength=horizon * k).reshape(horizon, k).astype(np.float64)
    total = np.bincount(cell, weights=extra, minlength=horizon * k).reshape(horizon, k)
    tail_count, tail_total = np.cumsum(count[::-1], axis=0)[::-1], np.cumsum(total[::-1], axis=0)[::-1]
    overall = total.sum(axis=0) / np.maximum(count.sum(axis=0), 1.0)
    pooled = np.where(tail_count > 0, tail_total / np.maximum(tail_count, 1.0), overall)
    return np.where(count >= min_samples, total / np.maximum(count, 1.0), pooled)


def fit_model(
    trees: RolloutTrees,
    bin_edges: np.ndarray,
    n_token_bins: int = 8,
    observation_samples: ScoreSamples | None = None,
    floor: float = 1e-4,
    min_at_risk: int = 50,
    source: dict[str, Any] | None = None,
    token_evidence: bool = False,
    cost_model: CostModel | None = None,
) -> PomdpModel:
    """Fit every part of the POMDP from cached trees (and optionally labelled records).

    ``p_w`` is measured along the weak-only paths (the population a router mostly walks: the
    weak model's own solutions, as the authors measure next-step accuracy); ``p_s``, the hazards,
    final accuracies and rewrite lengths over every (node, child) pair of the trees, which holds far
    more strong steps than any single path.

    :param trees: cached trees with known hidden states (the train split, never test).
    :param bin_edges: PRM-score bin edges of the observation model.
    :param n_token_bins: number of quantile bins of the weak proposal's length.
    :param observation_samples: fit the observation model from these (e.g. ProcessBench records)
        instead of the trees.
    :param floor: uniform weight in the observation model.
    :param min_at_risk: fewest steps at a depth for its own hazard estimate (later depths are pooled),
        and fewest rewrites of a (step, token bin) for its own rewrite cost under a cost model.
    :param source: provenance to record in the model.
    :param token_evidence: also fit ``P(token bin of a weak step | state)``, so that filter and
        planner read a weak step's length as evidence beside its score.
    :param cost_model: prices a rewrite (:func:`regeneration_cost`; ``None`` or strong tokens: its
        strong tokens, ``rewrite_tokens``, and the model carries no ``rewrite_cost``).
    """
    if trees.num_queries == 0:
        raise PomdpFitError("trees: no queries to fit transitions from")
    if n_token_bins < 1:
        raise ValueError(f"token_bins = {n_token_bins} must be >= 1")
    samples = observation_samples if observation_samples is not None else observation_samples_from_trees(trees)
    observation = fit_observation_model(samples, bin_edges, floor)

    state = trees.hidden_state
    decision = np.flatnonzero(~trees.terminal & (trees.weak_child >= 0))
    if (state[decision] == UNKNOWN_STATE).any() or (state[trees.weak_child[decision]] == UNKNOWN_STATE).any():
        raise PomdpFitError(
            f"trees: field 'hidden_state' is {UNKNOWN_STATE} (unknown) at some nodes; transitions (p_w, p_s) need "
            "trees with recorded hidden states (simulated data)"
        )
    parent_state, child_state = _weak_only_pairs(trees)
    clean = parent_state == STATE_CORRECT
    p_w = _rate(child_state[clean] == STATE_CORRECT, clean, "trees: weak proposals after a correct prefix")

    with_strong = decision[trees.strong_child[decision] >= 0]
    if with_strong.size == 0:
        raise PomdpFitError("trees: no strong rewrite anywhere (cap K = 0?); cannot fit p_s or the rewrite cost")
    strong = trees.strong_child[with_strong]
    clean = state[with_strong] == STATE_CORRECT
    p_s = _rate(state[strong][clean] == STATE_CORRECT, clean, "trees: strong rewrites after a correct prefix")

    horizon = MAX_STEPS
    weak = trees.weak_child[decision]
    weak_hazard = _hazard(trees.depth[weak].astype(np.int64), trees.terminal[weak], horizon, min_at_risk)
    strong_hazard = _hazard(trees.depth[strong].astype(np.int64), trees.terminal[strong], horizon, min_at_risk)

    ends = np.flatnonzero(trees.terminal)
    clean_end = state[ends] == STATE_CORRECT
    correct = trees.correct[ends] == 1
    q_clean = _rate(correct[clean_end], clean_end, "trees: solutions ending with a correct prefix")
    q_derailed = _rate(correct[~clean_end], ~clean_end, "trees: solutions ending derailed")

    # Token bins: quantiles of the proposals that have a rewrite, so every bin has a predicted cost.
    proposal_tokens = trees.step_tokens[trees.weak_child[with_strong]].astype(np.float64)
    inner = np.unique(np.quantile(proposal_tokens, np.arange(1, n_token_bins) / n_token_bins))
    token_edges = np.concatenate([[0.0], inner[inner > 0], [np.inf]])
    k = len(token_edges) - 1
    pair_bin = np.searchsorted(token_edges, proposal_tokens, side="right") - 1
    rewrite_tokens = np.bincount(pair_bin, weights=trees.step_tokens[strong], minlength=k) / np.maximum(
        np.bincount(pair_bin, minlength=k), 1
    )
    rewrite_cost, cost_settings = None, None
    if cost_model is not None and not isinstance(cost_model, StrongTokensCost):
        rewrite_cost = regeneration_cost(cost_model, trees, with_strong, token_edges, horizon, min_at_risk)
        cost_settings = cost_model.to_dict()
    all_bins = np.searchsorted(token_edges, trees.step_tokens[weak], side="right") - 1
    token_probability = np.bincount(all_bins, minlength=k) / len(all_bins)
    token_likelihood = None
    if token_evidence:
        # One pseudo-count per cell: a bin never seen in a state must not rule the state out.
        counts = np.stack([np.bincount(all_bins[state[weak] == code], minlength=k) for code in range(N_STATES)]) + 1.0
        token_likelihood = counts / counts.sum(axis=1, keepdims=True)

    model = PomdpModel(
        observation=observation,
        weak_step_accuracy=p_w,
        strong_step_accuracy=p_s,
        weak_hazard=weak_hazard,
        strong_hazard=strong_hazard,
        final_correct_clean=q_clean,
        final_correct_derailed=q_derailed,
        token_edges=token_edges,
        token_bin_probability=token_probability,
        rewrite_tokens=rewrite_tokens,
        token_likelihood=token_likelihood,
        rewrite_cost=rewrite_cost,
        cost_model=cost_settings,
        source={
            **(source or {}),
            "fit_version": FIT_VERSION,
            "n_queries": trees.num_queries,
            "n_decisions": int(decision.size),
            "n_rewrites": int(with_strong.size),
            "observation_source": samples.source,
            "floor": floor,
            "min_at_risk": min_at_risk,
            "token_evidence": token_evidence,
        },
    )
    model.validate()
    return model
