"""TRIM-POMDP: solver vs exhaustive search, fitting recovers known parameters, filters, router, export, train.py, errors."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, logit, ndtr
from scipy.stats import beta

from agents.cli.common import compose
from agents.cli.train import train
from agents.export import load_router
from agents.pomdp.belief import bayes_filter, per_step_belief
from agents.pomdp.fit import fit_model
from agents.pomdp.model import ObservationModel, PomdpFitError, PomdpModel, uniform_bin_edges
from agents.pomdp.observation import (
    fit_observation_model,
    observation_samples_from_processbench,
    observation_samples_from_trees,
)
from agents.pomdp.router import PomdpRouter, export_router, solve_router
from agents.pomdp.solver import Emissions, planning_emissions, solve
from trim_env.env import StepRoutingEnv
from trim_env.evaluation import run_episodes
from trim_env.features import TOKEN_SCALE
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import MAX_STEPS, STATE_CORRECT, STATE_LAST_STEP_WRONG, RolloutTrees

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Small synthetic models


def small_model(horizon: int, n_bins: int = 3, n_token_bins: int = 2, seed: int = 0) -> PomdpModel:
    """A POMDP with random but valid parameters, ``n_bins`` score bins and ``horizon`` steps."""
    rng = np.random.default_rng(seed)
    joint = rng.uniform(0.2, 1.0, size=(3, n_bins + 1, n_bins))
    joint[0, :, -1] += 3.0  # correct steps score high, wrong ones low: an informative PRM
    joint[1:, :, 0] += 2.0
    joint /= joint.sum(axis=(1, 2), keepdims=True)
    hazard = np.append(rng.uniform(0.1, 0.4, horizon - 1), 1.0)
    edges = np.append(np.linspace(0.0, 60.0, n_token_bins), np.inf)
    return PomdpModel(
        observation=ObservationModel(uniform_bin_edges(n_bins), joint, np.zeros((3, 2)), np.ones(3, dtype=np.int64)),
        weak_step_accuracy=0.8,
        strong_step_accuracy=0.95,
        weak_hazard=hazard,
        strong_hazard=np.append(rng.uniform(0.1, 0.4, horizon - 1), 1.0),
        final_correct_clean=0.9,
        final_correct_derailed=0.1,
        token_edges=edges,
        token_bin_probability=np.full(n_token_bins, 1.0 / n_token_bins),
        rewrite_tokens=np.linspace(30.0, 90.0, n_token_bins),
    )


def exhaustive_value(model: PomdpModel, emissions: Emissions, costs: np.ndarray, step: int, clean: float,
                     used: int, cap: int | None) -> float:
    """Exact U_step(clean): every action on every observation history, no approximation."""
    if step > model.horizon:
        return 0.0
    p_w = model.weak_step_accuracy
    prior = np.array([clean * p_w, 1.0 - clean, clean * (1.0 - p_w)])
    total = 0.0
    for o in range(emissions.proposal.shape[2]):
        joint = prior * emissions.proposal[step - 1, :, o]
        if joint.sum() == 0:
            continue
        belief = joint / joint.sum()
        q_continue, q_regenerate = exhaustive_q(model, emissions, step, belief, used, cap)
        if emissions.token_bins > 1:  # the observation names the proposal's token bin, hence the cost
            total += joint.sum() * max(q_continue, q_regenerate - costs[o % emissions.token_bins])
            continue
        for k, probability in enumerate(model.token_bin_probability):
            total += joint.sum() * probability * max(q_continue, q_regenerate - costs[k])
    return total


def exhaustive_q(model: PomdpModel, emissions: Emissions, step: int, belief: np.ndarray, used: int,
                 cap: int | None) -> tuple[float, float]:
    """Exact (Q_continue, Q_regenerate before cost) at a belief over (S0, S1, S2)."""
    costs = exhaustive_q.costs  # type: ignore[attr-defined]

    def reward(clean: float) -> float:
        return clean * model.final_correct_clean + (1 - clean) * model.final_correct_derailed

    h_w, h_s, p_s = model.weak_hazard[step - 1], model.strong_hazard[step - 1], model.strong_step_accuracy
    q_continue = h_w * reward(belief[0]) + (1 - h_w) * exhaustive_value(model, emissions, costs, step + 1, belief[0], used, cap)
    if cap is not None and used >= cap:
        return q_continue, -np.inf
    before = belief[0] + belief[2]
    if emissions.rewrite is None:
        after = exhaustive_value(model, emissions, costs, step + 1, p_s * before, used + 1, cap)
    else:
        prior = np.array([before * p_s, 1 - before, before * (1 - p_s)])
        after = 0.0
        for o in range(emissions.rewrite.shape[2]):
            joint = prior * emissions.rewrite[step - 1, :, o]
            if joint.sum() > 0:
                after += joint.sum() * exhaustive_value(model, emissions, costs, step + 1, joint[0] / joint.sum(), used + 1, cap)
    return q_continue, h_s * reward(p_s * before) + (1 - h_s) * after


@pytest.mark.parametrize(
    "joint, observe_rewrite, cap, token_evidence",
    [(False, True, None, False), (True, False, None, False), (False, True, 1, False), (True, False, 2, False),
     (False, True, None, True), (True, False, 1, True)],
)
def test_solver_agrees_with_exhaustive_search_within_its_error_bound(joint, observe_rewrite, cap, token_evidence):
    model = small_model(horizon=4, n_bins=3)
    if token_evidence:  # wrong steps tend to be long
        model.token_likelihood = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    emissions = planning_emissions(model.observation, model.horizon, joint, observe_rewrite, model.token_likelihood)
    lam, unit = 0.02, 10.0
    policy = solve(model, lam, unit, emissions, grid_size=2001, max_strong_steps=cap)
    costs = lam * model.rewrite_tokens / unit
    exhaustive_q.costs = costs  # type: ignore[attr-defined]
    assert 0 < policy.error_bound < 1e-3
    tolerance = policy.error_bound + 1e-9
    grid = np.linspace(0, 1, 2001)
    for g in (0, 500, 1234, 2000):
        exact = exhaustive_value(model, emissions, costs, 1, grid[g], 0, cap)
        computed = policy.start_value[0, 0, g]
        # Interpolating convex functions from above: computed values are upper bounds.
        assert exact - 1e-9 <= computed <= exact + tolerance
    rng = np.random.default_rng(1)
    for belief in rng.dirichlet(np.ones(3), size=6):
        for step in (1, 2):
            used = 0 if cap is None else min(cap, step - 1)
            exact_c, exact_r = exhaustive_q(model, emissions, step, belief, used, cap)
            q_c, q_r = policy.q_values(np.array([step]), np.array([used]), belief[None], np.array([0]))
            assert exact_c - 1e-9 <= q_c[0] <= exact_c + tolerance
            if np.isfinite(exact_r):
                assert exact_r - costs[0] - 1e-9 <= q_r[0] <= exact_r - costs[0] + tolerance
            else:
                assert q_r[0] == -np.inf


def test_finer_grids_shrink_the_error_bound_and_agree():
    model = small_model(horizon=6, n_bins=4, seed=3)
    emissions = planning_emissions(model.observation, model.horizon, False, True)
    coarse, fine = (solve(model, 0.01, 10.0, emissions, grid_size=g) for g in (201, 4001))
    assert fine.error_bound < coarse.error_bound / 10
    difference = np.abs(coarse.start_value[:, :, ::20] - fine.start_value[:, :, ::400]).max()
    assert difference <= coarse.error_bound + fine.error_bound


def test_a_higher_lambda_never_regenerates_more():
    model = small_model(horizon=5, n_bins=4, seed=4)
    beliefs = np.random.default_rng(0).dirichlet(np.ones(3), size=200)
    step, used, token = np.full(200, 2), np.zeros(200), np.ones(200, dtype=np.int64)
    regenerate = []
    for lam in (0.0, 0.01, 0.05, 1.0):
        policy = solve(model, lam, 10.0, planning_emissions(model.observation, model.horizon, False, True))
        q_c, q_r = policy.q_values(step, used, beliefs, token)
        regenerate.append(q_r > q_c)
    for cheap, dear in itertools.pairwise(regenerate):
        assert not (dear & ~cheap).any()
    assert regenerate[0].any() and not regenerate[-1].any()


# ------------------------------------------------------------------------------------------------
# Fitting


@pytest.fixture(scope="module")
def homogeneous_params() -> SimulatorParams:
    """The default preset without per-query heterogeneity, so that its parameters are the POMDP's."""
    return SimulatorParams.preset(
        "math500-qwen1.5b-7b", weak_difficulty_slope=0.0, strong_difficulty_slope=0.0, hazard_difficulty_slope=0.0,
        prm_query_sd=0.0, prm_difficulty_slope=0.0,
    )


