"""Fitting the TRIM-POMDP's observation model: labelled PRM-score samples and a reflected kernel density.

:func:`fit_observation_model` estimates ``P(min PRM score of the earlier steps, PRM score of the
current step | state)`` (an :class:`~agents.pomdp.model.ObservationModel`). It is a kernel density
estimate with reflection at the borders of [0, 1]: PRM scores pile up against 0 and 1, where a
plain KDE would leak a large part of the mass outside the interval and under-estimate the density
exactly in the bins that matter most; reflecting the kernel puts that mass back. The product
Gaussian kernel has a per-state, per-axis bandwidth: the normal-reference rule's, scaled down by a
factor chosen on held-out likelihood (scores spike at 0 and 1, where the reference rule alone
oversmooths), so the smoothing shrinks as data grow, while every bin keeps a positive probability
(a floor mixes in a little of the uniform distribution as well: one odd score must never rule a
state out). The first step of a solution has no earlier step; it gets its own row instead of the
"min = 1.0" convention, which would mix first steps into the top bin of the min score.

Samples (:class:`ScoreSamples`) come from cached trees with known hidden states
(:func:`observation_samples_from_trees`), or from ProcessBench-format records with per-step PRM
scores (:func:`observation_samples_from_processbench`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from agents.pomdp.model import N_STATES, STATE_NAMES, ObservationModel, PomdpFitError, score_bin
from trim_env.tree import (
    STATE_CORRECT,
    STATE_DERAILED,
    STATE_LAST_STEP_WRONG,
    UNKNOWN_STATE,
    RolloutTrees,
)

#: Resolution of the pre-binning of scores before kernel smoothing (far finer than any bandwidth used).
FINE_BINS = 512
#: Multipliers of the normal-reference bandwidth among which held-out likelihood chooses.
BANDWIDTH_SCALES: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


@dataclass
class ScoreSamples:
    """Labelled PRM observations: one row per scored step.

    :param min_previous: minimum PRM score of the earlier steps (ignored where ``first``).
    :param score: PRM score of the step.
    :param first: the step is the first of its solution (no earlier step).
    :param state: hidden-state code of prefix + step (0 = S0, 1 = S1, 2 = S2).
    """

    min_previous: np.ndarray
    score: np.ndarray
    first: np.ndarray
    state: np.ndarray
    source: str

    def __post_init__(self) -> None:
        n = len(self.score)
        for name in ("min_previous", "first", "state"):
            if len(getattr(self, name)) != n:
                raise PomdpFitError(f"{self.source}: field {name!r} has {len(getattr(self, name))} rows, score has {n}")
        if n == 0:
            raise PomdpFitError(f"{self.source}: no scored steps to fit an observation model from")
        for name in ("min_previous", "score"):
            values = getattr(self, name)
            bad = ~np.isfinite(values) | (values < 0) | (values > 1)
            if name == "min_previous":
                bad &= ~self.first
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise PomdpFitError(f"{self.source}: row {row}, field {name!r} = {float(values[row])!r}: a PRM score must be in [0, 1]")
        bad = ~np.isin(self.state, (STATE_CORRECT, STATE_DERAILED, STATE_LAST_STEP_WRONG))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = int(self.state[row])
            why = "hidden state unknown (unlabelled data)" if value == UNKNOWN_STATE else "not a hidden-state code 0, 1 or 2"
            raise PomdpFitError(f"{self.source}: row {row}, field 'state' = {value}: {why}")


def observation_samples_from_trees(trees: RolloutTrees, source: str = "trees") -> ScoreSamples:
    """Every weak proposal and strong rewrite in ``trees`` as a labelled observation.

    :param trees: cached trees whose ``hidden_state`` is known (the simulator records it).
    :param source: name used in error messages.
    :raises PomdpFitError: if the trees have no steps or hidden states are unknown.
    """
    if trees.num_nodes == 0:
        raise PomdpFitError(f"{source}: no nodes")
    steps = np.flatnonzero(trees.parent >= 0)
    unknown = trees.hidden_state[steps] == UNKNOWN_STATE
    if unknown.all():
        raise PomdpFitError(
            f"{source}: field 'hidden_state' is {UNKNOWN_STATE} (unknown) at every node: these trees are unlabelled "
            "(real collection); fit the observation model from ProcessBench-format records with PRM scores instead"
        )
    parent = trees.parent[steps]
    return ScoreSamples(
        min_previous=trees.path_min_prm[parent].astype(np.float64),
        score=trees.step_prm[steps].astype(np.float64),
        first=trees.parent[parent] < 0,
        state=trees.hidden_state[steps].astype(np.int64),
        source=source,
    )


def observation_samples_from_processbench(records: Sequence[dict[str, Any]], score_field: str = "prm_scores",
                                          source: str = "records") -> ScoreSamples:
    """ProcessBench-format records with per-step PRM scores as labelled observations.

    Steps before the first wrong step (``label``) are S0, the first wrong step S2, later steps S1;
    ``label = -1`` means every step is correct.

    :param records: dicts with ``steps`` (list), ``label`` (int) and ``score_field`` (one score per step).
    :param score_field: the field holding the PRM scores the user added.
    :param source: name (e.g. the file) used in error messages.
    """
    if len(records) == 0:
        raise PomdpFitError(f"{source}: no records")
    columns: dict[str, list] = {"min_previous": [], "score": [], "first": [], "state": []}
    for index, record in enumerate(records):
        where = f"{source}: record {index} (id {record.get('id', '?')!r})"
        for name in ("steps", "label", score_field):
            if name not in record or record[name] is None:
                hint = " (unlabelled record)" if name == "label" else " (add the PRM's per-step scores)" if name == score_field else ""
                raise PomdpFitError(f"{where}: field {name!r} missing{hint}")
        steps, label, scores = record["steps"], record["label"], record[score_field]
        if len(scores) != len(steps):
            raise PomdpFitError(f"{where}: field {score_field!r} has {len(scores)} scores for {len(steps)} steps")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not -1 <= label < len(steps):
            raise PomdpFitError(f"{where}: field 'label' = {label!r} must be -1 or a step index in [0, {len(steps)})")
        scores = np.asarray(scores, dtype=np.float64)
        step = np.arange(len(steps))
        first_error = len(steps) if label == -1 else int(label)
        columns["state"].append(np.select([step < first_error, step == first_error], [STATE_CORRECT, STATE_LAST_STEP_WRONG], STATE_DERAILED))
        columns["score"].append(scores)
        columns["min_previous"].append(np.concatenate([[1.0], np.minimum.accumulate(scores)[:-1]]) if len(scores) else scores)
        columns["first"].append(step == 0)
    stacked = {name: np.concatenate(values) for name, values in columns.items()}
    return ScoreSamples(**stacked, source=source)



def _bandwidth(values: np.ndarray, dims: int) -> float:
    """Normal-reference bandwidth h = σ̂ · n^(-1/(d+4)) (Silverman/Scott), σ̂ = min(SD, IQR/1.349)."""
    n = len(values)
    if n < 2:
        return 0.25
    spread = float(np.std(values))
    q75, q25 = np.percentile(values, [75, 25])
    if q75 > q25:
        spread = min(spread, float(q75 - q25) / 1.349)
    scale = (4.0 / (dims + 2.0)) ** (1.0 / (dims + 4.0))
    return max(scale * spread * n ** (-1.0 / (dims + 4.0)), 1.0 / FINE_BINS)


def _reflected_kernel(edges: np.ndarray, bandwidth: float) -> np.ndarray:
    """(FINE_BINS, n_bins): mass that a Gaussian kernel at each fine cell, reflected at 0 and 1, puts in each bin."""
    centers = (np.arange(FINE_BINS) + 0.5) / FINE_BINS
    mass = np.zeros((FINE_BINS, len(edges) - 1))
    for image in (centers, -centers, 2.0 - centers):
        cdf = ndtr((edges[None, :] - image[:, None]) / bandwidth)
        mass += np.diff(cdf, axis=1)
    return mass / mass.sum(axis=1, keepdims=True)


def _fine_index(values: np.ndarray) -> np.ndarray:
    return np.minimum((values * FINE_BINS).astype(np.int64), FINE_BINS - 1)


def _fine_histograms(min_previous: np.ndarray, score: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts on the fine grid: (FINE_BINS, FINE_BINS) of (min score, score) after the first step, (FINE_BINS,) of first steps."""
    later = ~first
    pairs = np.bincount(_fine_index(min_previous[later]) * FINE_BINS + _fine_index(score[later]), minlength=FINE_BINS**2)
    return pairs.reshape(FINE_BINS, FINE_BINS).astype(np.float64), np.bincount(_fine_index(score[first]), minlength=FINE_BINS).astype(np.float64)


