"""Hindsight oracle: the best step-level routing on each cached tree for a cost weight λ.

With every outcome in the tree known, the best return from a node is a Bellman recursion::

    V(terminal) = correct
    V(node)     = max(V(weak_child), −λ · tokens(strong_child) / cost_unit + V(strong_child))

(only ``V(weak_child)`` where the node has no strong child: past the cap the weak model plays on).
Its policy maximises ``correct − λ · strong tokens / cost_unit`` per query, so for every λ no
router playing the same tree earns more; sweeping λ traces the upper bound of the frontier. The
oracle looks at outcomes: it is a reference, not a router.

Trees that grow have no end, so the oracle solves them up to a cap: with ``max_strong_steps = K``
every path holding fewer than K strong steps may regenerate (:meth:`GrowingTrees.grow_complete`
grows all of them first). It is then the upper bound for routers that regenerate at most K steps
per query; an uncapped router could in principle beat it on a query that needs more.

``policy=oracle`` (:class:`HindsightOracle`, ``conf/policy/oracle.yaml``) sweeps λ through the
registry like every other kind; there is nothing to fit, save or deploy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agents.base import Fitted, RouterSettings, SweepPoint, TrainingData
from trim_env.env import DEFAULT_COST_UNIT_TOKENS
from trim_env.evaluation import DecisionBatch, Outcomes, run_grid
from trim_env.tree import RolloutTrees

#: λ values solved together in one pass; bounds memory to nodes × chunk float64 values.
_LAMBDA_CHUNK = 8


def reachable_nodes(trees: RolloutTrees, max_strong_steps: int | None) -> np.ndarray:
    """Nodes reachable from the roots when regenerating only below ``max_strong_steps`` strong steps.

    :raises ValueError: a reachable non-terminal node has no weak child (incomplete trees).
    """
    reachable = np.zeros(trees.num_nodes, dtype=bool)
    frontier = np.asarray(trees.root, dtype=np.int64)
    while frontier.size:
        reachable[frontier] = True
        frontier = frontier[~trees.terminal[frontier]]
        weak = trees.weak_child[frontier]
        if (weak < 0).any():
            raise ValueError(
                "the hindsight oracle needs complete trees: a reachable node has no weak child; grow them first "
                "(trees.grow_complete(K)) or use cached trees"
            )
        strong = trees.strong_child[frontier]
        if max_strong_steps is not None:
            strong = np.where(trees.strong_steps[frontier] < max_strong_steps, strong, -1)
        frontier = np.concatenate([weak, strong[strong >= 0]]).astype(np.int64)
    return reachable


def _check_lambdas(lambdas: np.ndarray | list[float]) -> np.ndarray:
    values = np.atleast_1d(np.asarray(lambdas, dtype=np.float64))
    if values.size == 0 or not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"lambdas = {values.tolist()} must be a non-empty list of finite numbers >= 0")
    return values


def regenerate_is_better(
    trees: RolloutTrees,
    lambdas: np.ndarray | list[float],
    cost_unit_tokens: float = DEFAULT_COST_UNIT_TOKENS,
    max_strong_steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve the recursion for each λ.

    :param trees: complete rollout trees (cached, or grown with ``grow_complete``).
    :param lambdas: cost weights λ >= 0.
    :param cost_unit_tokens: strong tokens per cost unit (the environment's reward scale).
    :param max_strong_steps: regenerate only on paths with fewer strong steps (``None``: wherever
        a strong child is stored).
    :return: ``(choose_strong, root_value)``: a boolean (nodes, λ) array, True where regenerating
        is strictly better than continuing (ties continue, the cheaper choice), and the optimal
        return of each query, shape (queries, λ).
    """
    lambdas = _check_lambdas(lambdas)
    if not cost_unit_tokens > 0:
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens} must be > 0")
    reachable = reachable_nodes(trees, max_strong_steps)
    # Children sit one level deeper than their parent, so solving level by level from the deepest
    # one sees every child's value before its parent's. Terminal nodes keep their outcome as value.
    open_nodes = np.flatnonzero(~trees.terminal & reachable)
    order = open_nodes[np.argsort(trees.depth[open_nodes], kind="stable")]
    bounds = np.flatnonzero(np.diff(trees.depth[order])) + 1
    levels = []
    for nodes in np.split(order, bounds)[::-1]:
        strong = trees.strong_child[nodes]
        has_strong = strong >= 0
        if max_strong_steps is not None:
            has_strong &= trees.strong_steps[nodes] < max_strong_steps
        safe_strong = np.where(has_strong, strong, 0)
        cost_units = trees.step_tokens[safe_strong][:, None] / cost_unit_tokens
        levels.append((nodes, trees.weak_child[nodes], safe_strong, has_strong[:, None], cost_units))
    terminal_value = np.where(trees.terminal, trees.correct, 0).astype(np.float64)
    choose_strong = np.zeros((trees.num_nodes, len(lambdas)), dtype=bool)
    root_value = np.empty((trees.num_queries, len(lambdas)), dtype=np.float64)
    for start in range(0, len(lambdas), _LAMBDA_CHUNK):
        chunk = lambdas[None, start : start + _LAMBDA_CHUNK]
        value = np.repeat(terminal_value[:, None], chunk.shape[1], axis=1)
        for nodes, weak, strong, has_strong, cost_units in levels:
            continue_value = value[weak]
            regenerate_value = np.where(has_strong, value[strong] - cost_units * chunk, -np.inf)
            better = regenerate_value > continue_value
            choose_strong[nodes, start : start + chunk.shape[1]] = better
            value[nodes] = np.where(better, regenerate_value, continue_value)
        root_value[:, start : start + chunk.shape[1]] = value[trees.root]
    return choose_strong, root_value


