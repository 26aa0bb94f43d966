"""All baselines of a split as ``results.json`` points: fit the learned ones on a training split, then sweep.

Settings come from ``conf/baselines.yaml`` (see there for each field); :func:`fit_query_routers`
sees training data only, :func:`baseline_points` routes the evaluated split with what was fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.baselines.oracle import lambda_grid, run_oracle
from agents.baselines.query_level import (
    LogisticClassifier,
    Selection,
    SimilarityKNN,
    quantile_thresholds,
    query_features,
    run_query_level,
    select_and_fit,
    weak_solution_scores,
)
from agents.baselines.random_routing import run_random
from trim_env.evaluation import make_point, reference
from trim_env.tree import RolloutTrees

METHODS = ("random", "automix-min", "automix-last", "classifier", "knn", "oracle")
#: Query-level routers whose weak run is always paid (they read the weak solution before deciding).
_RUN_WEAK_FIRST = ("automix-min", "automix-last")


def check_methods(methods: list[str]) -> list[str]:
    """The configured methods, rejecting unknown names."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(METHODS)}")
    return list(methods)


def weak_is_good_enough(trees: RolloutTrees, label: str) -> np.ndarray:
    """The 0/1 label a learned query-level router predicts, per query of a training split.

    ``weak_correct``: the weak-only run is right (the classifier's target). ``strong_does_not_win``:
    not (strong-only right and weak-only wrong), the complement of the pairwise battle outcome
    that SW ranking estimates.

    :param trees: a training split.
    :param label: ``"weak_correct"`` or ``"strong_does_not_win"``.
    """
    if label == "weak_correct":
        return trees.weak_only_correct.astype(np.int64)
    if label == "strong_does_not_win":
        return 1 - ((trees.strong_only_correct == 1) & (trees.weak_only_correct == 0)).astype(np.int64)
    raise ValueError(f"unknown label {label!r}; known: weak_correct, strong_does_not_win")


@dataclass
class QueryRouters:
    """The learned query-level routers, fitted on a training split (``None`` where not requested)."""

    classifier: Selection | None
    knn: Selection | None


def fit_query_routers(train: RolloutTrees, cfg: Any) -> QueryRouters:
    """Fit the classifier and the kNN router on ``train`` (hyper-parameters chosen on a validation part).

    :param train: the training split (only its query features, levels and anchor outcomes are read).
    :param cfg: the baselines config (``methods``, ``classifier``, ``knn``, ``validation_fraction``, ``seed``).
    """
    methods = check_methods(list(cfg.methods))
    inputs = query_features(train)
    validation_fraction, seed = float(cfg.validation_fraction), int(cfg.seed)
    classifier = knn = None
    if "classifier" in methods:
        settings = [{"penalty": float(p)} for p in cfg.classifier.penalties]
        labels = weak_is_good_enough(train, cfg.classifier.label)
        classifier = select_and_fit(LogisticClassifier.fit, settings, inputs, labels, validation_fraction, seed)
    if "knn" in methods:
        settings = [{"neighbours": int(k), "temperature": float(t)} for k in cfg.knn.neighbours for t in cfg.knn.temperatures]
        labels = weak_is_good_enough(train, cfg.knn.label)
        knn = select_and_fit(SimilarityKNN.fit, settings, inputs, labels, validation_fraction, seed)
    return QueryRouters(classifier, knn)


def baseline_points(trees: RolloutTrees, routers: QueryRouters, cfg: Any) -> list[dict[str, Any]]:
    """Frontier points of every configured baseline on ``trees`` (anchors not included).

    Query-level points also carry ``weak_tokens_per_query``: AutoMix pays the weak run of every
    query; the classifier and kNN decide before any run and pay it only where they do not escalate.

    :param trees: the evaluated split.
    :param routers: learned query-level routers from :func:`fit_query_routers`.
    :param cfg: the baselines config.
    """
    methods = check_methods(list(cfg.methods))
    anchors = reference(trees)
    points: list[dict[str, Any]] = []
    if "random" in methods:
        probabilities = [float(p) for p in cfg.random.probabilities]
        for probability, outcomes in zip(probabilities, run_random(trees, probabilities, int(cfg.random.seed))):
            points.append(make_point("random", probability, outcomes, anchors))

    confidences: dict[str, np.ndarray] = {}
    if any(name in methods for name in _RUN_WEAK_FIRST):
        scores = weak_solution_scores(trees)
        confidences.update({f"automix-{kind}": scores[kind] for kind in ("min", "last") if f"automix-{kind}" in methods})
    inputs = query_features(trees)
    for name, selection in (("classifier", routers.classifier), ("knn", routers.knn)):
        if name in methods:
            if selection is None:
                raise ValueError(f"{name} is configured but was not fitted; call fit_query_routers with the same config")
            confidences[name] = selection.model.confidence(inputs)
    for name, confidence in confidences.items():
        thresholds = quantile_thresholds(confidence, int(cfg.n_thresholds))
        for tau, outcomes in zip(thresholds, run_query_level(trees, confidence, thresholds)):
            point = make_point(name, float(tau), outcomes, anchors)
            escalated = outcomes.escalations.astype(bool)
            weak_paid = np.ones_like(escalated) if name in _RUN_WEAK_FIRST else ~escalated
            point["weak_tokens_per_query"] = float(np.mean(trees.weak_only_tokens * weak_paid))
            points.append(point)

    if "oracle" in methods:
        oracle = cfg.oracle
        lambdas = lambda_grid(float(oracle.lambda_min), float(oracle.lambda_max), int(oracle.n_lambdas))
        cap = None if oracle.max_strong_steps is None else int(oracle.max_strong_steps)
        for lam, outcomes in zip(lambdas, run_oracle(trees, lambdas, float(oracle.cost_unit_tokens), cap)):
            points.append(make_point("oracle", float(lam), outcomes, anchors))
    return points

