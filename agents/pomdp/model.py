"""The fitted TRIM-POMDP's parameters: hidden states, score bins, observation model and transition tables, checked and saved as JSON.

The POMDP's hidden state is that of the prefix *plus the weak model's proposed step*, with the
codes of :mod:`trim_env.tree`: ``S0`` = 0 (all correct), ``S1`` = 1 (an earlier step was wrong:
irrecoverable), ``S2`` = 2 (only the proposed step is wrong: a strong rewrite can fix it).

- :class:`ObservationModel`: ``P(min PRM score of the earlier steps, PRM score of the current
  step | state)`` on score bins (:func:`uniform_bin_edges`, :func:`score_bin`), with its own row
  for the first step of a solution, which has no earlier step;
- :class:`PomdpModel`: the observation model plus the weak and strong step accuracies ``p_w`` and
  ``p_s``, the termination hazards, the final-answer accuracies and the step-length (token) bins
  with the predicted cost of a rewrite in each. :meth:`PomdpModel.validate` checks every range,
  shape and normalisation; :meth:`PomdpModel.save` / :meth:`PomdpModel.load` write and read the
  versioned JSON format (one fitted model serves every λ).

**Cost of a rewrite.** In strong tokens (``cost=strong_tokens``) a rewrite costs the strong
tokens it decodes: ``rewrite_tokens``. Under another cost model (:mod:`trim_env.cost`) the model
also carries ``rewrite_cost`` (cost units per step and token bin) and the cost model's settings
(``cost_model``); :attr:`PomdpModel.regeneration_cost` is what the solver charges either way. A
model fitted in strong tokens has neither field, and its file is what it always was.

Fitting lives in :mod:`agents.pomdp.observation` (the observation model) and
:mod:`agents.pomdp.fit` (the whole model from cached trees).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trim_env import atomic
from trim_env.cost import CostModelError, cost_model_from_dict

STATE_NAMES: tuple[str, ...] = ("S0", "S1", "S2")  # index = hidden-state code
N_STATES = 3
MODEL_FORMAT = "trim-pomdp-model"
MODEL_FORMAT_VERSION = 1
#: Tolerance on "sums to one" checks of stored probability tables.
SUM_TOLERANCE = 1e-6


class PomdpFitError(ValueError):
    """The data cannot give a POMDP model (empty, unlabelled, inconsistent); the message says where."""


def uniform_bin_edges(n_bins: int) -> np.ndarray:
    """``n_bins`` equal-width score bins on [0, 1]."""
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 2:
        raise ValueError(f"bins = {n_bins!r} must be an integer >= 2")
    return np.linspace(0.0, 1.0, int(n_bins) + 1)


def score_bin(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each score (the last bin includes 1.0)."""
    return np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)


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
        """Number of score bins per axis."""
        return len(self.bin_edges) - 1

    @property
    def first_row(self) -> int:
        """Row of ``joint`` that holds first steps (no earlier step)."""
        return self.n_bins

    def validate(self, where: str = "observation model") -> None:
        """Check edges, shape, normalisation and positivity; raises ``ValueError`` naming ``where`` and the field."""
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
    #: Mean extra cost (cost units) of regenerating rather than continuing, shape (horizon, token
    #: bins): row t - 1 at step t, under the cost model ``cost_model`` (its ``to_dict()``); both
    #: ``None``: strong tokens, where that cost is ``rewrite_tokens`` whatever the step.
    rewrite_cost: np.ndarray | None = None
    cost_model: dict[str, Any] | None = None

    @property
    def regeneration_cost(self) -> np.ndarray:
        """What the solver charges for regenerating a proposal of each token bin: under a cost model
        ``rewrite_cost`` (cost units, shape (horizon, bins)), else the rewrite's strong tokens
        ``rewrite_tokens`` (shape (bins,), the same at every step)."""
        return np.asarray(self.rewrite_tokens if self.rewrite_cost is None else self.rewrite_cost, dtype=np.float64)

    @property
    def horizon(self) -> int:
        """Number of steps planned for (the step cap of a solution)."""
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
        if (self.rewrite_cost is None) != (self.cost_model is None):
            raise ValueError(f"{where}: fields 'rewrite_cost' and 'cost_model' come together (both absent: strong tokens)")
        if self.cost_model is not None:
            try:
                cost_model_from_dict(self.cost_model)
            except (CostModelError, TypeError, AttributeError) as error:
                raise ValueError(f"{where}: field 'cost_model' = {self.cost_model!r} is not a cost model's settings ({error})") from None
        if self.rewrite_cost is not None:
            cost = np.asarray(self.rewrite_cost)
            if cost.shape != (self.horizon, k) or not np.isfinite(cost).all() or (cost < 0).any():
                raise ValueError(f"{where}: field 'rewrite_cost' (shape {cost.shape}) must hold costs >= 0 (cost units), "
                                 f"one per step and token bin: shape ({self.horizon}, {k})")
        if self.token_likelihood is not None:
            if np.shape(self.token_likelihood) != (N_STATES, k):
                raise ValueError(f"{where}: field 'token_likelihood' must have shape ({N_STATES}, {k}) (states x token bins)")
            _check_distribution(np.asarray(self.token_likelihood), f"{where}: field 'token_likelihood'", STATE_NAMES)

    def token_bin(self, tokens: np.ndarray) -> np.ndarray:
        """Token bin of weak proposals of ``tokens`` tokens."""
        return np.searchsorted(self.token_edges, tokens, side="right") - 1

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready content, with format name and version (``inf`` token edge as a string)."""
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
            # Only under a cost model other than strong tokens: strong-token model files stay as they were.
            **({} if self.rewrite_cost is None else {"rewrite_cost": np.asarray(self.rewrite_cost).tolist(), "cost_model": self.cost_model}),
        }

    @classmethod
    def from_dict(cls, content: dict[str, Any], where: str = "POMDP model") -> PomdpModel:
        """The model in ``content`` (as written by :meth:`to_dict`), validated; errors name ``where`` and the field."""
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
                rewrite_cost=None if content.get("rewrite_cost") is None else np.asarray(content["rewrite_cost"], dtype=np.float64),
                cost_model=content.get("cost_model"),
            )
        except KeyError as error:
            raise ValueError(f"{where}: missing field {error.args[0]!r}") from None
        model.validate(where)
        return model

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (atomically)."""
        return atomic.write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PomdpModel:
        """Read and validate a model written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; no fitted POMDP model there")
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        return cls.from_dict(content, str(path))