@pytest.fixture(scope="module")
def homogeneous_trees(homogeneous_params: SimulatorParams) -> RolloutTrees:
    trees = SimulatedTrees(homogeneous_params, 5, np.arange(1500), max_strong_steps=2)
    trees.expand_all()
    return trees.to_cached()


@pytest.fixture(scope="module")
def homogeneous_model(homogeneous_trees: RolloutTrees) -> PomdpModel:
    return fit_model(homogeneous_trees, uniform_bin_edges(20))


def logit_normal_bins(edges: np.ndarray, mean: float, sd: float) -> np.ndarray:
    cdf = ndtr((logit(np.clip(edges, 1e-12, 1 - 1e-12)) - mean) / sd)
    return np.diff(cdf)


def test_fitting_recovers_the_simulators_parameters(homogeneous_params, homogeneous_model):
    p, model = homogeneous_params, homogeneous_model
    assert model.weak_step_accuracy == pytest.approx(expit(p.weak_step_logit), abs=0.01)
    assert model.strong_step_accuracy == pytest.approx(expit(p.strong_step_logit), abs=0.005)
    assert model.final_correct_clean == pytest.approx(p.final_correct_if_clean, abs=0.02)
    assert model.final_correct_derailed == pytest.approx(p.final_correct_if_derailed, abs=0.02)
    steps = np.arange(1, 11)
    for strong, fitted in ((False, model.weak_hazard), (True, model.strong_hazard)):
        true = p.hazard(np.full(10, strong), steps, np.zeros(10))
        np.testing.assert_allclose(fitted[:10], true, atol=0.02)
    assert model.weak_hazard[-1] == 1.0
    # The PRM score of a step is logit-normal around its state's mean: compare bin probabilities.
    edges = model.observation.bin_edges
    current = model.observation.later_steps(joint=False)
    means = {0: p.prm_logit_correct, 1: p.prm_logit_derailed, 2: p.prm_logit_last_wrong}
    for state, mean in means.items():
        np.testing.assert_allclose(current[state], logit_normal_bins(edges, mean, p.prm_noise_sd), atol=0.012)
    np.testing.assert_allclose(model.observation.first_step()[0], logit_normal_bins(edges, p.prm_logit_correct, p.prm_noise_sd), atol=0.02)
    # A rewrite is longer for a longer proposal.
    assert (np.diff(model.rewrite_tokens) > 0).all()


