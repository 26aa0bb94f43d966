"""The router plugin shape: decide on observations, fit on a train split, save and load a directory.

Every router kind (TRIM-Thr, TRIM-Agg/Seq, TRIM-POMDP, the step-level baselines, ...) is one
:class:`Router` subclass with:

- ``Settings``: a dataclass, registered as a Hydra structured config (``schema/policy/<Class>``),
  that is the single home of the kind's defaults; ``conf/policy/<name>.yaml`` names the class
  (``router: module:Class``) and sets only what that policy changes;
- :meth:`Router.predict` on a batch of the observations a deployed router sees (``agg`` or ``seq``,
  :mod:`trim_env.features`);
- :meth:`Router.fit` on a :class:`TrainingData` (the train split, its training part and its
  validation part), returning a :class:`Fitted` router and what fitting measured;
- :meth:`Router.save` / :meth:`Router.load` of a self-describing directory (``config.json``:
  format version, kind, settings, λ, cost unit, data identity; see :mod:`agents.export`);
- optionally :meth:`Router.sweep`, the points a kind gives without training (e.g. one per threshold);
- optionally an *operating point* (:meth:`Router.operating_point_parameter`,
  :meth:`Router.set_operating_point`): one parameter that moves a fitted router along its
  cost/accuracy curve without refitting (TRIM-Thr's threshold, TRIM-POMDP's λ, a λ-conditioned
  actor's λ), which evaluation, calibration, live routing and the server use.

Entry points find a kind through :mod:`agents.registry`, never by name in an if/elif ladder.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from trim_env.cost import CostModel, StrongTokensCost
from trim_env.evaluation import DecisionBatch, Outcomes, with_path_cost
from trim_env.tree import RolloutTrees


@dataclass
class RouterSettings:
    """Fields every policy config has; each kind's settings dataclass extends it.

    :param name: the policy name (``policy=<name>``), recorded as ``policy`` in results and exports.
    :param router: ``module:Class`` of the :class:`Router` implementing the policy.
    """

    name: str = "???"
    router: str = "???"

    def check(self) -> RouterSettings:
        """Refuse values the kind cannot use, with errors naming the ``policy.`` key; returns ``self``.

        Entry points call it before loading any data; kinds with constraints override it.
        """
        return self


@dataclass
class TrainingData:
    """What a router is fitted on: a train split, its training part and its validation part.

    :param trees: the train split.
    :param train_queries: query indices of ``trees`` to fit on.
    :param validation: the rest of the train split, as its own trees (choose checkpoints/thresholds here).
    :param lam: cost weight λ (per ``cost_unit_tokens`` strong tokens).
    :param cost_unit_tokens: strong tokens per cost unit (> 0).
    :param seed: seeds everything random in fitting.
    :param dataset_content_hash: the dataset's content hash (manifest), the data's identity.
    :param split: the split ``trees`` is.
    :param progress_bar: show a progress bar while training.
    :param log: called with a dict of metrics and a step count during training (experiment tracker).
    :param run_dir: the run's directory: trainers that checkpoint write ``checkpoints/`` there
        (``None``: no files, e.g. an in-memory fit).
    :param resume_from: a checkpoint to continue from (``resume=PATH``; trainers that checkpoint only).
    :param tensorboard_dir: where a trainer writes its own log as TensorBoard events (``logger=tensorboard``).
    :param cost_model: what a step costs in the reward and the validation objective (``cost=``;
        default strong tokens). Only kinds with ``supports_cost_models`` are fitted under another.
    """

    trees: RolloutTrees
    train_queries: np.ndarray
    validation: RolloutTrees
    lam: float
    cost_unit_tokens: float
    seed: int
    dataset_content_hash: str
    split: str
    progress_bar: bool = False
    log: Callable[[dict[str, float], int], None] | None = None
    run_dir: Path | None = None
    resume_from: Path | None = None
    tensorboard_dir: Path | None = None
    cost_model: CostModel = field(default_factory=StrongTokensCost)

    @property
    def data_key(self) -> str:
        """The data's identity as one string: ``<content hash>/<split>``."""
        return f"{self.dataset_content_hash}/{self.split}"

    def identity(self, settings: RouterSettings) -> dict[str, Any]:
        """The fields every exported router records: policy, λ, cost unit, data and settings, and the
        cost model it was trained under when that is not strong tokens (``cost``: ``to_dict()``;
        routers trained in strong tokens record what they always did)."""
        cost = {} if isinstance(self.cost_model, StrongTokensCost) else {"cost": self.cost_model.to_dict()}
        return {"policy": settings.name, "lambda": self.lam, "cost_unit_tokens": self.cost_unit_tokens,
                "dataset_content_hash": self.dataset_content_hash, "train_split": self.split, "settings": asdict(settings), **cost}


