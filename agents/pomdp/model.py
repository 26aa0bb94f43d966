"""TRIM-POMDP model fitting: observation model, transitions, hazard and rewrite cost, with save/load.

The POMDP's hidden state is that of the prefix *plus the weak model's proposed step*, with the
codes of :mod:`trim_env.tree`: ``S0`` = 0 (all correct), ``S1`` = 1 (an earlier step was wrong:
irrecoverable), ``S2`` = 2 (only the proposed step is wrong: a strong rewrite can fix it).

Fitted quantities (:class:`PomdpModel`):

- **Observation model** (:class:`ObservationModel`): ``P(min PRM score of the earlier steps,
  PRM score of the current step | state)`` on score bins. It is a kernel density estimate with
  reflection at the borders of [0, 1]: PRM scores pile up against 0 and 1, where a plain KDE would
  leak a large part of the mass outside the interval and under-estimate the density exactly
  in the bins that matter most; reflecting the kernel puts that mass back. The product Gaussian
  kernel has a per-state, per-axis bandwidth: the normal-reference rule's, scaled down by a
  factor chosen on held-out likelihood (scores spike at 0 and 1, where the reference rule alone
  oversmooths), so the smoothing shrinks as data grow, while every bin keeps a positive
  probability (a floor mixes in a little of the uniform distribution as well: one odd score must
  never rule a state out). The first step of a solution has no earlier step; it gets its own row
  instead of the "min = 1.0" convention, which would mix first steps into the top bin of the min
  score.
  Sources: cached trees with known hidden states (:func:`observation_samples_from_trees`), or
  ProcessBench-format records with per-step PRM scores (:func:`observation_samples_from_processbench`).
- **Transitions** from cached trees (:func:`fit_model`): the weak model's next-step accuracy
  ``p_w`` (given a correct prefix), the strong model's ``p_s``, the termination hazards of weak
  and strong steps ``h(t)``, the final-answer accuracy of a clean and of a derailed solution, and
  the step-length distribution: token bins of the weak proposal, their frequencies, and the mean
  length of the strong rewrite of a proposal in each bin (its predicted cost).

A fitted model is saved as JSON (:meth:`PomdpModel.save`) and reused for every λ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import ndtr

from trim_env.tree import (
    MAX_STEPS,
    STATE_CORRECT,
    STATE_DERAILED,
    STATE_LAST_STEP_WRONG,
    UNKNOWN_STATE,
    RolloutTrees,
)

STATE_NAMES: tuple[str, ...] = ("S0", "S1", "S2")  # index = hidden-state code
N_STATES = 3
MODEL_FORMAT = "trim-pomdp-model"
MODEL_FORMAT_VERSION = 1
#: Version of the fitting method; part of the key of cached fitted models, so bump it whenever
#: a change of the fitting code changes its results.
FIT_VERSION = 2
#: Tolerance on "sums to one" checks of stored probability tables.
SUM_TOLERANCE = 1e-6
#: Resolution of the pre-binning of scores before kernel smoothing (far finer than any bandwidth used).
FINE_BINS = 512


class PomdpFitError(ValueError):
    """The data cannot give a POMDP model (empty, unlabelled, inconsistent); the message says where."""


# ----------------------------------------------------------------------------------------------
# Observation model


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


def uniform_bin_edges(n_bins: int) -> np.ndarray:
    """``n_bins`` equal-width score bins on [0, 1]."""
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"bins = {n_bins!r} must be an integer >= 2")
    return np.linspace(0.0, 1.0, int(n_bins) + 1)


def score_bin(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each score (the last bin includes 1.0)."""
    return np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)


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


