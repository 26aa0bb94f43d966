"""Fast batch evaluation of routing policies over a whole split, without Gymnasium overhead.

All episodes advance together, one step per round, with array indexing into the trees; the policy
is asked once per round for every active episode. TRIM-Thr over many thresholds is one call:
each (query, threshold) pair is an episode.

Trees that grow (:class:`~trim_env.store.GrowingTrees`) are asked for every missing child the
round needs, in one batched call per round: the weak proposals at all active nodes, then the
strong rewrites that the policy asked for.

At a node without a strong child that cannot grow one (past the cap of frozen trees) the policy is
still asked, so that the evaluator can count how often the cap binds, but a request to regenerate
is played as continue — exactly as the environment, which does not ask there.

**Cost.** ``run_episodes(..., cost_model=...)`` prices every step written with
:func:`trim_env.cost.step_cost`, in order, as the environment does: ``Outcomes.cost`` is each
episode's cost in cost units (equal to the env's episode cost, and to
:func:`~trim_env.cost.path_cost` of its final node). Under the default strong-tokens model it is
the strong tokens. ``reference``/``anchor_points`` price the weak-only and strong-only runs with
:func:`~trim_env.cost.anchor_cost`.

**How points report cost.** ``strong_tokens_per_query`` is always the strong model's decoded tokens.
Under the default model (``cost_model`` ``None`` or strong tokens) that is also the cost, and a
point has exactly the fields it had before cost models (results files stay byte-identical). Under
any other model a point adds ``cost_per_query`` (mean cost units) and its ``normalized_cost`` is
``cost_per_query`` / strong-only's cost in that model; the weak-only point's ``cost_per_query`` is
its (positive) cost and its ``normalized_cost`` c_w. The frontier report reads ``cost_per_query``
when the results' ``config.cost`` is not strong tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trim_env import atomic, metrics
from trim_env.cost import CostModel, StrongTokensCost, anchor_cost, check_trees, path_cost, step_cost
from trim_env.features import agg_features, seq_features
from trim_env.tree import RolloutTrees


@dataclass
class DecisionBatch:
    """The decisions of one round: episode ``episodes[i]`` is at node ``nodes[i]``."""

    trees: RolloutTrees
    nodes: np.ndarray
    episodes: np.ndarray

    @property
    def proposal_prm(self) -> np.ndarray:
        return self.trees.step_prm[self.trees.weak_child[self.nodes]]

    def agg(self) -> np.ndarray:
        return agg_features(self.trees, self.nodes)

    def seq(self) -> np.ndarray:
        return seq_features(self.trees, self.nodes)


class BatchPolicy(Protocol):
    """Anything that maps a batch of decisions to actions (True / 1 = regenerate)."""

    def decide(self, batch: DecisionBatch) -> np.ndarray: ...


@dataclass
class Outcomes:
    """Per-episode results of a batch run."""

    query: np.ndarray
    correct: np.ndarray
    strong_tokens: np.ndarray
    escalations: np.ndarray
    cap_overrides: np.ndarray
    steps: np.ndarray
    #: The terminal node each episode ended on.
    final_node: np.ndarray
    #: Each episode's cost in cost units of the run's cost model (``None``: its strong tokens, the
    #: default model's cost).
    cost: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.cost is None:
            self.cost = np.asarray(self.strong_tokens).astype(np.float64)

    def select(self, mask: np.ndarray) -> Outcomes:
        return Outcomes(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})


def priced(cost_model: CostModel | None) -> bool:
    """Whether ``cost_model`` is other than the default strong-tokens model (then points carry ``cost_per_query``)."""
    return cost_model is not None and not isinstance(cost_model, StrongTokensCost)


def run_episodes(
    trees: RolloutTrees, policy: BatchPolicy, queries: np.ndarray | None = None, cost_model: CostModel | None = None
) -> Outcomes:
    """Play one episode per entry of ``queries`` (default: every query once) under ``policy``.

    :param cost_model: prices each step into ``Outcomes.cost`` (default: strong tokens).
    """
    queries = np.arange(trees.num_queries) if queries is None else np.asarray(queries, dtype=np.int64)
    n = len(queries)
    pricing = priced(cost_model)
    if pricing:
        check_trees(cost_model, trees)  # type: ignore[arg-type]
    cost = np.zeros(n, dtype=np.float64) if pricing else None
    node = trees.root[queries].astype(np.int64)
    strong_tokens = np.zeros(n, dtype=np.int64)
    escalations = np.zeros(n, dtype=np.int64)
    cap_overrides = np.zeros(n, dtype=np.int64)
    steps = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    while active.size:
        here = node[active]
        trees.grow_weak(here)
        wants = np.asarray(policy.decide(DecisionBatch(trees, here, active)), dtype=bool)
        if trees.can_grow and (wants & (trees.strong_child[here] < 0)).any():
            trees.grow_strong(here[wants])
        strong_child = trees.strong_child[here]
        regenerate = wants & (strong_child >= 0)
        cap_overrides[active] += wants & ~regenerate
        nxt = np.where(regenerate, strong_child, trees.weak_child[here])
        strong_tokens[active] += np.where(regenerate, trees.step_tokens[nxt], 0)
        if cost is not None:
            cost[active] += step_cost(cost_model, trees, here, nxt, regenerate)  # type: ignore[arg-type]
        escalations[active] += regenerate
        steps[active] += 1
        node[active] = nxt
        active = active[~trees.terminal[nxt]]
    return Outcomes(
        query=queries,
        correct=trees.correct[node].astype(np.int64),
        strong_tokens=strong_tokens,
        escalations=escalations,
        cap_overrides=cap_overrides,
        steps=steps,
        final_node=node,
        cost=strong_tokens.astype(np.float64) if cost is None else cost,
    )


class _ThresholdGrid:
    """TRIM-Thr for several thresholds at once: episode e uses threshold ``e // n_queries``."""

    def __init__(self, thresholds: np.ndarray, n_queries: int) -> None:
        self.thresholds = thresholds
        self.n_queries = n_queries

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.proposal_prm < self.thresholds[batch.episodes // self.n_queries]


def with_path_cost(trees: RolloutTrees, outcomes: Outcomes, cost_model: CostModel | None) -> Outcomes:
    """``outcomes`` with each episode's ``cost`` = :func:`~trim_env.cost.path_cost` of its final node under
    ``cost_model`` (step-level episodes run without a cost model, e.g. by a policy's sweep); unchanged
    under the default model."""
    if not priced(cost_model):
        return outcomes
    return dataclasses.replace(outcomes, cost=path_cost(cost_model, trees, outcomes.final_node))  # type: ignore[arg-type]


def run_grid(trees: RolloutTrees, policy: BatchPolicy, n_settings: int, cost_model: CostModel | None = None) -> list[Outcomes]:
    """Several settings of one policy in a single batch run; one :class:`Outcomes` per setting.

    Every query is played once per setting; ``policy`` reads the setting of episode ``e`` as
    ``e // trees.num_queries``.
    """
    n = trees.num_queries
    outcomes = run_episodes(trees, policy, np.tile(np.arange(n), n_settings), cost_model)
    return [outcomes.select(slice(i * n, (i + 1) * n)) for i in range(n_settings)]  # type: ignore[arg-type]


def run_thresholds(
    trees: RolloutTrees, thresholds: np.ndarray | list[float], cost_model: CostModel | None = None
) -> list[Outcomes]:
    """TRIM-Thr (regenerate when the proposed step's PRM score < k) for every k, in one batch run."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return run_grid(trees, _ThresholdGrid(thresholds, trees.num_queries), len(thresholds), cost_model)


def reference(trees: RolloutTrees, cost_model: CostModel | None = None) -> metrics.Reference:
    """Weak-only and strong-only anchors of a split (for c(π), PGR and ΔIBC).

    Costs in strong tokens by default; under another ``cost_model`` in its cost units
    (:func:`~trim_env.cost.anchor_cost`: weak-only costs something there). The ``Reference`` fields
    keep their names (``strong_tokens_per_query``: the strong anchor's cost) whatever the unit.
    """
    if priced(cost_model):
        return metrics.Reference(
            weak_accuracy=float(np.mean(trees.weak_only_correct)),
            strong_accuracy=float(np.mean(trees.strong_only_correct)),
            strong_tokens_per_query=float(np.mean(anchor_cost(cost_model, trees, "strong_only"))),  # type: ignore[arg-type]
            weak_strong_tokens_per_query=float(np.mean(anchor_cost(cost_model, trees, "weak_only"))),  # type: ignore[arg-type]
        )
    return metrics.Reference(
        weak_accuracy=float(np.mean(trees.weak_only_correct)),
        strong_accuracy=float(np.mean(trees.strong_only_correct)),
        strong_tokens_per_query=float(np.mean(trees.strong_only_tokens)),
        # The weak-only run decodes no strong tokens; a cost model that charges the weak model
        # puts a positive cost here (the weak anchor at c_w > 0).
        weak_strong_tokens_per_query=0.0,
    )


def summarize(outcomes: Outcomes, anchors: metrics.Reference, cost_model: CostModel | None = None) -> dict[str, float]:
    """One frontier point: accuracy, strong tokens/query, c(π), PGR, escalations and cap binding.

    Under a ``cost_model`` other than strong tokens also ``cost_per_query`` (cost units), and
    c(π) is that cost over ``anchors``' (which must be :func:`reference` under the same model).
    """
    accuracy = metrics.accuracy(outcomes.correct)
    tokens = metrics.strong_tokens_per_query(outcomes.strong_tokens)
    cost = {"cost_per_query": float(np.mean(outcomes.cost))} if priced(cost_model) else {}
    return {
        "accuracy": accuracy,
        "strong_tokens_per_query": tokens,
        **cost,
        "normalized_cost": metrics.normalized_cost(cost["cost_per_query"] if cost else tokens, anchors),
        "pgr": metrics.pgr(accuracy, anchors),
        "escalations_per_query": float(np.mean(outcomes.escalations)),
        "cap_binding_rate": float(np.mean(outcomes.cap_overrides > 0)),
    }


def validation_objective(correct: np.ndarray, cost: np.ndarray, lam: float, cost_unit_tokens: float) -> float:
    """Mean episode return of the env: accuracy − λ · cost / cost unit (checkpoint choice).

    :param cost: each episode's cost in cost units (``Outcomes.cost``; the strong tokens under the default model).
    """
    if not np.isfinite(cost_unit_tokens) or cost_unit_tokens <= 0:
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens!r} must be a finite number > 0 (strong tokens per cost unit)")
    return float(np.mean(correct) - lam * np.mean(cost) / cost_unit_tokens)


def make_point(
    policy: str, parameter: float | None, outcomes: Outcomes, anchors: metrics.Reference, cost_model: CostModel | None = None
) -> dict:
    """A ``results.json`` point: the policy, its parameter and :func:`summarize` figures."""
    return {"policy": policy, "parameter": parameter, **summarize(outcomes, anchors, cost_model)}


def anchor_points(trees: RolloutTrees, cost_model: CostModel | None = None) -> list[dict]:
    """The weak-only and strong-only points of a split (from its recorded anchor runs).

    The weak-only point carries its cost (0 strong tokens) and its normalized cost c_w: the
    frontier report reads the weak anchor's cost from it. Under a ``cost_model`` other than strong
    tokens both points add ``cost_per_query`` (:func:`~trim_env.cost.anchor_cost`, cost units) and
    weak-only's c_w is its cost over strong-only's.
    """
    anchors = reference(trees, cost_model)
    if priced(cost_model):
        return [
            {"policy": "weak-only", "parameter": None, "accuracy": anchors.weak_accuracy, "strong_tokens_per_query": 0.0,
             "cost_per_query": anchors.weak_strong_tokens_per_query, "normalized_cost": anchors.weak_normalized_cost, "pgr": 0.0},
            {"policy": "strong-only", "parameter": None, "accuracy": anchors.strong_accuracy,
             "strong_tokens_per_query": float(np.mean(trees.strong_only_tokens)),
             "cost_per_query": anchors.strong_tokens_per_query, "normalized_cost": 1.0, "pgr": 1.0},
        ]
    return [
        {
            "policy": "weak-only",
            "parameter": None,
            "accuracy": anchors.weak_accuracy,
            "strong_tokens_per_query": anchors.weak_strong_tokens_per_query,
            "normalized_cost": anchors.weak_normalized_cost,
            "pgr": 0.0,
        },
        {
            "policy": "strong-only",
            "parameter": None,
            "accuracy": anchors.strong_accuracy,
            "strong_tokens_per_query": anchors.strong_tokens_per_query,
            "normalized_cost": 1.0,
            "pgr": 1.0,
        },
    ]


def format_table(points: list[dict]) -> str:
    """A plain-text table of points for the terminal."""
    header = f"{'policy':<14}{'parameter':>11}{'accuracy':>10}{'strong tok/q':>14}{'c(pi)':>8}{'PGR':>8}{'esc/q':>8}{'cap binds':>11}"
    lines = [header, "-" * len(header)]
    for point in points:
        parameter = point.get("parameter")
        lines.append(
            f"{point['policy']:<14}{'' if parameter is None else f'{parameter:g}':>11}{point['accuracy']:>10.3f}"
            f"{point['strong_tokens_per_query']:>14.1f}{point['normalized_cost']:>8.3f}{point['pgr']:>8.3f}"
            f"{point.get('escalations_per_query', float('nan')):>8.2f}{point.get('cap_binding_rate', float('nan')):>11.2f}"
        )
    return "\n".join(lines)


def results_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """The config a results file records: the resolved config, without ``cost`` when it is the default
    strong-tokens model (results in strong tokens stay byte-identical to those written before cost
    models; a config without ``cost`` means strong tokens to the frontier report)."""
    if isinstance(resolved.get("cost"), dict) and resolved["cost"].get("name") == "strong_tokens":
        return {key: value for key, value in resolved.items() if key != "cost"}
    return resolved


def write_results(directory: str | Path, config: dict[str, Any], points: list[dict]) -> Path:
    """Write ``results.json`` = ``{"config", "points"}`` to ``directory`` (atomically: a killed run leaves
    no half-file), print the table; returns the file."""
    path = atomic.write_json(Path(directory) / "results.json", {"config": config, "points": points})
    print(format_table(points))
    print(f"\nwrote {path}")
    return path
