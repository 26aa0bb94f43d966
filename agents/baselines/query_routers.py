"""Query-level router kinds: AutoMix-PRM (``automix-min`` / ``automix-last``), ``classifier`` and ``knn``.

Each kind is a confidence per query that the weak model is right (:mod:`agents.baselines.query_level`)
and a threshold τ: it escalates the whole query to the strong-only run when the confidence is
below τ. They are not step-level :class:`~agents.base.Router` s (an escalated query is answered
by the recorded strong-only run, which need not be a path of the tree), but they have the same
plugin shape: a settings dataclass, :meth:`QueryLevelRouter.sweep` (one point per τ, placed at
quantiles of the routed queries' confidences), :meth:`QueryLevelRouter.fit` (τ chosen on a
validation part for λ) and ``save`` / ``load`` of a self-describing directory.

AutoMix reads the weak solution's PRM scores (the weak run is paid for every query); the learned
kinds read only query inputs and learn on a training split that entry points pass to ``sweep``
(``sweep_trains``), never on the routed split's outcomes.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file

from agents.base import Fitted, RouterSettings, SweepPoint, TrainingData
from agents.baselines.query_level import (
    LogisticClassifier,
    SimilarityKNN,
    quantile_thresholds,
    query_features,
    route_queries,
    run_query_level,
    select_and_fit,
    weak_solution_scores,
)
from agents.export import WEIGHTS_FILE, read_router_config, write_router
from agents.registry import registry
from trim_env.cost import CostModel
from trim_env.evaluation import Outcomes, validation_objective
from trim_env.tree import RolloutTrees

#: What a learned kind predicts per training query (see :func:`weak_is_good_enough`).
LABELS = ("weak_correct", "strong_does_not_win")


def weak_is_good_enough(trees: RolloutTrees, label: str) -> np.ndarray:
    """The 0/1 label a learned query-level router predicts, per query of a training split.

    ``weak_correct``: the weak-only run is right (the classifier's target). ``strong_does_not_win``:
    not (strong-only right and weak-only wrong), the complement of the pairwise battle outcome
    that SW ranking estimates.

    :param trees: a training split.
    :param label: one of :data:`LABELS`.
    """
    if label == "weak_correct":
        return trees.weak_only_correct.astype(np.int64)
    if label == "strong_does_not_win":
        return 1 - ((trees.strong_only_correct == 1) & (trees.weak_only_correct == 0)).astype(np.int64)
    raise ValueError(f"unknown label {label!r}; known: {', '.join(LABELS)}")


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass
class QueryLevelSettings(RouterSettings):
    """What every query-level kind has.

    :param n_thresholds: thresholds τ per sweep (>= 2), at quantiles of the routed queries'
        confidences so that escalation rates run evenly from 0 to 100 %.
    """

    n_thresholds: int = 21

    def check(self) -> QueryLevelSettings:
        if self.n_thresholds < 2:
            raise ValueError(f"policy.n_thresholds = {self.n_thresholds} must be at least 2 (never and always escalate)")
        return self


@dataclass
class AutoMixSettings(QueryLevelSettings):
    """AutoMix-PRM (``policy=automix-min`` / ``automix-last``): run the weak model, check its solution with the PRM.

    :param score: which score of the weak solution is the confidence: ``min`` (its lowest step
        score) or ``last`` (its last step's score).
    """

    score: str = "min"

    def check(self) -> AutoMixSettings:
        super().check()
        if self.score not in ("min", "last"):
            raise ValueError(f"policy.score = {self.score!r} must be min or last")
        return self


@dataclass
class LearnedQuerySettings(QueryLevelSettings):
    """A confidence model learned on query inputs, hyper-parameters chosen by validation AUROC.

    :param label: what the model predicts per training query (:func:`weak_is_good_enough`).
    :param validation_fraction: share of the training split held out to compare hyper-parameters.
    :param seed: seed of that validation part.
    """

    label: str = "weak_correct"
    validation_fraction: float = 0.2
    seed: int = 0

    def check(self) -> LearnedQuerySettings:
        super().check()
        if self.label not in LABELS:
            raise ValueError(f"policy.label = {self.label!r} must be one of {list(LABELS)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"policy.validation_fraction = {self.validation_fraction} must be in (0, 1)")
        if self.seed < 0:
            raise ValueError(f"policy.seed = {self.seed} must be >= 0")
        return self


@dataclass
class ClassifierSettings(LearnedQuerySettings):
    """Logistic regression predicting that the weak model is right (``policy=classifier``).

    :param penalties: candidate L2 strengths (>= 0).
    """

    penalties: list[float] = field(default_factory=lambda: [0.0, 0.001, 0.01, 0.1, 1.0])

    def check(self) -> ClassifierSettings:
        super().check()
        if not self.penalties or any(not p >= 0 for p in self.penalties):
            raise ValueError(f"policy.penalties = {self.penalties} must be a non-empty list of numbers >= 0")
        return self


@dataclass
class KNNSettings(LearnedQuerySettings):
    """SW-ranking style similarity-weighted vote on whether the strong model beats the weak one (``policy=knn``).

    :param neighbours: candidate k (>= 1).
    :param temperatures: candidate distance scales of the vote weights (> 0).
    """

    label: str = "strong_does_not_win"
    neighbours: list[int] = field(default_factory=lambda: [10, 25, 50, 100, 200])
    temperatures: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0])

    def check(self) -> KNNSettings:
        super().check()
        if not self.neighbours or any(k < 1 for k in self.neighbours):
            raise ValueError(f"policy.neighbours = {self.neighbours} must be a non-empty list of integers >= 1")
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise ValueError(f"policy.temperatures = {self.temperatures} must be a non-empty list of numbers > 0")
        return self


# ----------------------------------------------------------------------------------------------
# Routers


class QueryLevelRouter(ABC):
    """Escalate a query to the strong model iff its confidence that the weak model is right is below ``threshold``.

    :param threshold: τ >= 0 (0: never escalate; :data:`~agents.baselines.query_level.ALWAYS_ESCALATE`: always).
    :param config: the router's self-description (what :meth:`save` writes as ``config.json``).
    """

    #: The exported ``config.json`` field ``kind``.
    kind: ClassVar[str] = ""
    Settings: ClassVar[type[RouterSettings] | None] = None
    config_groups: ClassVar[dict[str, type]] = {}
    sweep_trains: ClassVar[bool] = False
    #: Priced under any ``cost=`` model (:func:`~agents.baselines.query_level.query_level_cost`)...
    supports_cost_models: ClassVar[bool] = True
    #: ...by its own sweep: an escalated query is answered by the strong-only run, not a path of the tree.
    sweep_prices: ClassVar[bool] = True
    #: The weak run, and the PRM's check of its solution, are paid for every query (the router
    #: reads the weak solution before deciding); otherwise the weak run only where the query is not escalated.
    pays_weak_run: ClassVar[bool] = False

    def __init__(self, threshold: float = 0.0, config: dict[str, Any] | None = None) -> None:
        if not (np.isfinite(threshold) and threshold >= 0):
            raise ValueError(f"threshold = {threshold!r} must be a finite number >= 0")
        self.threshold = float(threshold)
        self.config: dict[str, Any] = dict(config or {})

    @abstractmethod
    def confidence(self, trees: RolloutTrees) -> np.ndarray:
        """Per query of ``trees``, the confidence in [0, 1] that the weak model is right."""

    @classmethod
    @abstractmethod
    def learn(cls, settings: Any, training: RolloutTrees | None) -> QueryLevelRouter:
        """The kind's router for ``settings`` (threshold 0), learned on ``training`` where the kind learns."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted parameters :meth:`save` stores beside ``config.json`` (none by default)."""
        return {}

    def escalate(self, trees: RolloutTrees) -> np.ndarray:
        """The router's decisions: one boolean per query of ``trees``, True = answer with the strong model."""
        return self.confidence(trees) < self.threshold

    def route(self, trees: RolloutTrees, cost_model: CostModel | None = None) -> Outcomes:
        """Outcomes of routing every query of ``trees``, costed in ``cost_model`` (default strong tokens)."""
        return route_queries(trees, self.escalate(trees), cost_model, self.pays_weak_run)

    def at(self, threshold: float, config: dict[str, Any]) -> QueryLevelRouter:
        """The same confidence with threshold τ = ``threshold`` and self-description ``config``."""
        router = copy.copy(self)
        QueryLevelRouter.__init__(router, threshold, config)
        return router

    @classmethod
    def weak_tokens_per_query(cls, trees: RolloutTrees, outcomes: Outcomes) -> float:
        """Mean weak tokens paid per query: every weak run for AutoMix, else the non-escalated ones."""
        escalated = outcomes.escalations.astype(bool)
        weak_paid = np.ones_like(escalated) if cls.pays_weak_run else ~escalated
        return float(np.mean(trees.weak_only_tokens * weak_paid))

    # -- plugin lifecycle -------------------------------------------------------------------------

    @classmethod
    def sweep(
        cls, settings: Any, trees: RolloutTrees, training: RolloutTrees | None = None, cost_model: CostModel | None = None
    ) -> list[SweepPoint]:
        """One point per τ at quantiles of the confidences on ``trees`` (learned on ``training`` first),
        costed in ``cost_model`` (default strong tokens)."""
        settings.check()
        confidence = cls.learn(settings, training).confidence(trees)
        thresholds = quantile_thresholds(confidence, settings.n_thresholds)
        return [
            SweepPoint(settings.name, float(tau), outcomes, {"weak_tokens_per_query": cls.weak_tokens_per_query(trees, outcomes)})
            for tau, outcomes in zip(thresholds, run_query_level(trees, confidence, thresholds, cost_model, cls.pays_weak_run))
        ]

    @classmethod
    def fit(cls, settings: Any, data: TrainingData, **groups: Any) -> Fitted:
        """Learn on the training part of ``data``, then choose τ with the best return (accuracy − λ · cost, in
        ``data.cost_model``) on its validation part."""
        settings.check()
        learned = cls.learn(settings, data.trees.subset(data.train_queries) if cls.sweep_trains else None)
        confidence = learned.confidence(data.validation)
        thresholds = quantile_thresholds(confidence, settings.n_thresholds)
        scores = [
            validation_objective(o.correct, o.cost, data.lam, data.cost_unit_tokens)
            for o in run_query_level(data.validation, confidence, thresholds, data.cost_model, cls.pays_weak_run)
        ]
        best = int(np.argmax(scores))
        threshold = float(thresholds[best])
        config = {**data.identity(settings), "kind": cls.kind, "threshold": threshold, **learned.config}
        summary = {"threshold": threshold, "validation_objective": scores[best], "train_wall_time_s": 0.0, "env_steps": 0}
        return Fitted(learned.at(threshold, config), summary)  # type: ignore[arg-type]

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` (kind, threshold, the kind's settings) and the fitted arrays (``model.safetensors``)."""
        arrays = self.arrays()
        weights = {name: torch.from_numpy(np.ascontiguousarray(values)) for name, values in arrays.items()} if arrays else None
        return write_router(directory, {**self.config, "kind": self.kind, "threshold": self.threshold}, weights)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> QueryLevelRouter:
        """The router saved in ``directory`` whose checked ``config.json`` is ``config``."""
        if config.get("kind") != cls.kind:
            raise ValueError(f"{directory / 'config.json'}: field kind = {config.get('kind')!r}, expected {cls.kind!r}")
        try:
            threshold = float(config["threshold"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{directory / 'config.json'}: field threshold: {error!r}") from None
        weights = directory / WEIGHTS_FILE
        arrays = {name: tensor.numpy() for name, tensor in load_file(str(weights)).items()} if weights.exists() else {}
        try:
            return cls._restore(config, arrays).at(threshold, config)
        except KeyError as error:
            raise ValueError(f"{weights}: tensor {error} is missing; the directory is not a saved {cls.kind} router") from None

    @classmethod
    @abstractmethod
    def _restore(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> QueryLevelRouter:
        """The router (threshold 0) from its saved ``config`` and :meth:`arrays`."""


def load_query_router(path: str | Path) -> QueryLevelRouter:
    """Load a saved query-level router: the registered kind named by its ``config.json`` field ``kind``."""
    directory = Path(path)
    config = read_router_config(directory)
    for name in registry().names:
        found = registry().policy(name)
        if isinstance(found, type) and issubclass(found, QueryLevelRouter) and found.kind == config.get("kind"):
            return found.load(directory, config)
    raise ValueError(f"{directory / 'config.json'}: field kind = {config.get('kind')!r} is no registered query-level router")


class AutoMixRouter(QueryLevelRouter):
    """AutoMix-PRM: the weak solution's minimum or last PRM step score is the confidence.

    :param score: ``min`` or ``last``.
    """

    kind = "automix"
    Settings = AutoMixSettings
    pays_weak_run = True

    def __init__(self, score: str = "min", threshold: float = 0.0, config: dict[str, Any] | None = None) -> None:
        super().__init__(threshold, config)
        if score not in ("min", "last"):
            raise ValueError(f"score = {score!r} must be min or last")
        self.score = score
        self.config.setdefault("score", score)

    def confidence(self, trees: RolloutTrees) -> np.ndarray:
        return weak_solution_scores(trees)[self.score]

    @classmethod
    def learn(cls, settings: AutoMixSettings, training: RolloutTrees | None) -> AutoMixRouter:
        return cls(settings.score)

    @classmethod
    def _restore(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> AutoMixRouter:
        return cls(str(config.get("score")))


class LearnedQueryRouter(QueryLevelRouter):
    """A query-level router whose confidence is a model learned on the query features and level.

    :param model: the fitted confidence model (:attr:`model_type`).
    """

    sweep_trains = True
    #: The confidence model: ``fit(inputs, labels, **candidate)``, ``confidence``, ``arrays``, ``from_arrays``.
    model_type: ClassVar[Any]

    def __init__(self, model: Any, threshold: float = 0.0, config: dict[str, Any] | None = None) -> None:
        super().__init__(threshold, config)
        self.model = model

    @classmethod
    @abstractmethod
    def candidates(cls, settings: Any) -> list[dict[str, float]]:
        """The hyper-parameter settings compared on validation."""

    def confidence(self, trees: RolloutTrees) -> np.ndarray:
        return self.model.confidence(query_features(trees))

    def arrays(self) -> dict[str, np.ndarray]:
        return self.model.arrays()

    @classmethod
    def learn(cls, settings: LearnedQuerySettings, training: RolloutTrees | None) -> LearnedQueryRouter:
        """Choose the hyper-parameters by validation AUROC on ``training``, refit on all of it."""
        training = _required(settings, training)
        labels = weak_is_good_enough(training, settings.label)
        selection = select_and_fit(cls.model_type.fit, cls.candidates(settings), query_features(training), labels,
                                   settings.validation_fraction, settings.seed)
        return cls(selection.model, config={"selected": selection.setting})

    @classmethod
    def _restore(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> LearnedQueryRouter:
        return cls(cls.model_type.from_arrays(arrays))


class ClassifierRouter(LearnedQueryRouter):
    """Logistic regression on the query features and level, predicting that the weak model is right."""

    kind = "query_classifier"
    Settings = ClassifierSettings
    model_type = LogisticClassifier

    @classmethod
    def candidates(cls, settings: ClassifierSettings) -> list[dict[str, float]]:
        """Each L2 penalty."""
        return [{"penalty": float(p)} for p in settings.penalties]


class KNNRouter(LearnedQueryRouter):
    """SW-ranking-style similarity-weighted k nearest neighbours over the query features and level."""

    kind = "query_knn"
    Settings = KNNSettings
    model_type = SimilarityKNN

    @classmethod
    def candidates(cls, settings: KNNSettings) -> list[dict[str, float]]:
        """Each (k, temperature) pair."""
        return [{"neighbours": int(k), "temperature": float(t)} for k in settings.neighbours for t in settings.temperatures]


def _required(settings: RouterSettings, training: RolloutTrees | None) -> RolloutTrees:
    if training is None:
        raise ValueError(f"policy {settings.name!r} learns on a training split: pass training= (the entry points pass data.train_split)")
    return training