@dataclass
class ObservationModel:
    """``P(min earlier score, current score | state)`` on score bins.

    ``joint[s, i, j]`` for state ``s``: rows ``i < n`` are bins of the min earlier score, row
    ``n`` is "first step" (no earlier step); columns are bins of the current score. Each
    ``joint[s]`` sums to one.
    """

    bin_edges: np.ndarray
    joint: np.ndarray
    #: Per state: (bandwidth of the min-score axis, of the current-score axis) used by the KDE.
    bandwidth: np.ndarray
    n_samples: np.ndarray
    source: str = ""

    @property
    def n_bins(self) -> int:
        return len(self.bin_edges) - 1

    @property
    def first_row(self) -> int:
        return self.n_bins

    def validate(self, where: str = "observation model") -> None:
        n = self.n_bins
        edges = np.asarray(self.bin_edges)
        if edges.ndim != 1 or n < 2 or edges[0] != 0.0 or edges[-1] != 1.0 or (np.diff(edges) <= 0).any():
            raise ValueError(f"{where}: field 'bin_edges' = {edges.tolist()} must increase strictly from 0 to 1")
        if self.joint.shape != (N_STATES, n + 1, n):
            raise ValueError(f"{where}: field 'joint' has shape {self.joint.shape}, expected {(N_STATES, n + 1, n)}")
        _check_distribution(self.joint.reshape(N_STATES, -1), f"{where}: field 'joint'", STATE_NAMES)
        if (self.joint <= 0).any():
            state, row, column = np.argwhere(self.joint <= 0)[0]
            raise ValueError(
                f"{where}: field 'joint'[{STATE_NAMES[state]}, {row}, {column}] = {self.joint[state, row, column]}: every cell "
                "must be positive (a zero likelihood would rule a state out on a single score)"
            )

    def conditional(self) -> np.ndarray:
        """``P(current score bin | min-score row, state)``, shape (3, n+1, n)."""
        return self.joint / np.maximum(self.joint.sum(axis=2, keepdims=True), 1e-300)

    def first_step(self) -> np.ndarray:
        """``P(current score bin | first step, state)``, shape (3, n)."""
        return self.conditional()[:, self.first_row, :]

    def later_steps(self, joint: bool) -> np.ndarray:
        """Emission of a step after the first: over (min row, current) cells if ``joint``, else the current score.

        :returns: shape (3, n*n) or (3, n); each row sums to one.
        """
        later = self.joint[:, : self.first_row, :]
        later = later / later.sum(axis=(1, 2), keepdims=True)
        return later.reshape(N_STATES, -1) if joint else later.sum(axis=1)


#: Multipliers of the normal-reference bandwidth among which held-out likelihood chooses.
BANDWIDTH_SCALES: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


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


# ----------------------------------------------------------------------------------------------
# The whole model


def _check_distribution(table: np.ndarray, where: str, labels: Sequence[str] | None = None) -> None:
    """Rows of ``table`` must be finite, non-negative and sum to one."""
    table = np.atleast_2d(np.asarray(table, dtype=np.float64))
    if not np.isfinite(table).all() or (table < 0).any():
        raise ValueError(f"{where}: probabilities must be finite and >= 0")
    sums = table.sum(axis=-1)
    bad = np.abs(sums - 1.0) > SUM_TOLERANCE
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        label = f" (row {labels[row]})" if labels is not None else ""
        raise ValueError(f"{where}{label}: probabilities sum to {sums[row]:.9g}, not 1")


