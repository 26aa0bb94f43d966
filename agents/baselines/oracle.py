"""Hindsight oracle: the best step-level routing on each cached tree for a cost weight λ.

With every outcome in the tree known, the best return from a node is a Bellman recursion::

    V(terminal) = correct
    V(node)     = max(−λ · c_continue(node) / cost_unit + V(weak_child),
                      −λ · c_regenerate(node) / cost_unit + V(strong_child))

(only the first where the node has no strong child: past the cap the weak model plays on, and
that passive step costs ``c_continue`` too, as in the environment). ``c_continue`` and
``c_regenerate`` are :func:`trim_env.cost.step_cost` of the two events in the run's cost model
(:mod:`trim_env.cost`): under the default strong tokens 0 and the rewrite's tokens; under
``price``, ``flops`` or ``latency`` a continue pays the weak call and the PRM, a regenerate
also the strong call and the PRM of the rewrite. Its policy maximises the environment's return
``correct − λ · cost / cost_unit`` per query (the cost of an episode is the
:func:`~trim_env.cost.path_cost` of the node it ends at), so for every λ no router playing the
same tree earns more; sweeping λ traces the upper bound of the frontier. The oracle looks at
outcomes: it is a reference, not a router.

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
from trim_env.cost import CostModel, StrongTokensCost, check_trees, step_cost
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
    cost_model: CostModel | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve the recursion for each λ.

    :param trees: complete rollout trees (cached, or grown with ``grow_complete``).
    :param lambdas: cost weights λ >= 0.
    :param cost_unit_tokens: cost units per unit of λ (the environment's reward scale).
    :param max_strong_steps: regenerate only on paths with fewer strong steps (``None``: wherever
        a strong child is stored).
    :param cost_model: what each step costs (default strong tokens: a continue is free).
    :return: ``(choose_strong, root_value)``: a boolean (nodes, λ) array, True where regenerating
        is strictly better than continuing (ties continue, the cheaper choice), and the optimal
        return of each query, shape (queries, λ).
    """
    lambdas = _check_lambdas(lambdas)
    if not cost_unit_tokens > 0:
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens} must be > 0")
    cost_model = StrongTokensCost() if cost_model is None else cost_model
    check_trees(cost_model, trees)
    reachable = reachable_nodes(trees, max_strong_steps)
    # Children sit one level deeper than their parent, so solving level by level from the deepest
    # one sees every child's value before its parent's. Terminal nodes keep their outcome as value.
    open_nodes = np.flatnonzero(~trees.terminal & reachable)
    order = open_nodes[np.argsort(trees.depth[open_nodes], kind="stable")]
    strong = trees.strong_child[order]
    has_strong = strong >= 0
    if max_strong_steps is not None:
        has_strong &= trees.strong_steps[order] < max_strong_steps
    # Each event priced once for all open nodes (one prefix fold), in cost units per unit of λ.
    # Under strong tokens a continue costs exactly 0.0 and a regenerate tokens / cost_unit_tokens,
    # so V − 0.0 · λ and V − (tokens / cost_unit) · λ are the values before cost models, bit for bit.
    continue_units = step_cost(cost_model, trees, order, trees.weak_child[order], np.zeros(len(order), bool)) / cost_unit_tokens
    regenerate_units = np.zeros(len(order), dtype=np.float64)
    regenerate_units[has_strong] = step_cost(cost_model, trees, order[has_strong], strong[has_strong],
                                             np.ones(int(has_strong.sum()), bool)) / cost_unit_tokens
    safe_strong = np.where(has_strong, strong, 0)
    bounds = np.flatnonzero(np.diff(trees.depth[order])) + 1
    levels = [
        (order[level], trees.weak_child[order[level]], safe_strong[level], has_strong[level, None],
         continue_units[level, None], regenerate_units[level, None])
        for level in np.split(np.arange(len(order)), bounds)[::-1]
    ]
    terminal_value = np.where(trees.terminal, trees.correct, 0).astype(np.float64)
    choose_strong = np.zeros((trees.num_nodes, len(lambdas)), dtype=bool)
    root_value = np.empty((trees.num_queries, len(lambdas)), dtype=np.float64)
    for start in range(0, len(lambdas), _LAMBDA_CHUNK):
        chunk = lambdas[None, start : start + _LAMBDA_CHUNK]
        value = np.repeat(terminal_value[:, None], chunk.shape[1], axis=1)
        for nodes, weak, strong_nodes, can_regenerate, continue_cost, regenerate_cost in levels:
            continue_value = value[weak] - continue_cost * chunk
            regenerate_value = np.where(can_regenerate, value[strong_nodes] - regenerate_cost * chunk, -np.inf)
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
    cost_model: CostModel | None = None,
) -> list[Outcomes]:
    """Outcomes of the hindsight-optimal routing for each λ, played by the batch evaluator.

    Trees that grow are first grown completely up to ``max_strong_steps`` (required for them).

    :param trees: complete rollout trees, or trees that grow.
    :param lambdas: cost weights λ >= 0 (one frontier point each).
    :param cost_unit_tokens: cost units per unit of λ.
    :param max_strong_steps: the oracle regenerates only on paths with fewer strong steps.
    :param cost_model: what the oracle plans with and ``Outcomes.cost`` is in (default strong tokens).
    """
    if trees.can_grow:
        if max_strong_steps is None:
            raise ValueError("trees that grow have no end: give the oracle a cap max_strong_steps")
        trees.grow_complete(max_strong_steps)  # type: ignore[attr-defined]
    choose_strong, _ = regenerate_is_better(trees, lambdas, cost_unit_tokens, max_strong_steps, cost_model)
    return run_grid(trees, _OraclePolicy(choose_strong, trees.num_queries), choose_strong.shape[1], cost_model)


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
    #: It plans with any ``cost=`` model's step costs (:func:`~trim_env.cost.step_cost`)...
    supports_cost_models: ClassVar[bool] = True
    #: ...so its sweep takes the cost model and prices its episodes itself.
    sweep_prices: ClassVar[bool] = True

    @classmethod
    def fit(cls, settings: OracleSettings, data: TrainingData, **groups: Any) -> Fitted:
        raise ValueError(
            f"policy {settings.name!r} is the hindsight oracle: it reads the outcomes of the split it routes, so there is "
            "nothing to train; evaluate it with trim-evaluate policy=oracle or trim-baselines"
        )

    @classmethod
    def sweep(cls, settings: OracleSettings, trees: RolloutTrees, cost_model: CostModel | None = None) -> list[SweepPoint]:
        """One point per λ of the grid, in one batch run, planned and priced in ``cost_model`` (default strong tokens)."""
        settings.check()
        lambdas = lambda_grid(settings.lambda_min, settings.lambda_max, settings.n_lambdas)
        outcomes = run_oracle(trees, lambdas, settings.cost_unit_tokens, settings.max_strong_steps, cost_model)
        return [SweepPoint(settings.name, float(lam), played) for lam, played in zip(lambdas, outcomes)]
