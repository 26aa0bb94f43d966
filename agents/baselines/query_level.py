"""Query-level routers: send the whole query to one model, and the signals they route on.

A query-level router answers a query with the weak model's solution or escalates it to the strong
model's solution (the recorded weak-only and strong-only runs). Accuracy is ``strong_only_correct``
where escalated, else ``weak_only_correct``.

**Cost** (:func:`query_level_cost`, in the cost units of a ``cost=`` model, :mod:`trim_env.cost`):
a router that decides from query inputs before any model runs (classifier, knn) pays one anchor
run per query, :func:`~trim_env.cost.anchor_cost` of strong-only where escalated, else of
weak-only. AutoMix pays the weak-only run and the PRM's check of it for every query (one PRM call
reading the prompt and the whole weak solution, decoding nothing) and the strong-only run where
escalated. Under the default strong tokens the weak and PRM calls are free: an escalated query
costs the strong-only run's tokens, any other nothing.
Every router here is a *confidence* per query that the weak model is right, and escalates when the
confidence is below a threshold τ (τ = 0: never; τ > 1: always):

- **AutoMix-PRM** (``automix-min`` / ``automix-last``): run the weak model first, then check its
  solution with the PRM: the minimum or last step score. Both runs are paid for escalated queries.
- **classifier**: logistic regression on query inputs predicting that the weak model is right.
- **knn**: SW-ranking-style similarity-weighted k nearest neighbours over the same inputs.

The learned routers see inputs of the split they route and labels of their training split only.
The registered policy kinds built on these signals are in :mod:`agents.baselines.query_routers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from trim_env import metrics
from trim_env.cost import CostModel, StrongTokensCost, anchor_cost, prompt_tokens
from trim_env.evaluation import Outcomes, run_thresholds
from trim_env.tree import RolloutTrees

#: Above every confidence in [0, 1]: the threshold at which a router escalates every query.
ALWAYS_ESCALATE = 1.01


def weak_solution_scores(trees: RolloutTrees) -> dict[str, np.ndarray]:
    """Minimum and last PRM step score of each query's weak-only solution (the all-continue path).

    :param trees: the split (a lazy simulator tree is expanded along the weak path).
    :return: ``{"min": ..., "last": ...}``, one score in [0, 1] per query.
    """
    (weak_only,) = run_thresholds(trees, [0.0])  # threshold 0 never regenerates
    final = weak_only.final_node
    return {"min": trees.path_min_prm[final].astype(np.float64), "last": trees.step_prm[final].astype(np.float64)}


def weak_solution_check_cost(cost_model: CostModel, trees: RolloutTrees) -> np.ndarray:
    """Cost units of AutoMix's check of each query's weak solution: one PRM call that reads the
    prompt and the whole weak-only solution and decodes nothing (free under strong tokens)."""
    read = prompt_tokens(cost_model, trees) + trees.weak_only_tokens.astype(np.int64)
    return cost_model.call_cost("prm", read, np.zeros_like(read)) / cost_model.unit


def query_level_cost(cost_model: CostModel, trees: RolloutTrees, escalate: np.ndarray, checks_weak_solution: bool) -> np.ndarray:
    """Cost units of each query under a query-level router (see the module docstring).

    :param cost_model: the cost model.
    :param trees: the split; its weak-only and strong-only records are priced.
    :param escalate: one boolean per query: answered by the strong-only run.
    :param checks_weak_solution: the router runs the weak model and checks its solution with the PRM
        on every query before deciding (AutoMix); ``False``: it decides from query inputs, and a
        query costs exactly one anchor run.
    """
    strong = np.where(escalate, anchor_cost(cost_model, trees, "strong_only"), 0.0)
    weak = anchor_cost(cost_model, trees, "weak_only")
    if checks_weak_solution:
        return weak + weak_solution_check_cost(cost_model, trees) + strong
    return np.where(escalate, strong, weak)


def route_queries(
    trees: RolloutTrees, escalate: np.ndarray, cost_model: CostModel | None = None, checks_weak_solution: bool = False
) -> Outcomes:
    """Outcomes of answering each query with the strong-only run where ``escalate``, else the weak-only run.

    ``escalations`` counts escalated queries (0/1); ``final_node`` is -1 because the strong-only run
    need not be a path of a capped tree; ``cost`` is :func:`query_level_cost`.

    :param trees: the split; its weak-only and strong-only records are used.
    :param escalate: one boolean per query.
    :param cost_model: what ``cost`` is in (default strong tokens).
    :param checks_weak_solution: every query's weak solution is run and checked by the PRM first (AutoMix).
    """
    escalate = np.asarray(escalate, dtype=bool)
    if escalate.shape != (trees.num_queries,):
        raise ValueError(f"escalate has shape {escalate.shape}, expected ({trees.num_queries},) (one per query)")
    cost = query_level_cost(StrongTokensCost() if cost_model is None else cost_model, trees, escalate, checks_weak_solution)
    return Outcomes(
        query=np.arange(trees.num_queries),
        correct=np.where(escalate, trees.strong_only_correct, trees.weak_only_correct).astype(np.int64),
        strong_tokens=np.where(escalate, trees.strong_only_tokens, 0).astype(np.int64),
        escalations=escalate.astype(np.int64),
        cap_overrides=np.zeros(trees.num_queries, dtype=np.int64),
        steps=np.where(escalate, trees.strong_only_steps, trees.weak_only_steps).astype(np.int64),
        final_node=np.full(trees.num_queries, -1, dtype=np.int64),
        cost=cost,
    )


def run_query_level(
    trees: RolloutTrees, confidence: np.ndarray, thresholds: np.ndarray | list[float],
    cost_model: CostModel | None = None, checks_weak_solution: bool = False,
) -> list[Outcomes]:
    """A query-level router for each threshold τ: escalate the queries whose confidence is below τ.

    :param trees: the split.
    :param confidence: per query, the router's confidence in [0, 1] that the weak model is right.
    :param thresholds: thresholds τ >= 0, one frontier point each.
    :param cost_model: what the outcomes' ``cost`` is in (default strong tokens).
    :param checks_weak_solution: the router runs and checks the weak solution of every query (AutoMix).
    """
    confidence = _check_confidence(confidence, trees.num_queries)
    taus = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if taus.size == 0 or not np.isfinite(taus).all() or (taus < 0).any():
        raise ValueError(f"thresholds = {taus.tolist()} must be a non-empty list of finite numbers >= 0")
    return [route_queries(trees, confidence < tau, cost_model, checks_weak_solution) for tau in taus]


def quantile_thresholds(confidence: np.ndarray, count: int) -> np.ndarray:
    """Thresholds that escalate evenly spaced fractions 0, 1/(count−1), …, 1 of the given queries.

    Placing τ at quantiles of the routed queries' confidences (their inputs, never their outcomes)
    spreads a sweep evenly over cost even when the signal is concentrated (weak solutions' minimum
    PRM scores mostly lie below 0.01); each τ is an ordinary fixed-threshold router.

    :param confidence: confidences in [0, 1] of the queries to be routed.
    :param count: number of thresholds (>= 2), including 0 (weak-only) and :data:`ALWAYS_ESCALATE`.
    :return: sorted distinct thresholds.
    """
    confidence = _check_confidence(confidence, None)
    if count < 2:
        raise ValueError(f"count = {count} must be at least 2 (never and always escalate)")
    interior = np.quantile(confidence, np.linspace(0.0, 1.0, count)[1:-1])
    return np.unique(np.concatenate([[0.0], interior, [ALWAYS_ESCALATE]]))


def _check_confidence(confidence: np.ndarray, n_queries: int | None) -> np.ndarray:
    values = np.asarray(confidence, dtype=np.float64)
    if values.ndim != 1 or (n_queries is not None and len(values) != n_queries):
        raise ValueError(f"confidence has shape {values.shape}, expected one value per query ({n_queries})")
    if values.size == 0 or not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError("confidence must be a non-empty array of numbers in [0, 1]")
    return values


def query_features(trees: RolloutTrees) -> np.ndarray:
    """What a query-level router may know before any model runs: the query features and the level.

    :param trees: the split.
    :return: array (queries, n_features + 1).
    """
    return np.column_stack([trees.features, trees.level]).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Learned confidence models


class ConfidenceModel(Protocol):
    """A fitted model mapping query inputs to P(weak model is right)."""

    def confidence(self, inputs: np.ndarray) -> np.ndarray: ...


@dataclass
class _Standardizer:
    """Centres and scales inputs with training statistics (constant columns are left unscaled)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, inputs: np.ndarray) -> _Standardizer:
        scale = inputs.std(axis=0)
        return cls(inputs.mean(axis=0), np.where(scale > 0, scale, 1.0))

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return (inputs - self.mean) / self.scale


