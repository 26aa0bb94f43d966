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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trim_env import atomic, metrics
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

    def select(self, mask: np.ndarray) -> Outcomes:
        return Outcomes(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})


def run_episodes(trees: RolloutTrees, policy: BatchPolicy, queries: np.ndarray | None = None) -> Outcomes:
    """Play one episode per entry of ``queries`` (default: every query once) under ``policy``."""
    queries = np.arange(trees.num_queries) if queries is None else np.asarray(queries, dtype=np.int64)
    n = len(queries)
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
    )


class _ThresholdGrid:
    """TRIM-Thr for several thresholds at once: episode e uses threshold ``e // n_queries``."""

    def __init__(self, thresholds: np.ndarray, n_queries: int) -> None:
        self.thresholds = thresholds
        self.n_queries = n_queries

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.proposal_prm < self.thresholds[batch.episodes // self.n_queries]


def run_grid(trees: RolloutTrees, policy: BatchPolicy, n_settings: int) -> list[Outcomes]:
    """Several settings of one policy in a single batch run; one :class:`Outcomes` per setting.

    Every query is played once per setting; ``policy`` reads the setting of episode ``e`` as
    ``e // trees.num_queries``.
    """
    n = trees.num_queries
    outcomes = run_episodes(trees, policy, np.tile(np.arange(n), n_settings))
    return [outcomes.select(slice(i * n, (i + 1) * n)) for i in range(n_settings)]  # type: ignore[arg-type]


def run_thresholds(trees: RolloutTrees, thresholds: np.ndarray | list[float]) -> list[Outcomes]:
    """TRIM-Thr (regenerate when the proposed step's PRM score < k) for every k, in one batch run."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return run_grid(trees, _ThresholdGrid(thresholds, trees.num_queries), len(thresholds))


def reference(trees: RolloutTrees) -> metrics.Reference:
    """Weak-only and strong-only anchors of a split (for c(π), PGR and ΔIBC), costs in strong tokens."""
    return metrics.Reference(
        weak_accuracy=float(np.mean(trees.weak_only_correct)),
        strong_accuracy=float(np.mean(trees.strong_only_correct)),
        strong_tokens_per_query=float(np.mean(trees.strong_only_tokens)),
        # The weak-only run decodes no strong tokens; a cost model that charges the weak model
        # puts a positive cost here (the weak anchor at c_w > 0).
        weak_strong_tokens_per_query=0.0,
    )


def summarize(outcomes: Outcomes, anchors: metrics.Reference) -> dict[str, float]:
    """One frontier point: accuracy, strong tokens/query, c(π), PGR, escalations and cap binding."""
    accuracy = metrics.accuracy(outcomes.correct)
    tokens = metrics.strong_tokens_per_query(outcomes.strong_tokens)
    return {
        "accuracy": accuracy,
        "strong_tokens_per_query": tokens,
        "normalized_cost": metrics.normalized_cost(tokens, anchors),
        "pgr": metrics.pgr(accuracy, anchors),
        "escalations_per_query": float(np.mean(outcomes.escalations)),
        "cap_binding_rate": float(np.mean(outcomes.cap_overrides > 0)),
    }


def validation_objective(correct: np.ndarray, strong_tokens: np.ndarray, lam: float, cost_unit_tokens: float) -> float:
    """Mean episode return of the env: accuracy − λ · strong tokens / cost unit (checkpoint choice)."""
    if not np.isfinite(cost_unit_tokens) or cost_unit_tokens <= 0:
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens!r} must be a finite number > 0 (strong tokens per cost unit)")
    return float(np.mean(correct) - lam * np.mean(strong_tokens) / cost_unit_tokens)


def make_point(policy: str, parameter: float | None, outcomes: Outcomes, anchors: metrics.Reference) -> dict:
    """A ``results.json`` point: the policy, its parameter and :func:`summarize` figures."""
    return {"policy": policy, "parameter": parameter, **summarize(outcomes, anchors)}


def anchor_points(trees: RolloutTrees) -> list[dict]:
    """The weak-only and strong-only points of a split (from its recorded anchor runs).

    The weak-only point carries its cost (0 strong tokens) and its normalized cost c_w: the
    frontier report reads the weak anchor's cost from it.
    """
    anchors = reference(trees)
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


def write_results(directory: str | Path, config: dict[str, Any], points: list[dict]) -> Path:
    """Write ``results.json`` = ``{"config", "points"}`` to ``directory`` (atomically: a killed run leaves
    no half-file), print the table; returns the file."""
    path = atomic.write_json(Path(directory) / "results.json", {"config": config, "points": points})
    print(format_table(points))
    print(f"\nwrote {path}")
    return path
