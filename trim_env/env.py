"""The step-routing environment: a Gymnasium view of rollout trees, one query per episode.

A weak model writes a solution step by step. After each proposed step the agent chooses

- ``0`` — *continue*: accept the weak model's step (free);
- ``1`` — *regenerate*: the strong model rewrites that step, which costs its tokens.

**Reward.** Every step written earns ``-lam * step_cost / cost_unit_tokens``, where ``step_cost``
is :func:`trim_env.cost.step_cost` of the event under the env's ``cost_model`` (in cost units).
Under the default :class:`~trim_env.cost.StrongTokensCost` that is the strong rewrite's length
for a regenerate and 0 for a weak step, so a regenerate earns ``-lam * strong_tokens /
cost_unit_tokens``: cost is counted in units of ``cost_unit_tokens`` strong tokens (default
:data:`DEFAULT_COST_UNIT_TOKENS` = 10). On the calibrated data one more accuracy point is worth
0.0003-0.003 per strong token along the frontier, so with a unit of 10 tokens a lambda grid from
0.002 to 0.05 (0.01 in the middle) spans it; the other cost models' units are chosen so that the
same grid stays in range (:mod:`trim_env.cost`). Under a model that charges weak and PRM calls
(``price``, ``flops``, ``latency``), continue steps and the passive weak steps the env plays
without asking cost too: a ``step`` call's reward pays every step it wrote (passive steps played
by ``reset`` before the first decision are paid by the first ``step``). The step that ends the
solution additionally earns ``+1`` if the final answer is correct. The undiscounted return of an
episode is therefore ``correct - lam * (cost of the episode) / cost_unit_tokens``, where the
episode's cost is :func:`trim_env.cost.path_cost` of the node it ended at.

**Decisions.** The agent is asked only at *decision nodes*: nodes that have both a weak proposal
and a strong rewrite, so regenerate is always allowed when asked. At a node past the cap on
strong steps (or past the node budget: no strong child), the env plays the rest of the episode
without asking — it accepts weak steps until it reaches a decision node again (possible only
under a node budget) or the end of the solution. Those steps are folded into the ``step`` call
that led to them. A query with no decision node at all (degenerate data, e.g. ``K = 0``) cannot
start an episode: :meth:`StepRoutingEnv.reset` plays it weak-only, reports it under
``info["skipped"]`` and moves on to the next query.

**Observations** (see :mod:`trim_env.features`): ``"agg"`` is the 7-vector
:data:`~trim_env.features.AGG_FEATURES`; ``"seq"`` is a ``(30, 4)`` array of the steps so far plus
the proposal, channels :data:`~trim_env.features.SEQ_CHANNELS`. Both equal
:func:`~trim_env.features.agg_features` / :func:`~trim_env.features.seq_features` at the current
node exactly (token channels are clipped at
:data:`~trim_env.features.TOKEN_FEATURE_HIGH` = 10,000 tokens to keep the space bounded).

**Query order.** Deterministic: the env keeps a permutation of its queries (shuffled by the seed
unless ``shuffle=False``) and walks through it cyclically, one query per ``reset``.
``reset(seed=s)`` rebuilds the permutation from ``s`` and starts from its beginning; ``reset()``
continues the current order. ``reset(options={"query_index": i})`` plays query ``i`` (an index
into ``trees``' queries) without moving the position in the order.

**Info.** Every ``reset``/``step`` returns ``query_index``, ``query_id``, ``node``,
``strong_tokens`` (cumulative over the episode), ``cost`` (the episode's cost so far in cost
units of the env's cost model: ``float(strong_tokens)`` under the default), ``escalations`` (regenerates so far) and
``step`` (steps written so far). The final step adds ``correct`` (0/1) and ``cap_reached`` (the
episode passed through a node without a strong child). ``reset`` adds ``skipped``: a list of
``(query_index, correct)`` for queries without a decision node that it played and passed over.

Works with cached :class:`~trim_env.tree.RolloutTrees` and with a lazy
:class:`~trim_env.simulate.SimulatedTrees` (nodes are expanded as the episode reaches them).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from trim_env.cost import CostModel, StrongTokensCost, check_trees, step_cost
from trim_env.features import AGG_FEATURES, SEQ_CHANNELS, STRONG_STEP_SCALE, TOKEN_FEATURE_HIGH, TOKEN_SCALE
from trim_env.store import GrowingTrees
from trim_env.tree import MAX_STEPS, RolloutTrees

#: Default cost unit: the regenerate penalty is ``lam`` per this many strong tokens.
DEFAULT_COST_UNIT_TOKENS = 10.0
OBSERVATIONS = ("agg", "seq")
ACTION_CONTINUE, ACTION_REGENERATE = 0, 1

# Node arrays the env reads on every step.
_HOT = (
    "weak_child",
    "strong_child",
    "step_tokens",
    "step_prm",
    "step_is_strong",
    "terminal",
    "correct",
    "depth",
    "strong_steps",
    "path_min_prm",
)


def check_settings(trees: Any, observation: str, lam: Any, cost_unit_tokens: Any, seed: Any) -> tuple[float, float]:
    """Validate the settings shared by the single and the vectorised env; returns (lam, cost_unit_tokens)."""
    if not isinstance(trees, RolloutTrees):
        raise TypeError(f"trees must be RolloutTrees (or GrowingTrees), got {type(trees).__name__}")
    if observation not in OBSERVATIONS:
        raise ValueError(f"observation = {observation!r} is not one of {list(OBSERVATIONS)}")
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam = {lam!r} must be a finite number >= 0") from None
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam = {lam!r} must be a finite number >= 0")
    try:
        cost_unit_tokens = float(cost_unit_tokens)
    except (TypeError, ValueError):
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens!r} must be a finite number > 0") from None
    if not math.isfinite(cost_unit_tokens) or cost_unit_tokens <= 0:
        raise ValueError(f"cost_unit_tokens = {cost_unit_tokens!r} must be a finite number > 0")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed = {seed!r} must be a non-negative integer or None")
    return lam, cost_unit_tokens


def check_cost_model(trees: RolloutTrees, cost_model: Any) -> CostModel:
    """The env's cost model (default :class:`~trim_env.cost.StrongTokensCost`), checked against the trees."""
    if cost_model is None:
        return StrongTokensCost()
    if not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a trim_env.cost.CostModel, got {type(cost_model).__name__}")
    check_trees(cost_model, trees)
    return cost_model