@dataclass
class LogisticClassifier:
    """L2-regularised logistic regression on standardised inputs.

    :param standardize: the input scaling fitted on the training inputs.
    :param weights: coefficients, one per input column.
    :param bias: intercept (not penalised).
    """

    standardize: _Standardizer
    weights: np.ndarray
    bias: float

    @classmethod
    def fit(cls, inputs: np.ndarray, labels: np.ndarray, penalty: float) -> LogisticClassifier:
        """Minimise mean log-loss + ``penalty`` / 2 · ||weights||² (L-BFGS).

        :param inputs: training inputs (n, d).
        :param labels: 1 where the weak model was right, else 0.
        :param penalty: L2 strength >= 0.
        """
        standardize = _Standardizer.fit(inputs)
        x = standardize(inputs)
        y = labels.astype(np.float64)

        def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
            logits = x @ theta[:-1] + theta[-1]
            # log(1 + e^z) − y·z, written stably
            loss = np.mean(np.logaddexp(0.0, logits) - y * logits) + 0.5 * penalty * theta[:-1] @ theta[:-1]
            residual = (expit(logits) - y) / len(y)
            gradient = np.append(x.T @ residual + penalty * theta[:-1], residual.sum())
            return float(loss), gradient

        result = minimize(loss_and_gradient, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
        return cls(standardize, result.x[:-1], float(result.x[-1]))

    def confidence(self, inputs: np.ndarray) -> np.ndarray:
        return expit(self.standardize(inputs) @ self.weights + self.bias)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (what a saved router stores)."""
        return {"mean": self.standardize.mean, "scale": self.standardize.scale, "weights": self.weights, "bias": np.array([self.bias])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LogisticClassifier:
        """The classifier whose :meth:`arrays` are ``arrays``."""
        return cls(_Standardizer(arrays["mean"], arrays["scale"]), arrays["weights"], float(arrays["bias"][0]))


@dataclass
class SimilarityKNN:
    """SW-ranking-style k nearest neighbours: a similarity-weighted vote of the closest training queries.

    Similarity is minus the Euclidean distance in standardised input space; neighbour ``i`` weighs
    ``exp(−(d_i − d_nearest) / temperature)`` (RouteLLM's SW ranking weighs battles by
    ``γ^(similarity − max similarity)``, the same form with ``temperature = 1 / ln γ``).

    :param standardize: the input scaling fitted on the training inputs.
    :param train_inputs: standardised training inputs.
    :param train_labels: 1 where the weak model was right on the training query.
    :param neighbours: k.
    :param temperature: distance scale of the weights (> 0).
    """

    standardize: _Standardizer
    train_inputs: np.ndarray
    train_labels: np.ndarray
    neighbours: int
    temperature: float

    @classmethod
    def fit(cls, inputs: np.ndarray, labels: np.ndarray, neighbours: int, temperature: float) -> SimilarityKNN:
        """Store the standardised training set.

        :param inputs: training inputs (n, d).
        :param labels: 1 where the weak model was right, else 0.
        :param neighbours: k >= 1 (capped at the training-set size).
        :param temperature: weight distance scale > 0.
        """
        if neighbours < 1 or not temperature > 0:
            raise ValueError(f"need neighbours >= 1 (got {neighbours}) and temperature > 0 (got {temperature})")
        standardize = _Standardizer.fit(inputs)
        return cls(standardize, standardize(inputs), labels.astype(np.float64), min(neighbours, len(labels)), temperature)

    def confidence(self, inputs: np.ndarray) -> np.ndarray:
        x = self.standardize(inputs)
        squared = (x**2).sum(1)[:, None] - 2 * x @ self.train_inputs.T + (self.train_inputs**2).sum(1)[None, :]
        distance = np.sqrt(np.maximum(squared, 0.0))
        nearest = np.argpartition(distance, self.neighbours - 1, axis=1)[:, : self.neighbours]
        near_distance = np.take_along_axis(distance, nearest, axis=1)
        weights = np.exp(-(near_distance - near_distance.min(axis=1, keepdims=True)) / self.temperature)
        return (weights * self.train_labels[nearest]).sum(1) / weights.sum(1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored training set and settings as named arrays (what a saved router stores)."""
        return {"mean": self.standardize.mean, "scale": self.standardize.scale, "train_inputs": self.train_inputs,
                "train_labels": self.train_labels, "neighbours": np.array([self.neighbours]), "temperature": np.array([self.temperature])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SimilarityKNN:
        """The model whose :meth:`arrays` are ``arrays``."""
        return cls(_Standardizer(arrays["mean"], arrays["scale"]), arrays["train_inputs"], arrays["train_labels"],
                   int(arrays["neighbours"][0]), float(arrays["temperature"][0]))


@dataclass
class Selection:
    """A model refitted on all training data with the setting that scored best on validation.

    :param model: the refitted model.
    :param setting: the chosen hyper-parameters.
    :param validation_auroc: AUROC of each setting's confidence for weak correctness on validation.
    """

    model: ConfidenceModel
    setting: dict[str, float]
    validation_auroc: list[tuple[dict[str, float], float]]


def select_and_fit(
    fit: Callable[..., ConfidenceModel],
    settings: list[dict[str, float]],
    inputs: np.ndarray,
    labels: np.ndarray,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Selection:
    """Choose hyper-parameters on a random validation part of the training data, then refit on all of it.

    :param fit: ``fit(inputs, labels, **setting)`` returning a confidence model.
    :param settings: candidate hyper-parameter settings.
    :param inputs: training inputs (n, d).
    :param labels: 1 where the weak model was right on the training query, else 0.
    :param validation_fraction: share of the training queries held out to compare settings.
    :param seed: seed of the validation split.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    labels = np.asarray(labels)
    if inputs.ndim != 2 or len(inputs) != len(labels) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"need inputs (n, d) and 0/1 labels of the same length; got {inputs.shape} and {labels.shape}")
    if not settings:
        raise ValueError("settings must not be empty")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction = {validation_fraction} must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(labels))
    n_validation = round(validation_fraction * len(labels))
    validation, fitting = order[:n_validation], order[n_validation:]
    if len(np.unique(labels[fitting])) < 2 or len(np.unique(labels[validation])) < 2:
        raise ValueError("both the fitting and the validation part need correct and failed weak solutions")
    scored = [
        (setting, metrics.auroc(fit(inputs[fitting], labels[fitting], **setting).confidence(inputs[validation]), labels[validation]))
        for setting in settings
    ]
    best = max(scored, key=lambda item: item[1])[0]
    return Selection(fit(inputs, labels, **best), best, scored)