@dataclass
class Fitted:
    """A fitted router and what fitting measured.

    :param router: the router, ready to :meth:`Router.save`.
    :param summary: figures for the results point (``validation_objective``, ``train_wall_time_s``,
        ``env_steps``, and kind-specific ones).
    :param history: per-evaluation training records (written as ``training_history.json``), if any.
    :param operating_points: values of the router's operating point to evaluate it at on the test
        split, one point each (a λ-conditioned policy's λ grid); ``None``: one point, as exported.
    """

    router: Router
    summary: dict[str, Any]
    history: list[dict[str, float]] | None = None
    operating_points: list[float] | None = None


@dataclass
class SweepPoint:
    """One point a kind gives without training: its label, parameter and outcomes on the split.

    :param extra: further fields of the ``results.json`` point (e.g. a query-level router's
        ``weak_tokens_per_query``), added after the summary figures.
    """

    label: str
    parameter: Any
    outcomes: Outcomes
    extra: dict[str, Any] = field(default_factory=dict)


class PolicyKind(Protocol):
    """What the registry maps a policy name to: a :class:`Router` subclass, or a class with the
    same class-level members (e.g. :class:`agents.export.SavedRouter`, which evaluates an
    exported router and trains nothing)."""

    Settings: ClassVar[type[RouterSettings] | None]
    config_groups: ClassVar[dict[str, type]]
    sweep_trains: ClassVar[bool]

    @classmethod
    def fit(cls, settings: Any, data: TrainingData, **groups: Any) -> Fitted: ...

    @classmethod
    def sweep(cls, settings: Any, trees: RolloutTrees, **training: RolloutTrees) -> list[SweepPoint]: ...