def _smoothed_counts(fine: tuple[np.ndarray, np.ndarray], edges: np.ndarray, bandwidth: tuple[float, float, float]) -> np.ndarray:
    """Kernel-smoothed counts on the (n+1, n) cells: rows = min-score bins, then the first-step row."""
    pairs, first = fine
    h_m, h_r, h_first = bandwidth
    later = _reflected_kernel(edges, h_m).T @ pairs @ _reflected_kernel(edges, h_r)
    return np.vstack([later, first @ _reflected_kernel(edges, h_first)])


def _cell_index(min_previous: np.ndarray, score: np.ndarray, first: np.ndarray, edges: np.ndarray) -> np.ndarray:
    n = len(edges) - 1
    row = np.where(first, n, score_bin(np.where(first, 0.0, min_previous), edges))
    return row * n + score_bin(score, edges)


def _scaled(reference: tuple[float, float, float], scale: float) -> tuple[float, float, float]:
    """Reference bandwidths times ``scale``, no finer than the pre-binning."""
    h_m, h_r, h_first = (max(h * scale, 1.0 / FINE_BINS) for h in reference)
    return h_m, h_r, h_first


def _normalise(counts: np.ndarray, floor: float) -> np.ndarray:
    return (1.0 - floor) * counts / counts.sum() + floor / counts.size