def synthetic_processbench(n: int, seed: int) -> list[dict]:
    """ProcessBench-format records with scores drawn from known Beta laws per state."""
    rng = np.random.default_rng(seed)
    laws = {0: (8.0, 2.0), 1: (2.0, 4.0), 2: (1.5, 6.0)}
    records = []
    for index in range(n):
        length = int(rng.integers(2, 9))
        label = int(rng.integers(-1, length)) if rng.random() < 0.7 else -1
        step = np.arange(length)
        state = np.where(label == -1, 0, np.select([step < label, step == label], [0, 2], 1))
        scores = [float(rng.beta(*laws[int(s)])) for s in state]
        records.append({"id": f"synthetic-{index}", "steps": [f"step {i}" for i in step], "label": label, "prm_scores": scores})
    return records


def test_fitting_from_processbench_records_recovers_the_score_laws():
    samples = observation_samples_from_processbench(synthetic_processbench(4000, 0))
    observation = fit_observation_model(samples, uniform_bin_edges(10))
    edges = observation.bin_edges
    current = observation.later_steps(joint=False)
    for state, (a, b) in {0: (8.0, 2.0), 1: (2.0, 4.0), 2: (1.5, 6.0)}.items():
        np.testing.assert_allclose(current[state], np.diff(beta.cdf(edges, a, b)), atol=0.02)
    # The reflected kernel keeps the mass inside [0, 1] near the borders: the top bin of S0 is right.
    assert current[0, -1] == pytest.approx(np.diff(beta.cdf(edges, 8, 2))[-1], abs=0.02)