def _check_probability(value: Any, where: str) -> None:
    values = np.asarray(value, dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError(f"{where} = {np.round(values, 6).tolist()} must be probabilities in [0, 1]")


@dataclass
class PomdpModel:
    """A fitted TRIM-POMDP (everything but λ).

    Steps are 1-based: ``weak_hazard[t - 1]`` is P(the solution ends after weak step t | it
    reached t), ``t = 1..horizon``, and the last entry is 1.
    """

    observation: ObservationModel
    #: p_w: P(weak proposal correct | correct prefix).
    weak_step_accuracy: float
    #: p_s: P(strong rewrite correct | correct prefix).
    strong_step_accuracy: float
    weak_hazard: np.ndarray
    strong_hazard: np.ndarray
    #: P(final answer correct | the solution ended with no uncorrected error) and (| derailed).
    final_correct_clean: float
    final_correct_derailed: float
    #: Token bins of the weak proposal: edges in tokens (first 0, last +inf), their frequencies,
    #: and the mean length (tokens) of the strong rewrite of a proposal in each bin.
    token_edges: np.ndarray
    token_bin_probability: np.ndarray
    rewrite_tokens: np.ndarray
    #: Provenance: data, sample counts, settings.
    source: dict[str, Any] = field(default_factory=dict)
    #: ``P(token bin of a weak step | state)``, shape (3, token bins), when a weak step's length is
    #: used as evidence beside its PRM score (wrong steps tend to be longer); ``None``: scores only.
    token_likelihood: np.ndarray | None = None

    @property
    def horizon(self) -> int:
        return len(self.weak_hazard)

    def validate(self, where: str = "POMDP model") -> None:
        """Check ranges, shapes and normalisation; raises ``ValueError`` naming the field."""
        self.observation.validate(f"{where}: observation")
        for name in ("weak_step_accuracy", "strong_step_accuracy", "final_correct_clean", "final_correct_derailed",
                     "weak_hazard", "strong_hazard"):
            _check_probability(getattr(self, name), f"{where}: field {name!r}")
        for name in ("weak_hazard", "strong_hazard"):
            hazard = np.asarray(getattr(self, name))
            if hazard.shape != (self.horizon,) or self.horizon < 1 or hazard[-1] != 1.0:
                raise ValueError(f"{where}: field {name!r} must be a vector of length horizon = {self.horizon} ending with 1")
        edges = np.asarray(self.token_edges)
        k = len(edges) - 1
        if k < 1 or edges[0] != 0 or edges[-1] != np.inf or (np.diff(edges) <= 0).any():
            raise ValueError(f"{where}: field 'token_edges' = {edges.tolist()} must increase strictly from 0 to inf")
        if np.shape(self.token_bin_probability) != (k,) or np.shape(self.rewrite_tokens) != (k,):
            raise ValueError(f"{where}: fields 'token_bin_probability' and 'rewrite_tokens' must have {k} entries (one per token bin)")
        _check_distribution(self.token_bin_probability, f"{where}: field 'token_bin_probability'")
        if not np.isfinite(self.rewrite_tokens).all() or (np.asarray(self.rewrite_tokens) < 0).any():
            raise ValueError(f"{where}: field 'rewrite_tokens' = {np.asarray(self.rewrite_tokens).tolist()} must be token counts >= 0")
        if self.token_likelihood is not None:
            if np.shape(self.token_likelihood) != (N_STATES, k):
                raise ValueError(f"{where}: field 'token_likelihood' must have shape ({N_STATES}, {k}) (states x token bins)")
            _check_distribution(np.asarray(self.token_likelihood), f"{where}: field 'token_likelihood'", STATE_NAMES)

    def token_bin(self, tokens: np.ndarray) -> np.ndarray:
        """Token bin of weak proposals of ``tokens`` tokens."""
        return np.searchsorted(self.token_edges, tokens, side="right") - 1

    def to_dict(self) -> dict[str, Any]:
        obs = self.observation
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "states": list(STATE_NAMES),
            "observation": {
                "bin_edges": obs.bin_edges.tolist(),
                "joint": obs.joint.tolist(),
                "bandwidth": obs.bandwidth.tolist(),
                "n_samples": np.asarray(obs.n_samples).tolist(),
                "source": obs.source,
            },
            "weak_step_accuracy": self.weak_step_accuracy,
            "strong_step_accuracy": self.strong_step_accuracy,
            "weak_hazard": np.asarray(self.weak_hazard).tolist(),
            "strong_hazard": np.asarray(self.strong_hazard).tolist(),
            "final_correct_clean": self.final_correct_clean,
            "final_correct_derailed": self.final_correct_derailed,
            "token_edges": [float(x) if math.isfinite(x) else "inf" for x in self.token_edges],
            "token_bin_probability": np.asarray(self.token_bin_probability).tolist(),
            "rewrite_tokens": np.asarray(self.rewrite_tokens).tolist(),
            "token_likelihood": None if self.token_likelihood is None else np.asarray(self.token_likelihood).tolist(),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any], where: str = "POMDP model") -> PomdpModel:
        if content.get("format") != MODEL_FORMAT or content.get("format_version") != MODEL_FORMAT_VERSION:
            raise ValueError(
                f"{where}: format {content.get('format')!r} version {content.get('format_version')!r}; "
                f"this trim reads {MODEL_FORMAT} version {MODEL_FORMAT_VERSION}"
            )
        try:
            obs = content["observation"]
            observation = ObservationModel(
                np.asarray(obs["bin_edges"], dtype=np.float64),
                np.asarray(obs["joint"], dtype=np.float64),
                np.asarray(obs["bandwidth"], dtype=np.float64),
                np.asarray(obs["n_samples"], dtype=np.int64),
                obs.get("source", ""),
            )
            model = cls(
                observation=observation,
                weak_step_accuracy=float(content["weak_step_accuracy"]),
                strong_step_accuracy=float(content["strong_step_accuracy"]),
                weak_hazard=np.asarray(content["weak_hazard"], dtype=np.float64),
                strong_hazard=np.asarray(content["strong_hazard"], dtype=np.float64),
                final_correct_clean=float(content["final_correct_clean"]),
                final_correct_derailed=float(content["final_correct_derailed"]),
                token_edges=np.asarray([float(x) for x in content["token_edges"]], dtype=np.float64),
                token_bin_probability=np.asarray(content["token_bin_probability"], dtype=np.float64),
                rewrite_tokens=np.asarray(content["rewrite_tokens"], dtype=np.float64),
                source=content.get("source", {}),
                token_likelihood=None if content.get("token_likelihood") is None
                else np.asarray(content["token_likelihood"], dtype=np.float64),
            )
        except KeyError as error:
            raise ValueError(f"{where}: missing field {error.args[0]!r}") from None
        model.validate(where)
        return model

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PomdpModel:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; no fitted POMDP model there")
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(content, str(path))


# ----------------------------------------------------------------------------------------------
# Transition fitting from cached trees


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


def fit_model(
    trees: RolloutTrees,
    bin_edges: np.ndarray,
    n_token_bins: int = 8,
    observation_samples: ScoreSamples | None = None,
    floor: float = 1e-4,
    min_at_risk: int = 50,
    source: dict[str, Any] | None = None,
    token_evidence: bool = False,
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
    :param min_at_risk: fewest steps at a depth for its own hazard estimate (later depths are pooled).
    :param source: provenance to record in the model.
    :param token_evidence: also fit ``P(token bin of a weak step | state)``, so that filter and
        planner read a weak step's length as evidence beside its score.
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