def fit_observation_model(samples: ScoreSamples, bin_edges: np.ndarray, floor: float = 1e-4, seed: int = 0) -> ObservationModel:
    """Reflected-KDE estimate of ``P(min earlier score, current score | state)`` on ``bin_edges``.

    Bandwidths per state and axis are the normal-reference rule's times a factor from
    :data:`BANDWIDTH_SCALES` chosen by 2-fold held-out log-likelihood of the cells: PRM scores are
    far from normal (spikes at 0 and 1), where the reference rule alone oversmooths; with plenty of
    data the held-out choice shrinks the kernel towards the histogram, with little it keeps it wide.

    :param samples: labelled observations (every state must occur).
    :param bin_edges: score bin edges on [0, 1] (both axes).
    :param floor: weight of the uniform distribution mixed in (keeps every cell positive).
    :param seed: seed of the held-out split.
    """
    bin_edges = np.asarray(bin_edges, dtype=np.float64)
    n = len(bin_edges) - 1
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor = {floor} must be in (0, 1): every cell needs a positive probability")
    joint = np.zeros((N_STATES, n + 1, n))
    bandwidths = np.zeros((N_STATES, 2))
    counts = np.bincount(samples.state, minlength=N_STATES)[:N_STATES]
    rng = np.random.default_rng(seed)
    for state in range(N_STATES):
        if counts[state] == 0:
            raise PomdpFitError(f"{samples.source}: no step in state {STATE_NAMES[state]}; cannot fit its observation model")
        mine = np.flatnonzero(samples.state == state)
        m, r, first = samples.min_previous[mine], samples.score[mine], samples.first[mine]
        reference = (_bandwidth(m[~first], 2), _bandwidth(r[~first], 2), _bandwidth(r[first], 1))
        cells = _cell_index(m, r, first, bin_edges)
        fold = rng.random(len(mine)) < 0.5
        halves = [(_fine_histograms(m[part], r[part], first[part]), np.bincount(cells[~part], minlength=(n + 1) * n))
                  for part in (fold, ~fold)]
        best_scale, best_score = BANDWIDTH_SCALES[-1], -np.inf
        for scale in BANDWIDTH_SCALES if 0 < fold.sum() < len(mine) else ():  # too few steps: reference rule
            score = 0.0
            for fine, held_out in halves:
                cells_model = _normalise(_smoothed_counts(fine, bin_edges, _scaled(reference, scale)), floor)
                score += float(held_out @ np.log(cells_model.ravel()))
            if score > best_score:
                best_scale, best_score = scale, score
        bandwidth = _scaled(reference, best_scale)
        fine_all = (halves[0][0][0] + halves[1][0][0], halves[0][0][1] + halves[1][0][1])
        joint[state] = _normalise(_smoothed_counts(fine_all, bin_edges, bandwidth), floor)
        bandwidths[state] = bandwidth[:2]
    model = ObservationModel(bin_edges, joint, bandwidths, counts, samples.source)
    model.validate()
    return model