def test_processbench_labels_become_states():
    records = [{"steps": ["a", "b", "c", "d"], "label": 1, "prm_scores": [0.9, 0.2, 0.4, 0.5]},
               {"steps": ["a", "b"], "label": -1, "prm_scores": [0.8, 0.7]}]
    samples = observation_samples_from_processbench(records)
    assert samples.state.tolist() == [0, 2, 1, 1, 0, 0]
    assert samples.first.tolist() == [True, False, False, False, True, False]
    np.testing.assert_allclose(samples.min_previous[~samples.first], [0.9, 0.2, 0.2, 0.8])


def test_token_evidence_learns_that_wrong_steps_are_longer(homogeneous_trees):
    model = fit_model(homogeneous_trees, uniform_bin_edges(10), n_token_bins=4, token_evidence=True)
    assert model.token_likelihood is not None and model.token_likelihood.shape == (3, len(model.token_edges) - 1)
    longest = model.token_likelihood[:, -1]
    assert longest[STATE_LAST_STEP_WRONG] > 1.3 * longest[STATE_CORRECT]  # the preset's wrong steps are ~2x longer
    short, long_ = random_seq(1, 0), random_seq(1, 0)
    short[0, :, 1] = np.where(short[0, :, 3] > 0, 0.05, 0.0)
    long_[0, :, 1] = np.where(long_[0, :, 3] > 0, 5.0, 0.0)
    assert bayes_filter(long_, model).belief[0, 0] < bayes_filter(short, model).belief[0, 0]  # long steps look wrong


def test_a_fitted_model_survives_saving_and_loading(tmp_path, homogeneous_model):
    model = homogeneous_model
    loaded = PomdpModel.load(model.save(tmp_path / "model.json"))
    np.testing.assert_array_equal(loaded.observation.joint, model.observation.joint)
    np.testing.assert_array_equal(loaded.token_edges, model.token_edges)
    assert loaded.weak_step_accuracy == model.weak_step_accuracy


# ------------------------------------------------------------------------------------------------
# Bad input


def test_empty_or_unlabelled_data_is_refused_with_a_clear_error(homogeneous_trees):
    with pytest.raises(PomdpFitError, match="no records"):
        observation_samples_from_processbench([])
    with pytest.raises(PomdpFitError, match=r"record 0 .*'label' missing \(unlabelled record\)"):
        observation_samples_from_processbench([{"id": "x", "steps": ["a"], "prm_scores": [0.5]}])
    with pytest.raises(PomdpFitError, match=r"'prm_scores' missing \(add the PRM's per-step scores\)"):
        observation_samples_from_processbench([{"steps": ["a"], "label": -1}])
    with pytest.raises(PomdpFitError, match="has 1 scores for 2 steps"):
        observation_samples_from_processbench([{"steps": ["a", "b"], "label": -1, "prm_scores": [0.5]}])
    with pytest.raises(PomdpFitError, match=r"'label' = 5 must be -1 or a step index"):
        observation_samples_from_processbench([{"steps": ["a"], "label": 5, "prm_scores": [0.5]}])
    with pytest.raises(PomdpFitError, match=r"'score' = 1\.5.*must be in \[0, 1\]"):
        observation_samples_from_processbench([{"steps": ["a"], "label": -1, "prm_scores": [1.5]}])
    with pytest.raises(PomdpFitError, match="no step in state S1"):
        fit_observation_model(observation_samples_from_processbench([{"steps": ["a"], "label": -1, "prm_scores": [0.5]}]),
                              uniform_bin_edges(5))
    unlabelled = dataclasses.replace(homogeneous_trees)
    unlabelled.hidden_state = np.full_like(homogeneous_trees.hidden_state, -1)
    with pytest.raises(PomdpFitError, match="unlabelled"):
        observation_samples_from_trees(unlabelled)