class Router(ABC):
    """A step-level routing policy: at each proposed weak step, continue (0) or regenerate (1).

    :param config: the router's self-description (what :meth:`save` writes as ``config.json``;
        what :meth:`load` read), empty for a router built by hand.
    """

    #: The exported ``config.json`` field ``kind`` that loads with this class.
    kind: ClassVar[str] = ""
    #: Which observation the router reads: ``"agg"`` or ``"seq"``.
    observation_kind: ClassVar[str] = "agg"
    #: The settings dataclass of the kind (its structured config); ``None``: not configurable.
    Settings: ClassVar[type[RouterSettings] | None] = None
    #: Further config groups :meth:`fit` reads (group name -> settings dataclass, e.g. ``ppo``);
    #: the entry point passes each as a keyword argument of that name.
    config_groups: ClassVar[dict[str, type]] = {}
    #: :meth:`sweep` first learns on a training split, which entry points pass as ``training=``
    #: (the learned query-level baselines); ``False``: the sweep reads only the routed split.
    sweep_trains: ClassVar[bool] = False
    #: Whether the kind is fitted and evaluated under any ``cost=`` model (:mod:`trim_env.cost`);
    #: ``False``: strong tokens only (its planning or its points are not priced yet, issue #14).
    supports_cost_models: ClassVar[bool] = False
    #: :meth:`sweep` takes ``cost_model=`` and returns outcomes already costed in it (a kind that
    #: plans with the cost, or whose outcomes are not paths of the tree); ``False``: its episodes
    #: are priced by the paths they took (:func:`sweep_points`).
    sweep_prices: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})

    @abstractmethod
    def predict(self, observations: np.ndarray) -> np.ndarray:
        """Actions (1 = regenerate) for a batch of observations of :attr:`observation_kind`."""

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        """Actions for a batch of decisions from the batch evaluator."""
        observations = batch.agg() if self.observation_kind == "agg" else batch.seq()
        return self.predict(observations)

    def act(self, observation: np.ndarray) -> int:
        """Action for one environment observation."""
        return int(self.predict(observation[None])[0])

    # -- operating point --------------------------------------------------------------------------

    def operating_point_parameter(self) -> str | None:
        """``"threshold"`` or ``"lambda"``: what :meth:`set_operating_point` sets; ``None``: the router has no operating point."""
        return None

    def operating_point_range(self) -> tuple[float, float] | None:
        """The values :meth:`set_operating_point` accepts, if they are bounded (e.g. the λ range a policy was trained for)."""
        return None

    def set_operating_point(self, value: float) -> None:
        """Move this router to operating point ``value`` of :meth:`operating_point_parameter`.

        :raises ValueError: the router has no operating point, or ``value`` is outside its range.
        """
        raise ValueError(f"a {type(self).__name__} (kind {self.kind!r}) has no operating point: it was fitted for one setting")

    def at_operating_point(self, value: float) -> Router:
        """A copy of this router at operating point ``value`` (this one is unchanged)."""
        router = copy.copy(self)
        router.config = dict(self.config)
        router.set_operating_point(value)
        return router

    # -- plugin lifecycle -------------------------------------------------------------------------

    @classmethod
    def fit(cls, settings: Any, data: TrainingData, **groups: Any) -> Fitted:
        """Fit a router of this kind on ``data`` with ``settings`` (an instance of :attr:`Settings`)
        and the :attr:`config_groups` settings as keyword arguments."""
        raise ValueError(f"policy {getattr(settings, 'name', cls.__name__)!r} cannot be trained")

    @classmethod
    def sweep(cls, settings: Any, trees: RolloutTrees) -> list[SweepPoint]:
        """The points this kind gives on ``trees`` without training (e.g. one per threshold)."""
        raise ValueError(
            f"policy {getattr(settings, 'name', cls.__name__)!r} has no untrained sweep: train it (trim-train) and evaluate "
            "the exported router with policy=router policy.path=OUT/router"
        )

    def save(self, directory: str | Path) -> Path:
        """Write the router to ``directory``: ``config.json`` (:attr:`config`) plus the kind's own files."""
        from agents.export import write_router  # noqa: PLC0415  (agents.export imports this module)

        return write_router(directory, self.config)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> Router:
        """The router saved in ``directory``, whose checked ``config.json`` is ``config``."""
        raise ValueError(f"{directory}: {cls.__name__} routers are not saved to directories (config.json kind {config.get('kind')!r})")


def check_cost_support(kind: type, name: str, cost_model: CostModel) -> None:
    """Refuse a policy kind that is not wired for ``cost_model`` (any model but strong tokens), naming ``cost``.

    :param kind: the policy's class from the registry (a kind without ``supports_cost_models`` supports strong tokens only).
    :param name: the policy's name, for the message.
    """
    if isinstance(cost_model, StrongTokensCost) or getattr(kind, "supports_cost_models", False):
        return
    raise ValueError(
        f"cost = {cost_model.name!r}: cost models other than strong_tokens are not supported by policy {name!r} "
        "(its class does not set supports_cost_models: its planning cost or its points would be in strong tokens); use cost=strong_tokens, "
        "or a policy kind that sets supports_cost_models (every built-in kind does)"
    )


def sweep_points(kind: type[PolicyKind], settings: Any, trees: RolloutTrees, cost_model: CostModel,
                 **training: RolloutTrees) -> list[SweepPoint]:
    """``kind``'s sweep on ``trees`` with every point's ``outcomes.cost`` in ``cost_model``'s cost units.

    A kind with ``sweep_prices`` is given ``cost_model`` and costs its own outcomes (the oracle plans
    with it; a query-level router's escalated queries are the strong-only run, not a path of the
    tree); the others' step-level episodes cost :func:`~trim_env.cost.path_cost` of their final
    nodes (:func:`~trim_env.evaluation.with_path_cost`; unchanged under strong tokens).

    :param training: the learning split of a kind that learns first (``sweep_trains``).
    """
    if getattr(kind, "sweep_prices", False):
        return kind.sweep(settings, trees, cost_model=cost_model, **training)  # type: ignore[arg-type]  # a sweep_prices kind takes it
    return [replace(point, outcomes=with_path_cost(trees, point.outcomes, cost_model))
            for point in kind.sweep(settings, trees, **training)]