def check_queries(trees: RolloutTrees, queries: Any) -> np.ndarray:
    """The query indices an env plays: all of ``trees``' by default, else validated ``queries``."""
    n = trees.num_queries
    if queries is None:
        if n == 0:
            raise ValueError("trees hold no queries")
        return np.arange(n, dtype=np.int64)
    array = np.asarray(queries)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"queries = {queries!r} must be a non-empty 1-D array of query indices")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"queries = {queries!r} must hold integer query indices")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= n)
    if bad.any():
        raise ValueError(f"queries contains {int(array[bad][0])}, out of range [0, {n})")
    if len(np.unique(array)) != len(array):
        raise ValueError(f"queries = {queries!r} contains duplicate indices")
    return array


def _view(array: np.ndarray) -> memoryview:
    """A memoryview for fast scalar reads (returns Python ints/floats/bools, no numpy scalars)."""
    array = np.ascontiguousarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array.data


class StepRoutingEnv(gymnasium.Env):
    """Step-level routing between a weak and a strong model over rollout trees.

    :param trees: cached :class:`RolloutTrees` or a lazy ``SimulatedTrees``.
    :param observation: ``"agg"`` (shape ``(7,)``) or ``"seq"`` (shape ``(30, 4)``).
    :param lam: cost weight lambda >= 0: a regenerate costs ``lam`` per ``cost_unit_tokens``
        strong tokens; a correct final answer is worth 1.
    :param cost_unit_tokens: strong tokens per cost unit (> 0), default
        :data:`DEFAULT_COST_UNIT_TOKENS`.
    :param seed: seed of the initial query order (``reset(seed=...)`` replaces it). Copies of
        the env in a vector env that are never reset with a seed all walk the same order; give
        each copy its own seed (or use ``make_vec_env(..., seed=s)``, which resets with
        ``s + rank``).
    :param shuffle: visit queries in a seeded random permutation (else in the given order).
    :param queries: restrict the env to these query indices (e.g. a train or validation part);
        default all queries of ``trees``.
    :param cost_model: what a step costs (:mod:`trim_env.cost`); default
        :class:`~trim_env.cost.StrongTokensCost`, the strong rewrite's tokens.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        trees: RolloutTrees,
        observation: str = "agg",
        lam: float = 0.01,
        cost_unit_tokens: float = DEFAULT_COST_UNIT_TOKENS,
        seed: int | None = 0,
        shuffle: bool = True,
        queries: np.ndarray | list[int] | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        super().__init__()
        lam, cost_unit_tokens = check_settings(trees, observation, lam, cost_unit_tokens, seed)
        self.cost_model = check_cost_model(trees, cost_model)
        # Under strong tokens a step's cost is its rewrite's tokens: the rewards are computed as
        # before cost models existed, bit for bit, without pricing calls.
        self._priced = not isinstance(self.cost_model, StrongTokensCost)
        #: Routing events (node, child, regenerated) written since the last reward (priced models only).
        self._events: list[tuple[int, int, bool]] = []
        self.trees = trees
        self.observation = observation
        self.lam = lam
        self.cost_unit_tokens = cost_unit_tokens
        self.shuffle = bool(shuffle)
        self._cost_per_token = lam / cost_unit_tokens
        self._lazy = isinstance(trees, GrowingTrees)
        self.queries = check_queries(trees, queries)
        self._query_set = set(self.queries.tolist())

        self.action_space = spaces.Discrete(2)
        if observation == "agg":
            high = np.ones(len(AGG_FEATURES), dtype=np.float32)
            high[AGG_FEATURES.index("tokens")] = TOKEN_FEATURE_HIGH
            high[AGG_FEATURES.index("strong_steps_used")] = MAX_STEPS / STRONG_STEP_SCALE
            self.observation_space = spaces.Box(np.zeros_like(high), high, dtype=np.float32)
        else:
            high = np.ones((MAX_STEPS, len(SEQ_CHANNELS)), dtype=np.float32)
            high[:, SEQ_CHANNELS.index("tokens")] = TOKEN_FEATURE_HIGH
            self.observation_space = spaces.Box(np.zeros_like(high), high, dtype=np.float32)

        self._refresh()
        self._set_order(seed)
        self._seq = np.zeros((MAX_STEPS, len(SEQ_CHANNELS)), dtype=np.float32)
        self._node = -1
        self._done = True
        self._started = False
        self._query = -1
        self._strong_tokens = 0
        self._cost = 0.0
        self._unpaid = 0.0
        self._escalations = 0
        self._steps = 0
        self._cap_reached = False
        #: Queries passed over by ``reset`` because they have no decision node (all resets).
        self.skipped_total = 0

    # ------------------------------------------------------------------------------------------
    # Setup helpers

    def _refresh(self) -> None:
        """(Re-)read the hot node arrays; a lazy source may reallocate them on expand."""
        trees = self.trees
        (
            self._weak_child,
            self._strong_child,
            self._tokens,
            self._prm,
            self._is_strong,
            self._terminal,
            self._correct,
            self._depth,
            self._strong_steps,
            self._path_min,
        ) = (_view(getattr(trees, name)) for name in _HOT)
        self._root = _view(trees.root)
        self._generation = trees.generation

    def _grow(self, node: int, strong: bool) -> None:
        nodes = np.array([node], dtype=np.int64)
        (self.trees.grow_strong if strong else self.trees.grow_weak)(nodes)
        self._refresh()

    def _set_order(self, seed: int | None) -> None:
        self._order_rng = np.random.default_rng(seed)
        order = self._order_rng.permutation(self.queries) if self.shuffle else self.queries.copy()
        self._order = order.tolist()
        self._position = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_weak_child", "_strong_child", "_tokens", "_prm", "_is_strong", "_terminal",
                     "_correct", "_depth", "_strong_steps", "_path_min", "_root"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._refresh()

    # ------------------------------------------------------------------------------------------
    # Episode mechanics

    def _accept(self, child: int) -> None:
        """Write the step leading to ``child`` into the prefix."""
        if self.observation == "seq":
            tokens = self._tokens[child] / TOKEN_SCALE
            self._seq[self._steps] = (
                self._prm[child],
                tokens if tokens < TOKEN_FEATURE_HIGH else TOKEN_FEATURE_HIGH,
                self._is_strong[child],
                1.0,
            )
        self._steps += 1

    def _play_to_decision(self, node: int) -> int:
        """From ``node``, accept weak steps while regenerating is impossible; stop at a decision node or the end."""
        terminal = self._terminal
        while not terminal[node]:
            if self._lazy:
                if self._weak_child[node] < 0:
                    self._grow(node, strong=False)
                    terminal = self._terminal
                if self.trees.strong_possible(np.array([node]))[0]:
                    return node
            elif self._strong_child[node] >= 0:
                return node
            self._cap_reached = True
            if self._priced:
                self._events.append((node, self._weak_child[node], False))
            node = self._weak_child[node]
            self._accept(node)
        return node

    def _charge(self) -> None:
        """Price the events written since the last call, in order, into the episode's cost and the unpaid cost."""
        if not self._events:
            return
        nodes, children, regenerated = (np.array(column) for column in zip(*self._events))
        self._events.clear()
        for cost in step_cost(self.cost_model, self.trees, nodes, children, regenerated).tolist():
            self._unpaid += cost
            self._cost += cost

    def _start(self, query: int) -> int:
        """Begin an episode at ``query``'s root and play up to its first decision node (or its end)."""
        self._query = query
        self._strong_tokens = 0
        self._cost = 0.0
        self._unpaid = 0.0
        self._events.clear()
        self._escalations = 0
        self._steps = 0
        self._cap_reached = False
        if self.observation == "seq":
            self._seq.fill(0.0)
        node = self._play_to_decision(self._root[query])
        if self._priced:
            self._charge()
        return node

    def _obs(self) -> np.ndarray:
        node = self._node
        proposal = self._weak_child[node]
        tokens = self._tokens[proposal] / TOKEN_SCALE
        if tokens > TOKEN_FEATURE_HIGH:
            tokens = TOKEN_FEATURE_HIGH
        if self.observation == "agg":
            return np.array(
                (
                    self._prm[proposal],
                    self._path_min[node],
                    tokens,
                    (self._depth[node] + 1) / MAX_STEPS,
                    self._strong_steps[node] / STRONG_STEP_SCALE,
                    self._prm[node],
                    self._is_strong[node],
                ),
                dtype=np.float32,
            )
        self._seq[self._steps] = (self._prm[proposal], tokens, 0.0, 1.0)
        return self._seq.copy()

    def _info(self) -> dict[str, Any]:
        query = self._query
        return {
            "query_index": query,
            "query_id": self.trees.query_id[query],
            "node": self._node,
            "strong_tokens": self._strong_tokens,
            "cost": self._cost if self._priced else float(self._strong_tokens),
            "escalations": self._escalations,
            "step": self._steps,
        }

    # ------------------------------------------------------------------------------------------
    # Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the next query's episode (see the module docstring for the order and options)."""
        super().reset(seed=seed)
        if self._generation != self.trees.generation:  # another holder of the trees grew them
            self._refresh()
        if seed is not None:
            self._set_order(seed)
        skipped: list[tuple[int, int]] = []
        options = options or {}
        unknown = set(options) - {"query_index"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; known: ['query_index']")
        if options.get("query_index") is not None:
            query = options["query_index"]
            if isinstance(query, bool) or not isinstance(query, (int, np.integer)):
                raise ValueError(f"options['query_index'] = {query!r} must be an integer query index")
            query = int(query)
            if not 0 <= query < self.trees.num_queries:
                raise ValueError(f"options['query_index'] = {query} is out of range [0, {self.trees.num_queries})")
            if query not in self._query_set:
                raise ValueError(f"options['query_index'] = {query} is not among this env's queries")
            node = self._start(query)
            if self._terminal[node]:
                self._done = True
                raise ValueError(
                    f"options['query_index'] = {query}: query {self.trees.query_id[query]!r} has no decision "
                    "node (no strong rewrite anywhere on its weak path); there is nothing to ask"
                )
        else:
            while True:
                query = self._order[self._position]
                self._position = (self._position + 1) % len(self._order)
                node = self._start(query)
                if not self._terminal[node]:
                    break
                skipped.append((query, int(self._correct[node])))
                self.skipped_total += 1
                if len(skipped) >= len(self._order):
                    self._done = True
                    raise RuntimeError(
                        f"none of this env's {len(self._order)} queries has a decision node "
                        "(no strong child on any weak path, e.g. trees built with max_strong_steps=0)"
                    )
        self._node = node
        self._done = False
        self._started = True
        info = self._info()
        info["skipped"] = skipped
        return self._obs(), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Continue (0) or regenerate (1) the proposed step; returns (obs, reward, terminated, False, info)."""
        if self._done:
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")
        if self._generation != self.trees.generation:  # another holder of the trees grew them
            self._refresh()
        node = self._node
        if action == ACTION_REGENERATE and self._strong_child[node] < 0:
            self._grow(node, strong=True)
        if action == ACTION_REGENERATE and self._strong_child[node] >= 0:
            child = self._strong_child[node]
            tokens = self._tokens[child]
            self._strong_tokens += tokens
            self._escalations += 1
            reward = -self._cost_per_token * tokens
            if self._priced:
                self._events.append((node, child, True))
        elif action in (ACTION_CONTINUE, ACTION_REGENERATE):
            # A spent source cannot rewrite the step: the weak model plays on, as past the cap.
            self._cap_reached |= action == ACTION_REGENERATE
            child = self._weak_child[node]
            reward = 0.0
            if self._priced:
                self._events.append((node, child, False))
        else:
            raise ValueError(f"action = {action!r} must be 0 (continue) or 1 (regenerate)")
        self._accept(child)
        node = self._play_to_decision(child)
        self._node = node
        if self._priced:
            self._charge()
            reward = -self._cost_per_token * self._unpaid
            self._unpaid = 0.0
        info = self._info()
        if self._terminal[node]:
            correct = self._correct[node]
            reward += correct
            self._done = True
            info["correct"] = correct
            info["cap_reached"] = self._cap_reached
            # The final observation is never used for a decision; return the last one's shape.
            obs: np.ndarray
            if self.observation == "agg":
                obs = np.zeros(len(AGG_FEATURES), dtype=np.float32)
            else:
                obs = self._seq.copy()
            return obs, float(reward), True, False, info
        return self._obs(), float(reward), False, False, info

    # ------------------------------------------------------------------------------------------
    # Conveniences

    @property
    def current_node(self) -> int:
        """The node of the current decision (or the terminal node once the episode ended)."""
        return self._node

    @property
    def num_queries(self) -> int:
        return len(self.queries)