def test_probabilities_not_summing_to_one_are_refused(tmp_path):
    model = small_model(horizon=3)
    broken = dataclasses.replace(model, token_bin_probability=np.array([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"'token_bin_probability'.*sum to 1\.1"):
        broken.validate()
    content = model.to_dict()
    content["observation"]["joint"][1][0][0] += 0.25
    path = tmp_path / "model.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"model\.json: observation: field 'joint' \(row S1\): probabilities sum to 1\.25"):
        PomdpModel.load(path)
    emissions = planning_emissions(model.observation, model.horizon, False, True)
    emissions.proposal[1, 2, 0] += 0.1
    with pytest.raises(ValueError, match=r"emissions\.proposal\[step 2, state 2\]: probabilities sum to 1\.1"):
        solve(model, 0.01, 10.0, emissions)
    with pytest.raises(ValueError, match="'weak_hazard'.*ending with 1"):
        dataclasses.replace(model, weak_hazard=np.array([0.2, 0.2, 0.9])).validate()
    with pytest.raises(ValueError, match="lambda = -1"):
        solve(model, -1.0, 10.0, planning_emissions(model.observation, model.horizon, False, True))


# ------------------------------------------------------------------------------------------------
# Filters and the router


def simulate_pomdp(router: PomdpRouter, episodes: int, seed: int) -> np.ndarray:
    """Returns of ``episodes`` runs of the model's own POMDP under ``router`` (fed `seq` observations)."""
    model, policy = router.model, router.policy
    rng = np.random.default_rng(seed)
    edges = model.observation.bin_edges
    centers = (edges[:-1] + edges[1:]) / 2
    token_edges = model.token_edges
    token_values = np.append((token_edges[:-2] + token_edges[1:-1]) / 2, token_edges[-2] + 10.0)
    emissions = planning_emissions(model.observation, model.horizon, joint=False, observe_rewrite=True)

    def draw(table: np.ndarray) -> np.ndarray:
        """One category per row of ``table`` (rows are distributions)."""
        return (rng.random(len(table))[:, None] > np.cumsum(table, axis=1)).sum(axis=1)

    seq = np.zeros((episodes, MAX_STEPS, 4), dtype=np.float32)
    clean = np.ones(episodes, dtype=bool)
    used = np.zeros(episodes, dtype=np.int64)
    returns = np.zeros(episodes)
    active = np.ones(episodes, dtype=bool)
    for t in range(1, model.horizon + 1):
        idx = np.flatnonzero(active)
        correct = rng.random(len(idx)) < model.weak_step_accuracy
        state = np.where(clean[idx], np.where(correct, 0, 2), 1)
        score = centers[draw(emissions.proposal[t - 1][state])]
        if model.token_likelihood is None:
            token_bin = draw(np.tile(model.token_bin_probability, (len(idx), 1)))
        else:  # the proposal's length depends on its state
            token_bin = draw(model.token_likelihood[state])
        seq[idx, t - 1] = np.stack([score, token_values[token_bin] / TOKEN_SCALE, np.zeros(len(idx)), np.ones(len(idx))], axis=1)
        regenerate = router.predict(seq[idx]).astype(bool)
        if policy.max_strong_steps is not None:
            assert not (regenerate & (used[idx] >= policy.max_strong_steps)).any()
        returns[idx] -= np.where(regenerate, policy.rewrite_cost[token_bin], 0.0)
        strong_ok = rng.random(len(idx)) < model.strong_step_accuracy
        strong_state = np.where(state != 1, np.where(strong_ok, 0, 2), 1)
        strong_score = centers[draw(emissions.rewrite[t - 1][strong_state])]
        seq[idx[regenerate], t - 1, 0] = strong_score[regenerate]
        seq[idx[regenerate], t - 1, 2] = 1.0
        clean[idx] = np.where(regenerate, strong_state == 0, state == 0)
        used[idx] += regenerate
        hazard = np.where(regenerate, model.strong_hazard[t - 1], model.weak_hazard[t - 1])
        ends = rng.random(len(idx)) < hazard
        final = np.where(clean[idx], model.final_correct_clean, model.final_correct_derailed)
        returns[idx[ends]] += final[ends]
        active[idx[ends]] = False
    return returns


@pytest.mark.parametrize("cap, token_evidence", [(None, False), (2, False), (None, True)])
def test_bayes_router_earns_the_solved_value_on_its_own_pomdp(cap, token_evidence):
    model = small_model(horizon=6, n_bins=5, n_token_bins=3, seed=7)
    if token_evidence:
        model.token_likelihood = np.array([[0.5, 0.3, 0.2], [0.3, 0.4, 0.3], [0.1, 0.3, 0.6]])
    router = solve_router(model, 0.02, 10.0, "bayes", grid_size=2001, max_strong_steps=cap)
    returns = simulate_pomdp(router, 20000, seed=1)
    predicted = router.policy.start_value[0, 0, -1]  # U_1 at a clean (empty) prefix
    standard_error = returns.std() / np.sqrt(len(returns))
    assert abs(returns.mean() - predicted) < 4 * standard_error + router.policy.error_bound


def random_seq(batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    length = rng.integers(1, MAX_STEPS + 1, size=batch)
    seq = np.zeros((batch, MAX_STEPS, 4), dtype=np.float32)
    valid = np.arange(MAX_STEPS)[None, :] < length[:, None]
    seq[..., 0] = rng.random((batch, MAX_STEPS))
    seq[..., 1] = rng.uniform(0.05, 2.0, (batch, MAX_STEPS))
    seq[..., 2] = rng.random((batch, MAX_STEPS)) < 0.2
    seq[np.arange(batch), length - 1, 2] = 0.0  # the proposal is a weak step
    seq[..., 3] = 1.0
    return np.where(valid[..., None], seq, 0.0).astype(np.float32)


@pytest.mark.parametrize("tracker", [bayes_filter, per_step_belief])
def test_filters_are_the_same_in_a_batch_and_one_at_a_time(tracker):
    model = small_model(horizon=MAX_STEPS, n_bins=6, seed=2)
    seq = random_seq(64, 0)
    batch = tracker(seq, model)
    assert np.allclose(batch.belief.sum(axis=1), 1.0) and (batch.belief >= 0).all()
    for i in range(0, 64, 7):
        single = tracker(seq[i : i + 1], model)
        np.testing.assert_allclose(single.belief[0], batch.belief[i], rtol=1e-12)
        assert single.step[0] == batch.step[i] and single.strong_used[0] == batch.strong_used[i]
    assert (batch.strong_used == ((seq[..., 2] > 0) & (np.arange(MAX_STEPS) < batch.step[:, None] - 1)).sum(1)).all()


def test_bayes_filter_tracks_derailment_and_uses_the_rewrite_score():
    model = small_model(horizon=MAX_STEPS, n_bins=4, seed=5)
    seq = np.zeros((3, MAX_STEPS, 4), dtype=np.float32)
    seq[:, :3, 1], seq[:, :3, 3] = 0.5, 1.0
    seq[0, :3, 0] = [0.99, 0.99, 0.5]  # high scores so far
    seq[1, :3, 0] = [0.99, 0.01, 0.5]  # a very low earlier score: probably derailed
    seq[2, :3, 0] = [0.99, 0.99, 0.5]
    seq[2, 1, 2] = 1.0  # the second step was rewritten by the strong model
    belief = bayes_filter(seq, model).belief
    assert belief[1, 1] > belief[0, 1]  # more likely derailed after a low score
    # The per-step belief sees only (min earlier, current): the two first rows differ through the min only.
    per_step = per_step_belief(seq, model).belief
    assert not np.allclose(per_step[0], per_step[1])


def test_router_with_an_empty_observation_says_what_is_wrong():
    router = solve_router(small_model(horizon=MAX_STEPS), 0.01, 10.0, "bayes")
    with pytest.raises(ValueError, match="has no valid row"):
        router.predict(np.zeros((1, MAX_STEPS, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="filter = 'kalman'"):
        solve_router(small_model(horizon=MAX_STEPS), 0.01, 10.0, "kalman")


@pytest.fixture(scope="module")
def tiny_model(tiny_dataset_dir) -> PomdpModel:
    from trim_env.tree import load_split

    return fit_model(load_split(tiny_dataset_dir, "train"), uniform_bin_edges(10), n_token_bins=4)


@pytest.mark.parametrize("belief_filter", ["bayes", "per_step"])
def test_router_plays_the_env_exactly_as_the_batch_evaluator(tiny_trees, tiny_model, belief_filter):
    router = solve_router(tiny_model, 0.01, 10.0, belief_filter, grid_size=501, max_strong_steps=tiny_trees.max_strong_steps)
    outcomes = run_episodes(tiny_trees, router)
    env = StepRoutingEnv(tiny_trees, observation="seq", lam=0.01, shuffle=False)
    for query in range(tiny_trees.num_queries):
        obs, info = env.reset(options={"query_index": query})
        total, done = 0.0, False
        while not done:
            obs, reward, done, _, info = env.step(router.act(obs))
            total += reward
        assert info["correct"] == outcomes.correct[query]
        assert info["strong_tokens"] == outcomes.strong_tokens[query]
        assert total == pytest.approx(outcomes.correct[query] - 0.01 * outcomes.strong_tokens[query] / 10.0)


def test_exported_router_loads_and_decides_identically(tmp_path, tiny_trees, tiny_model):
    router = solve_router(tiny_model, 0.007, 10.0, "per_step", grid_size=301, max_strong_steps=2)
    export_router(tmp_path / "router", router, {"policy": "pomdp", "lambda": 0.007, "cost_unit_tokens": 10.0})
    loaded = load_router(tmp_path / "router")
    assert isinstance(loaded, PomdpRouter) and loaded.observation_kind == "seq" and loaded.belief_filter == "per_step"
    assert loaded.policy.max_strong_steps == 2
    seq = random_seq(200, 3)
    np.testing.assert_array_equal(loaded.predict(seq), router.predict(seq))
    config = json.loads((tmp_path / "router" / "config.json").read_text())
    config["lambda"] = 0.05
    (tmp_path / "router" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"field lambda = 0\.05 but .*pomdp_policy\.npz was solved for 0\.007"):
        load_router(tmp_path / "router")


# ------------------------------------------------------------------------------------------------
# train.py


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def test_train_solves_exports_and_evaluate_reproduces_the_point(tiny_dataset_dir, tmp_path):
    arguments = ["policy=pomdp", "lambda=0.01", f"data.path={tiny_dataset_dir}", "data.persist_growth=false", "progress_bar=false",
                 f"policy.model_cache_dir={tmp_path / 'cache'}", "policy.grid_size=501"]
    cfg = compose("config", arguments)
    out = tmp_path / "run"
    out.mkdir()
    results = train(cfg, out)
    (out / "results.json").write_text(json.dumps(results) + "\n")
    point = results["points"][-1]
    assert point["policy"] == "pomdp" and point["env_steps"] == 0 and point["model_from_cache"] is False
    assert 0 < point["solve_time_s"] <= point["train_wall_time_s"] and np.isfinite(point["validation_objective"])
    assert len(list((tmp_path / "cache").glob("pomdp-model-*.json"))) == 1
    again = train(cfg, tmp_path / "again")["points"][-1]
    assert again["model_from_cache"] is True and again["accuracy"] == point["accuracy"]

    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "policy=router", f"policy.path={out / 'router'}", f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
         f"hydra.run.dir={tmp_path / 'evaluate'}"],
        cwd=ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "evaluate" / "results.json").read_text())["points"][-1]
    assert evaluated["policy"] == "router:pomdp" and evaluated["parameter"] == 0.01
    for key in ("accuracy", "strong_tokens_per_query", "normalized_cost", "escalations_per_query", "cap_binding_rate"):
        assert evaluated[key] == pytest.approx(point[key], rel=1e-12, abs=1e-12), key


def test_pomdp_sweeps_lambda_in_hydra_multirun(tiny_dataset_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--multirun", "policy=pomdp", "lambda=0.005,0.05", f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
         "progress_bar=false", f"policy.model_cache_dir={tmp_path / 'cache'}", "policy.grid_size=301",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, env=subprocess_env(), timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    points = [json.loads(path.read_text())["points"][-1] for path in sorted((tmp_path / "sweep").glob("*/results.json"))]
    assert sorted(p["lambda"] for p in points) == [0.005, 0.05]
    assert sorted(p["model_from_cache"] for p in points) == [False, True]  # fitted once, reused for the other λ
    cheap, dear = sorted(points, key=lambda p: p["lambda"])
    assert cheap["strong_tokens_per_query"] >= dear["strong_tokens_per_query"]