class _OraclePolicy:
    """Plays the solved decisions; episode ``e`` uses λ number ``e // n_queries``."""

    def __init__(self, choose_strong: np.ndarray, n_queries: int) -> None:
        self.choose_strong = choose_strong
        self.n_queries = n_queries

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return self.choose_strong[batch.nodes, batch.episodes // self.n_queries]


def run_oracle(
    trees: RolloutTrees,
    lambdas: np.ndarray | list[float],
    cost_unit_tokens: float = DEFAULT_COST_UNIT_TOKENS,
    max_strong_steps: int | None = None,
) -> list[Outcomes]:
    """Outcomes of the hindsight-optimal routing for each λ, played by the batch evaluator.

    Trees that grow are first grown completely up to ``max_strong_steps`` (required for them).

    :param trees: complete rollout trees, or trees that grow.
    :param lambdas: cost weights λ >= 0 (one frontier point each).
    :param cost_unit_tokens: strong tokens per cost unit.
    :param max_strong_steps: the oracle regenerates only on paths with fewer strong steps.
    """
    if trees.can_grow:
        if max_strong_steps is None:
            raise ValueError("trees that grow have no end: give the oracle a cap max_strong_steps")
        trees.grow_complete(max_strong_steps)  # type: ignore[attr-defined]
    choose_strong, _ = regenerate_is_better(trees, lambdas, cost_unit_tokens, max_strong_steps)
    return run_grid(trees, _OraclePolicy(choose_strong, trees.num_queries), choose_strong.shape[1])


def lambda_grid(low: float, high: float, count: int) -> np.ndarray:
    """λ = 0 and ``count − 1`` log-spaced values from ``low`` to ``high`` (a fine frontier sweep).

    :param low: smallest positive λ (> 0).
    :param high: largest λ (> low).
    :param count: number of λ values, at least 2.
    """
    if not (0 < low < high) or count < 2:
        raise ValueError(f"need 0 < low ({low}) < high ({high}) and count ({count}) >= 2")
    return np.concatenate([[0.0], np.geomspace(low, high, count - 1)])


@dataclass
class OracleSettings(RouterSettings):
    """The hindsight oracle's λ sweep (``policy=oracle``): λ = 0 and ``n_lambdas − 1`` log-spaced values.

    :param lambda_min: smallest positive λ (> 0).
    :param lambda_max: largest λ (> lambda_min).
    :param n_lambdas: number of λ values (>= 2), one frontier point each.
    :param cost_unit_tokens: strong tokens per cost unit of λ (> 0).
    :param max_strong_steps: trees that grow are grown completely for the oracle, regenerating only
        on paths with fewer than this many strong steps: the oracle bounds routers that regenerate
        at most that often. ``None``: wherever a strong child is stored (frozen trees only).
    """

    lambda_min: float = 0.01
    lambda_max: float = 3.0
    n_lambdas: int = 100
    cost_unit_tokens: float = DEFAULT_COST_UNIT_TOKENS
    max_strong_steps: int | None = 4

    def check(self) -> OracleSettings:
        if not (0 < self.lambda_min < self.lambda_max) or self.n_lambdas < 2:
            raise ValueError(
                f"policy.lambda_min = {self.lambda_min}, policy.lambda_max = {self.lambda_max}, policy.n_lambdas = {self.n_lambdas}: "
                "need 0 < lambda_min < lambda_max and n_lambdas >= 2"
            )
        if not self.cost_unit_tokens > 0:
            raise ValueError(f"policy.cost_unit_tokens = {self.cost_unit_tokens} must be > 0")
        if self.max_strong_steps is not None and self.max_strong_steps < 1:
            raise ValueError(f"policy.max_strong_steps = {self.max_strong_steps} must be >= 1 or null")
        return self


class HindsightOracle:
    """The ``oracle`` policy: the hindsight-optimal routing of the evaluated split, one point per λ.

    It reads the outcomes of the split it routes, so it is an upper bound to draw beside the
    routers, not a router: it is neither fitted nor saved.
    """

    Settings: ClassVar[type[RouterSettings] | None] = OracleSettings
    config_groups: ClassVar[dict[str, type]] = {}
    sweep_trains: ClassVar[bool] = False

    @classmethod
    def fit(cls, settings: OracleSettings, data: TrainingData, **groups: Any) -> Fitted:
        raise ValueError(
            f"policy {settings.name!r} is the hindsight oracle: it reads the outcomes of the split it routes, so there is "
            "nothing to train; evaluate it with trim-evaluate policy=oracle or trim-baselines"
        )

    @classmethod
    def sweep(cls, settings: OracleSettings, trees: RolloutTrees) -> list[SweepPoint]:
        """One point per λ of the grid, in one batch run."""
        settings.check()
        lambdas = lambda_grid(settings.lambda_min, settings.lambda_max, settings.n_lambdas)
        outcomes = run_oracle(trees, lambdas, settings.cost_unit_tokens, settings.max_strong_steps)
        return [SweepPoint(settings.name, float(lam), played) for lam, played in zip(lambdas, outcomes)]
