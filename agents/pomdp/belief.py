"""Belief tracking for TRIM-POMDP from `seq` observations: a recursive Bayes filter and the authors' per-step belief.

A `seq` observation (:mod:`trim_env.features`) holds, per row, (PRM score, tokens / 100,
is_strong, mask) of every accepted step and, in the last valid row, of the weak proposal being
decided on. Both filters run on a whole batch at once (numpy, a loop over the 30 rows).

- :func:`bayes_filter` — recursive: starting from a clean (empty) prefix, every accepted step
  moves the belief through the POMDP transition (weak step: correct with ``p_w``; strong rewrite:
  correct with ``p_s`` if the prefix was clean) and weighs in that step's PRM score; the proposal
  is weighed the same way (a model fitted with token evidence also weighs each weak step's token
  bin, ``P(token bin | state)``). The likelihood of a score is ``P(score | state)`` (marginal of the
  fitted model over the min earlier score, with its own first-step row): the earlier scores are
  already in the belief through the recursion, so counting the min earlier score again would
  count the same evidence twice. This is exactly the observation the solver plans with, so filter
  and policy form one consistent POMDP. A rejected weak proposal is not in the observation, so it
  adds nothing.
- :func:`per_step_belief` — the authors' choice: ``P(state | min earlier score, current score)``
  from the observation model with a uniform prior, ignoring the transition model.

Both return the belief over (S0, S1, S2) of prefix + proposal, the 1-based step of the proposal,
its token count and the number of strong rewrites already in the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.pomdp.model import N_STATES, PomdpModel, score_bin
from trim_env.features import SEQ_CHANNELS, TOKEN_SCALE
from trim_env.tree import MAX_STEPS

FILTERS = ("bayes", "per_step")
_PRM, _TOKENS, _STRONG, _MASK = (SEQ_CHANNELS.index(name) for name in ("prm", "tokens", "is_strong", "mask"))


@dataclass
class Beliefs:
    """Per observation: belief over (S0, S1, S2), 1-based step of the proposal, proposal tokens, strong steps used."""

    belief: np.ndarray
    step: np.ndarray
    proposal_tokens: np.ndarray
    strong_used: np.ndarray


def _lengths(observations: np.ndarray) -> np.ndarray:
    if observations.ndim != 3 or observations.shape[1:] != (MAX_STEPS, len(SEQ_CHANNELS)):
        raise ValueError(f"seq observations must have shape (batch, {MAX_STEPS}, {len(SEQ_CHANNELS)}), got {observations.shape}")
    length = (observations[:, :, _MASK] > 0.5).sum(axis=1).astype(np.int64)
    if (length == 0).any():
        row = int(np.flatnonzero(length == 0)[0])
        raise ValueError(f"seq observation {row} has no valid row (mask all 0): there is no proposal to decide on")
    return length


def _beliefs(belief: np.ndarray, observations: np.ndarray, length: np.ndarray) -> Beliefs:
    accepted = np.arange(MAX_STEPS)[None, :] < (length - 1)[:, None]
    return Beliefs(
        belief=belief,
        step=length,
        proposal_tokens=observations[np.arange(len(length)), length - 1, _TOKENS].astype(np.float64) * TOKEN_SCALE,
        strong_used=((observations[:, :, _STRONG] > 0.5) & accepted).sum(axis=1),
    )


def bayes_filter(observations: np.ndarray, model: PomdpModel) -> Beliefs:
    """Recursive Bayes filter over every observation of the batch (see the module docstring).

    :param observations: `seq` observations, shape (B, 30, 4).
    :param model: the fitted POMDP (transitions and observation model).
    """
    observations = np.asarray(observations)
    length = _lengths(observations)
    batch = len(length)
    edges = model.observation.bin_edges
    first_step, later_step = model.observation.first_step(), model.observation.later_steps(joint=False)
    p_w, p_s = model.weak_step_accuracy, model.strong_step_accuracy
    clean = np.ones(batch)  # P(prefix clean) before the step being read
    belief = np.empty((batch, N_STATES))
    for i in range(int(length.max(initial=0))):
        accepted, proposal = i < length - 1, i == length - 1
        likelihood = (first_step if i == 0 else later_step)[:, score_bin(observations[:, i, _PRM].astype(np.float64), edges)]
        strong = accepted & (observations[:, i, _STRONG] > 0.5)
        if model.token_likelihood is not None:  # a weak step's length is evidence too
            tokens = model.token_likelihood[:, model.token_bin(observations[:, i, _TOKENS].astype(np.float64) * TOKEN_SCALE)]
            likelihood = np.where(strong, likelihood, likelihood * tokens)
        success = np.where(strong, p_s, p_w)
        prior = np.stack([clean * success, 1.0 - clean, clean * (1.0 - success)], axis=1)
        posterior = prior * likelihood.T
        posterior /= posterior.sum(axis=1, keepdims=True)
        belief[proposal] = posterior[proposal]
        clean = np.where(accepted, posterior[:, 0], clean)
    return _beliefs(belief, observations, length)


def per_step_belief(observations: np.ndarray, model: PomdpModel) -> Beliefs:
    """The authors' belief: ``P(state | min earlier score, current score)`` with a uniform prior.

    :param observations: `seq` observations, shape (B, 30, 4).
    :param model: the fitted POMDP (its observation model only).
    """
    observations = np.asarray(observations)
    length = _lengths(observations)
    batch = np.arange(len(length))
    edges = model.observation.bin_edges
    earlier = np.arange(MAX_STEPS)[None, :] < (length - 1)[:, None]
    min_earlier = np.where(earlier, observations[:, :, _PRM], np.inf).min(axis=1)
    row = np.where(length > 1, score_bin(np.minimum(min_earlier, 1.0), edges), model.observation.first_row)
    score = observations[batch, length - 1, _PRM].astype(np.float64)
    belief = model.observation.joint[:, row, score_bin(score, edges)].T
    if model.token_likelihood is not None:
        tokens = observations[batch, length - 1, _TOKENS].astype(np.float64) * TOKEN_SCALE
        belief = belief * model.token_likelihood[:, model.token_bin(tokens)].T
    return _beliefs(belief / belief.sum(axis=1, keepdims=True), observations, length)


def track(observations: np.ndarray, model: PomdpModel, belief_filter: str) -> Beliefs:
    """Beliefs by the named filter (``"bayes"`` or ``"per_step"``)."""
    if belief_filter == "bayes":
        return bayes_filter(observations, model)
    if belief_filter == "per_step":
        return per_step_belief(observations, model)
    raise ValueError(f"filter = {belief_filter!r} is not one of {list(FILTERS)}")
