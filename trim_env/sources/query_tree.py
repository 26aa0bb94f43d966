"""One query's collected tree: grown breadth-first from the weak and strong models, scored by the PRM, graded.

For a problem, :func:`collect_query` grows the tree of :mod:`trim_env.tree`: at every non-terminal
node the weak model proposes the next step (the W child) and, while the path holds fewer than K
strong steps, the strong model rewrites it (the S child); the weak model then goes on from either
prefix. A path ends when the model ends its answer or at ``max_steps``; terminal nodes are graded
with math-verify. Nodes are stored breadth-first (:meth:`QueryTree.sort_breadth_first`).

Work is shared, never repeated:

- a node's W child, its W child and so on down to the end are one weak rollout, so the weak model
  is called once per *chain* (from the root and from each S child), not once per node
  (:meth:`~trim_env.sources.base.StepGenerator.rollout`: one call where the backend can); each
  strong rewrite is one call; no prefix is expanded twice;
- the weak-only run *is* the tree's all-W path, and the strong-only run follows the all-S path
  for its first K steps, then one strong rollout finishes it; the naive count (a call per node
  plus separate step-by-step weak-only and strong-only runs) is recorded beside the real one;
- PRM scores come from one call per leaf: a causal PRM scores every step of a path in one
  forward pass, and a step's score depends only on what precedes it, so each node is scored
  within the first leaf path that holds it.

Sampling seeds are a hash of (seed, query id, path of W/S actions, model role), so a rerun draws
the same steps where the backend honours seeds (:func:`request_seed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from trim_env.sources.base import (
    PRMRequest,
    PRMScorer,
    Rollout,
    StepGenerator,
    StepRequest,
    StepResult,
    solution_text,
)
from trim_env.sources.grading import grade
from trim_env.sources.problems import Problem
from trim_env.tree import MAX_STEPS, NODE_INDEX, NODE_SCHEMA

#: What the weak-only and strong-only runs record, in the order of :attr:`QueryTree.weak_only`.
ANCHOR_FIELDS = ("correct", "tokens", "steps")


@dataclass(frozen=True)
class CollectSettings:
    """How trees are grown.

    :param max_strong_steps: K, the cap on strong steps per path.
    :param max_steps: a path ends after this many steps (at most the env's 30).
    :param seed: root of the per-request sampling seeds.
    """

    max_strong_steps: int
    max_steps: int = MAX_STEPS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_strong_steps < 0:
            raise ValueError(f"max_strong_steps = {self.max_strong_steps} must be >= 0")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps = {self.max_steps} must be in [1, {MAX_STEPS}] (the router's observation holds {MAX_STEPS} steps)")


@dataclass
class QueryTree:
    """One query's collected tree as node lists (breadth-first, parent < child) plus its anchor runs and costs.

    The node lists are the columns of :data:`~trim_env.tree.NODE_SCHEMA` a collection knows
    (not ``query``, which the dataset assigns, nor ``hidden_state``, which real models do not reveal).
    """

    problem: Problem
    parent: list[int] = field(default_factory=list)
    weak_child: list[int] = field(default_factory=list)
    strong_child: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    strong_steps: list[int] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    step_prm: list[float] = field(default_factory=list)
    step_is_strong: list[bool] = field(default_factory=list)
    terminal: list[bool] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)
    step_text: list[str | None] = field(default_factory=list)
    #: (correct, tokens, steps) of the weak-only and strong-only runs (:data:`ANCHOR_FIELDS`).
    weak_only: tuple[int, int, int] = (0, 0, 0)
    strong_only: tuple[int, int, int] = (0, 0, 0)
    #: Calls, tokens and time this query cost.
    stats: dict[str, float] = field(default_factory=dict)
    #: Tokens of the prompt (chat template, system prompt, problem) as the weak model's first call
    #: read them (the server's ``usage.prompt_tokens`` or the local tokenizer); ``None`` when the
    #: backend does not report them (and in records written before trees carried them).
    prompt_tokens: int | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.parent)

    def add(self, parent: int, step: StepResult | None, is_strong: bool, terminal: bool) -> int:
        """Append a node (``step`` None: the root); returns its index."""
        root = parent < 0
        self.parent.append(parent)
        self.weak_child.append(-1)
        self.strong_child.append(-1)
        self.depth.append(0 if root else self.depth[parent] + 1)
        self.strong_steps.append(0 if root else self.strong_steps[parent] + int(is_strong))
        self.step_tokens.append(0 if step is None else step.tokens)
        self.step_prm.append(1.0)  # the root's score is 1.0 by convention; steps are scored later
        self.step_is_strong.append(is_strong)
        self.terminal.append(terminal)
        self.correct.append(-1)
        self.step_text.append(None if step is None else step.text)
        node = self.num_nodes - 1
        if not root:
            if is_strong:
                self.strong_child[parent] = node
            else:
                self.weak_child[parent] = node
        return node

    def path(self, node: int) -> list[int]:
        """Nodes from the first step to ``node``."""
        nodes = []
        while self.parent[node] >= 0:
            nodes.append(node)
            node = self.parent[node]
        return nodes[::-1]

    def texts(self, node: int) -> tuple[str, ...]:
        return tuple(self.step_text[n] or "" for n in self.path(node))

    def actions(self, node: int) -> str:
        """The node's path as W/S letters (the key of its sampling seeds)."""
        return path_actions(self.step_is_strong[n] for n in self.path(node))

    def sort_breadth_first(self) -> None:
        """Renumber nodes level by level, each level in the order of the paths (W before S).

        Chains grow concurrently, so nodes are created in an order that depends on timing; this
        canonical order makes the tree independent of it.
        """
        keys = [self.actions(node).replace("W", "0").replace("S", "1") for node in range(self.num_nodes)]
        order = sorted(range(self.num_nodes), key=lambda node: (self.depth[node], keys[node]))
        new_id = {old: new for new, old in enumerate(order)}
        new_id[-1] = -1
        for column in NODE_SCHEMA:
            if hasattr(self, column.name):
                values = getattr(self, column.name)
                moved = [values[old] for old in order]
                setattr(self, column.name, [new_id[value] for value in moved] if column.role == NODE_INDEX else moved)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "problem": asdict(self.problem)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> QueryTree:
        tree = cls(**{**record, "problem": Problem(**record["problem"])})
        tree.weak_only, tree.strong_only = tuple(record["weak_only"]), tuple(record["strong_only"])
        return tree


def request_seed(seed: int, query_id: str, actions: str) -> int:
    """The sampling seed of the step after path ``actions`` by the model of its last letter."""
    digest = hashlib.sha256(f"{seed}/{query_id}/{actions}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1  # 31 bits: every server takes it


def path_actions(step_is_strong: Iterable[bool]) -> str:
    """A path as W/S letters, one per step (S: the strong model wrote it): the key of sampling seeds."""
    return "".join("S" if is_strong else "W" for is_strong in step_is_strong)


def step_request(problem: str, query_id: str, steps: Sequence[str], actions: str, seed: int) -> StepRequest:
    """The request for the step after ``steps``, as collection sends it.

    :param problem: the problem statement.
    :param query_id: the query's id (a key of the seed).
    :param steps: the prefix's step texts.
    :param actions: the prefix's path letters followed by the letter of the model asked (W or S).
    :param seed: the root of the sampling seeds (``CollectSettings.seed``).
    """
    return StepRequest(problem, tuple(steps), request_seed(seed, query_id, actions))


def ends_path(step: StepResult, depth: int, max_steps: int) -> bool:
    """Whether ``step``, written at ``depth`` (1 = the first step), ends its path: the model ended its
    answer, or the path holds ``max_steps`` steps."""
    return step.ends_solution or depth >= max_steps


async def collect_query(
    problem: Problem, weak: StepGenerator, strong: StepGenerator, prm: PRMScorer, settings: CollectSettings
) -> QueryTree:
    """Grow, score and grade one query's tree and its weak-only / strong-only runs.

    :param problem: the problem.
    :param weak: the weak model.
    :param strong: the strong model.
    :param prm: the process reward model.
    :param settings: K, max steps and seed.
    """
    started = time.perf_counter()
    tree = QueryTree(problem)
    tree.add(-1, None, False, False)
    stats: dict[str, float] = {"weak_calls": 0, "strong_calls": 0, "weak_tokens": 0, "strong_tokens": 0, "prm_calls": 0}

    def request(node: int, letter: str) -> StepRequest:
        return step_request(problem.problem, problem.query_id, tree.texts(node), tree.actions(node) + letter, settings.seed)

    def count(role: str, rollouts: Sequence[Rollout]) -> None:
        stats[f"{role}_calls"] += sum(rollout.calls for rollout in rollouts)
        stats[f"{role}_tokens"] += sum(rollout.decoded_tokens for rollout in rollouts)

    def attach(parent: int, step: StepResult, is_strong: bool) -> int:
        return tree.add(parent, step, is_strong, ends_path(step, tree.depth[parent] + 1, settings.max_steps))

    async def grow(start: int, start_branched: bool = False) -> None:
        """The weak model's rollout from ``start`` (its chain of W children), then the strong rewrites along it.

        ``start_branched``: ``start`` already has its S child (a chain continued after a
        truncated step), so it is not rewritten again.
        """
        (rollout,) = await weak.rollout([request(start, "W")], [settings.max_steps - tree.depth[start]])
        count("weak", [rollout])
        if start == 0 and not start_branched:  # the call from the root read the prompt alone
            tree.prompt_tokens = rollout.prompt_tokens
        chain = [start]
        for step in rollout.steps:
            chain.append(attach(chain[-1], step, False))
        candidates = chain[1:] if start_branched else chain
        branches = [node for node in candidates if not tree.terminal[node] and tree.strong_steps[node] < settings.max_strong_steps]
        rewrites = await strong.generate([request(node, "S") for node in branches])
        count("strong", [Rollout([step], step.tokens, 1) for step in rewrites])
        starts = [node for node in (attach(parent, step, True) for parent, step in zip(branches, rewrites)) if not tree.terminal[node]]
        continued = [grow(chain[-1], start_branched=True)] if not tree.terminal[chain[-1]] else []  # stopped at a truncated step
        await asyncio.gather(*(grow(node) for node in starts), *continued)

    await grow(0)
    tree.sort_breadth_first()
    for node in range(tree.num_nodes):
        if tree.terminal[node]:
            tree.correct[node] = int(grade(solution_text(tree.texts(node)), problem.answer))

    async def strong_only() -> tuple[int, int, int]:
        """The all-S path of the tree, continued by a strong rollout past the cap K."""
        node = 0
        while tree.strong_child[node] >= 0:
            node = tree.strong_child[node]
        steps = list(tree.texts(node))
        tokens = sum(tree.step_tokens[n] for n in tree.path(node))
        if tree.terminal[node]:
            return tree.correct[node], tokens, len(steps)
        while len(steps) < settings.max_steps:
            request_all_strong = step_request(problem.problem, problem.query_id, steps, "S" * (len(steps) + 1), settings.seed)
            (rollout,) = await strong.rollout([request_all_strong], [settings.max_steps - len(steps)])
            count("strong", [rollout])
            steps += [step.text for step in rollout.steps]
            tokens += sum(step.tokens for step in rollout.steps)
            if rollout.steps[-1].ends_solution:
                break
        return int(grade(solution_text(steps), problem.answer)), tokens, len(steps)

    async def score() -> None:
        """Score every node within the first leaf path holding it (one PRM call per such leaf)."""
        scored = np.zeros(tree.num_nodes, dtype=bool)
        scored[0] = True
        jobs: list[list[int]] = []
        for leaf in range(tree.num_nodes):
            path = tree.path(leaf) if tree.terminal[leaf] else []
            if path and not scored[path].all():
                jobs.append(path)
                scored[path] = True
        results = await prm.score([PRMRequest(problem.problem, tuple(tree.step_text[n] or "" for n in path)) for path in jobs])
        stats["prm_calls"] += len(jobs)
        assigned = np.zeros(tree.num_nodes, dtype=bool)
        for path, scores in zip(jobs, results):
            for node, value in zip(path, scores):
                if not assigned[node]:
                    tree.step_prm[node] = value
                    assigned[node] = True

    tree.strong_only, _ = await asyncio.gather(strong_only(), score())
    leaf = 0
    while tree.weak_child[leaf] >= 0:
        leaf = tree.weak_child[leaf]
    tree.weak_only = (tree.correct[leaf], sum(tree.step_tokens[n] for n in tree.path(leaf)), tree.depth[leaf])
    stats["naive_calls"] = tree.num_nodes - 1 + tree.weak_only[2] + tree.strong_only[2]
    stats["naive_prm_calls"] = tree.num_nodes - 1
    stats["seconds"] = time.perf_counter() - started
    tree.stats = stats
    return tree
