"""A batched stable-baselines3 ``VecEnv`` of the step-routing environment: all episodes in array operations.

:class:`StepRoutingVecEnv` plays ``n_envs`` episodes of :class:`~trim_env.env.StepRoutingEnv` at
once. Each ``step`` advances every episode with array indexing into the trees, and grows every
missing child the step needs in one batched call to the store (the strong rewrites asked for, then
the weak proposals of all new prefixes), instead of one Python call per env and per node.

It is the same environment: with the same trees, settings and seed it returns the same
observations, rewards, dones and episode infos as ``DummyVecEnv`` over ``n_envs`` copies of
:class:`~trim_env.env.StepRoutingEnv` whose copy ``i`` is seeded ``seed + i`` (the seeding of
SB3's ``VecEnv.seed``), which a test checks step for step. Env ``i`` walks its own seeded
permutation of the queries, cyclically.

**Cost.** As in the single env, every step written is priced by the env's ``cost_model``
(:func:`trim_env.cost.step_cost`, cost units), passive weak steps included, and each ``step``'s
reward pays ``λ · cost / cost_unit_tokens`` for the steps it wrote; under the default
:class:`~trim_env.cost.StrongTokensCost` only regenerates cost (their tokens).

**Infos.** Only a finished episode's info is filled: ``query_index``, ``query_id``,
``strong_tokens``, ``cost`` (the episode's, in cost units), ``escalations``, ``step``, ``correct``, ``cap_reached``,
``terminal_observation`` and ``TimeLimit.truncated`` (always False); the other envs' infos are
empty, which is all SB3 reads. As in SB3's ``DummyVecEnv``, the automatic reset's info
(``skipped``: queries without a decision node passed over, frozen trees only) goes to
``reset_infos``.

**λ-conditioned episodes.** With ``lambda_range``, every episode draws its own λ (log-uniform on
the range, :class:`~trim_env.features.LambdaRange`) when it starts, pays that λ for its strong
tokens, and observes it as an eighth Agg column (:data:`~trim_env.features.LAMBDA_FEATURE`), so
one policy learns the whole frontier. A finished episode's info also carries its ``lambda``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from trim_env.cost import CostModel, StrongTokensCost, step_cost
from trim_env.env import DEFAULT_COST_UNIT_TOKENS, StepRoutingEnv, check_cost_model, check_queries, check_settings
from trim_env.features import SEQ_CHANNELS, TOKEN_FEATURE_HIGH, TOKEN_SCALE, LambdaRange, agg_features, with_lambda
from trim_env.tree import MAX_STEPS, RolloutTrees


class StepRoutingVecEnv(VecEnv):
    """``n_envs`` step-routing episodes advanced together over one store of trees.

    :param trees: cached or growing trees (all envs share them).
    :param n_envs: number of parallel episodes.
    :param observation: ``"agg"`` or ``"seq"``.
    :param lam: cost weight λ >= 0 (per ``cost_unit_tokens`` strong tokens).
    :param cost_unit_tokens: strong tokens per cost unit (> 0).
    :param seed: env ``i`` shuffles the queries with seed ``seed + i`` (``None``: unseeded).
    :param shuffle: visit queries in seeded random permutations (else in the given order).
    :param queries: the query indices to play (default: all of ``trees``).
    :param lambda_range: draw each episode's λ from this range and show it in the observation
        (Agg only); ``lam`` is then unused.
    :param cost_model: what a step costs (:mod:`trim_env.cost`); default strong tokens.
    """

    def __init__(
        self,
        trees: RolloutTrees,
        n_envs: int = 8,
        observation: str = "agg",
        lam: float = 0.01,
        cost_unit_tokens: float = DEFAULT_COST_UNIT_TOKENS,
        seed: int | None = 0,
        shuffle: bool = True,
        queries: np.ndarray | list[int] | None = None,
        lambda_range: LambdaRange | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        self.lam, self.cost_unit_tokens = check_settings(trees, observation, lam, cost_unit_tokens, seed)
        self.cost_model = check_cost_model(trees, cost_model)
        # Under strong tokens the rewards are computed as before cost models existed, bit for bit.
        self._priced = not isinstance(self.cost_model, StrongTokensCost)
        if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
            raise ValueError(f"n_envs = {n_envs!r} must be a positive integer")
        self.trees = trees
        self.observation = observation
        self.shuffle = bool(shuffle)
        self.queries = check_queries(trees, queries)
        if lambda_range is not None and observation != "agg":
            raise ValueError(f"lambda_range is built for the agg observation, not {observation!r}")
        self.lambda_range = lambda_range
        # The single env's spaces: one definition of what a router observes.
        template = StepRoutingEnv(trees, observation, lam, cost_unit_tokens, None, shuffle, self.queries)
        observation_space = template.observation_space
        assert isinstance(observation_space, spaces.Box)
        if lambda_range is not None:
            observation_space = spaces.Box(np.append(observation_space.low, 0.0).astype(np.float32),
                                           np.append(observation_space.high, 1.0).astype(np.float32), dtype=np.float32)
        super().__init__(int(n_envs), observation_space, spaces.Discrete(2))
        n = self.num_envs
        #: Each env's current λ and what one strong token costs it.
        self._lam = np.full(n, self.lam)
        self._cost_per_token = self._lam / self.cost_unit_tokens
        # Its own stream, so that conditioning leaves the query orders of a seed unchanged.
        self._lambda_rng = np.random.default_rng(None if seed is None else [seed, 1])
        self._orders = [self._order(None if seed is None else seed + rank) for rank in range(n)]
        self._positions = np.zeros(n, dtype=np.int64)
        self._node = np.zeros(n, dtype=np.int64)
        self._query = np.zeros(n, dtype=np.int64)
        self._steps = np.zeros(n, dtype=np.int64)
        self._strong_tokens = np.zeros(n, dtype=np.int64)
        #: Each episode's cost so far and the part of it no reward has paid yet (cost units; priced models).
        self._cost = np.zeros(n, dtype=np.float64)
        self._unpaid = np.zeros(n, dtype=np.float64)
        self._escalations = np.zeros(n, dtype=np.int64)
        self._cap_reached = np.zeros(n, dtype=bool)
        self._seq = np.zeros((n, MAX_STEPS, len(SEQ_CHANNELS)), dtype=np.float32)
        self._actions = np.zeros(n, dtype=np.int64)
        self._started = False
        #: Queries passed over at reset because they have no decision node (frozen trees only).
        self.skipped_total = 0

    def set_lambda(self, lam: float) -> None:
        """Change the cost weight from the next step on (a training schedule may anneal it)."""
        if self.lambda_range is not None:
            raise ValueError("a λ-conditioned env draws each episode's λ from its lambda_range; set_lambda does not apply")
        self.lam, _ = check_settings(self.trees, self.observation, lam, self.cost_unit_tokens, None)
        self._lam[:] = self.lam
        self._cost_per_token = self._lam / self.cost_unit_tokens

    # ------------------------------------------------------------------------------------------
    # Episode mechanics (all arrays over envs)

    def _order(self, seed: int | None) -> np.ndarray:
        return np.random.default_rng(seed).permutation(self.queries) if self.shuffle else self.queries.copy()

    def _accept(self, envs: np.ndarray, child: np.ndarray) -> None:
        """Write the steps leading to ``child`` into the envs' prefixes."""
        if self.observation == "seq":
            trees = self.trees
            rows = self._seq[envs, self._steps[envs]]
            rows[:, 0] = trees.step_prm[child]
            rows[:, 1] = np.minimum(trees.step_tokens[child] / TOKEN_SCALE, TOKEN_FEATURE_HIGH)
            rows[:, 2] = trees.step_is_strong[child]
            rows[:, 3] = 1.0
            self._seq[envs, self._steps[envs]] = rows
        self._steps[envs] += 1

    def _play_to_decision(self, envs: np.ndarray, node: np.ndarray) -> np.ndarray:
        """Accept weak steps where regenerating is impossible, until a decision node or the end."""
        trees = self.trees
        while True:
            open_ = ~trees.terminal[node]
            if not open_.any():
                return node
            trees.grow_weak(node[open_])
            passive = open_ & ~trees.strong_possible(node)
            if not passive.any():
                return node
            self._cap_reached[envs[passive]] = True
            if self._priced:
                self._charge(envs[passive], node[passive], trees.weak_child[node[passive]], np.zeros(int(passive.sum()), dtype=bool))
            node[passive] = trees.weak_child[node[passive]]
            self._accept(envs[passive], node[passive])

    def _charge(self, envs: np.ndarray, nodes: np.ndarray, children: np.ndarray, regenerated: np.ndarray) -> None:
        """Add the cost of one step per env of ``envs`` to its episode's cost and its unpaid cost."""
        cost = step_cost(self.cost_model, self.trees, nodes, children, regenerated)
        self._cost[envs] += cost
        self._unpaid[envs] += cost

    def _start(self, envs: np.ndarray) -> list[list[tuple[int, int]]]:
        """Begin the next query's episode in each of ``envs``; returns the queries skipped per env."""
        skipped: list[list[tuple[int, int]]] = [[] for _ in envs]
        pending = np.arange(len(envs))
        while pending.size:
            at = envs[pending]
            queries = np.array([self._orders[env][self._positions[env]] for env in at], dtype=np.int64)
            self._positions[at] = (self._positions[at] + 1) % len(self.queries)
            self._query[at] = queries
            self._steps[at] = 0
            self._strong_tokens[at] = 0
            self._cost[at] = 0.0
            self._unpaid[at] = 0.0
            self._escalations[at] = 0
            self._cap_reached[at] = False
            self._seq[at] = 0.0
            if self.lambda_range is not None:
                self._lam[at] = self.lambda_range.sample(self._lambda_rng, len(at))
                self._cost_per_token[at] = self._lam[at] / self.cost_unit_tokens
            node = self._play_to_decision(at, self.trees.root[queries].astype(np.int64))
            self._node[at] = node
            dead = self.trees.terminal[node]
            for index in np.flatnonzero(dead):
                skipped[pending[index]].append((int(queries[index]), int(self.trees.correct[node[index]])))
                self.skipped_total += 1
                if len(skipped[pending[index]]) >= len(self.queries):
                    raise RuntimeError(
                        f"none of this env's {len(self.queries)} queries has a decision node "
                        "(no strong child on any weak path, e.g. trees built with max_strong_steps=0)"
                    )
            pending = pending[dead]
        return skipped

    def _observations(self, envs: np.ndarray | None = None) -> np.ndarray:
        trees = self.trees
        node = self._node if envs is None else self._node[envs]
        if self.observation == "agg":
            observations = agg_features(trees, node)
            if self.lambda_range is None:
                return observations
            return with_lambda(observations, self._lam if envs is None else self._lam[envs], self.lambda_range)
        at = np.arange(self.num_envs) if envs is None else envs
        proposal = trees.weak_child[node]
        rows = np.zeros((len(at), len(SEQ_CHANNELS)), dtype=np.float32)
        rows[:, 0] = trees.step_prm[proposal]
        rows[:, 1] = np.minimum(trees.step_tokens[proposal] / TOKEN_SCALE, TOKEN_FEATURE_HIGH)
        rows[:, 3] = 1.0
        self._seq[at, self._steps[at]] = rows
        return self._seq[at].copy()

    # ------------------------------------------------------------------------------------------
    # VecEnv API

    def reset(self) -> np.ndarray:
        """Start a new episode in every env (seeds given by :meth:`seed` rebuild the query orders)."""
        for env, seed in enumerate(self._seeds):
            if seed is not None:
                self._orders[env] = self._order(seed)
                self._positions[env] = 0
        self._reset_seeds()
        self._reset_options()
        skipped = self._start(np.arange(self.num_envs))
        self.reset_infos = [{"skipped": queries} for queries in skipped]
        self._started = True
        return self._observations()

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions).reshape(-1)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {np.shape(actions)}")
        if ((actions != 0) & (actions != 1)).any():
            raise ValueError(f"actions = {actions.tolist()} must be 0 (continue) or 1 (regenerate)")
        self._actions = actions.astype(np.int64)

    def step_wait(self) -> VecEnvStepReturn:
        if not self._started:
            raise RuntimeError("step() called before reset(); call reset()")
        trees = self.trees
        envs = np.arange(self.num_envs)
        node = self._node
        regenerate = self._actions == 1
        if regenerate.any() and (trees.strong_child[node[regenerate]] < 0).any():
            trees.grow_strong(node[regenerate])
        strong = trees.strong_child[node]
        take = regenerate & (strong >= 0)
        # A spent source cannot rewrite the step: the weak model plays on, as past the cap.
        self._cap_reached |= regenerate & ~take
        child = np.where(take, strong, trees.weak_child[node])
        strong_tokens = np.where(take, trees.step_tokens[child], 0)
        self._strong_tokens += strong_tokens
        self._escalations += take
        if self._priced:
            self._charge(envs, node, child, take)
        self._accept(envs, child)
        node = self._play_to_decision(envs, child.astype(np.int64))
        self._node = node
        rewards: np.ndarray
        if self._priced:
            # float64 until the correct answer's +1 is added, as the single env's reward: a step's cost
            # can exceed 1 under a priced model, and float32 would lose its digits against the +1.
            rewards = -self._cost_per_token * self._unpaid
            self._unpaid[:] = 0.0
        else:
            rewards = (-self._cost_per_token * strong_tokens).astype(np.float32)
        dones = trees.terminal[node].copy()
        infos: list[dict[str, Any]] = [{} for _ in envs]
        finished = np.flatnonzero(dones)
        if finished.size:
            correct = trees.correct[node[finished]]
            rewards[finished] += correct
            terminal_obs = (
                np.zeros((finished.size, *self.observation_space.shape), dtype=np.float32)  # type: ignore[misc]
                if self.observation == "agg"
                else self._seq[finished].copy()
            )
            for row, env in enumerate(finished):
                query = int(self._query[env])
                infos[env] = {
                    "query_index": query,
                    "query_id": trees.query_id[query],
                    "strong_tokens": int(self._strong_tokens[env]),
                    "cost": float(self._cost[env]) if self._priced else float(self._strong_tokens[env]),
                    "escalations": int(self._escalations[env]),
                    "step": int(self._steps[env]),
                    "correct": int(correct[row]),
                    "cap_reached": bool(self._cap_reached[env]),
                    "TimeLimit.truncated": False,
                    "terminal_observation": terminal_obs[row],
                }
                if self.lambda_range is not None:
                    infos[env]["lambda"] = float(self._lam[env])
            for env, queries in zip(finished, self._start(finished)):
                self.reset_infos[env] = {"skipped": queries}
        return self._observations(), rewards.astype(np.float32, copy=False), dones, infos

    def close(self) -> None:
        """Persist what the trees grew (nothing else to release)."""
        self.trees.flush()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name) if attr_name != "render_mode" else None
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"StepRoutingVecEnv shares one state across its envs; cannot set {attr_name!r} per env")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        raise AttributeError(f"StepRoutingVecEnv has no per-env objects to call {method_name!r} on")

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    # ------------------------------------------------------------------------------------------
    # Episode state, for resuming a training run

    def get_state(self) -> dict[str, Any]:
        """Everything the next ``step`` depends on, as plain arrays (for a training checkpoint).

        The envs' current nodes are recorded as paths from their query's root (``True`` = strong
        step), not as node ids: a growing store's ids depend on the order its growth shards are
        loaded in, while a path names the same node (the same content) in any process.
        """
        trees = self.trees
        return {
            "observation": self.observation,
            "lam": self.lam,
            "orders": np.stack(self._orders),
            "positions": self._positions.copy(),
            "query": self._query.copy(),
            "paths": [trees.step_is_strong[trees.path(int(node))].astype(bool).tolist() for node in self._node],
            "steps": self._steps.copy(),
            "strong_tokens": self._strong_tokens.copy(),
            "cost": self._cost.copy(),
            "unpaid_cost": self._unpaid.copy(),
            "escalations": self._escalations.copy(),
            "cap_reached": self._cap_reached.copy(),
            "seq": self._seq.copy(),
            "started": self._started,
            "skipped_total": self.skipped_total,
            "episode_lambdas": self._lam.copy(),
            "lambda_rng": self._lambda_rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue the episodes recorded by :meth:`get_state` (same trees' queries, ``n_envs`` and observation).

        Each env's node is found again by walking its path from the root, growing a missing child
        (and the proposal at the node) where the trees can grow (a run that did not persist its growth).

        :raises ValueError: the state is of another env (naming what differs).
        """
        orders = np.asarray(state["orders"])
        if state["observation"] != self.observation:
            raise ValueError(f"env state is of observation {state['observation']!r}, this env has {self.observation!r}")
        if orders.shape != (self.num_envs, len(self.queries)) or not np.array_equal(np.sort(orders[0]), np.sort(self.queries)):
            raise ValueError(
                f"env state holds {orders.shape[0]} envs over {orders.shape[1]} queries; this env has {self.num_envs} "
                f"envs over {len(self.queries)} queries (or other queries)"
            )
        trees = self.trees
        nodes = np.zeros(self.num_envs, dtype=np.int64)
        for env, (query, path) in enumerate(zip(state["query"], state["paths"])):
            node = np.array([trees.root[int(query)]], dtype=np.int64)
            for depth, strong in enumerate(path):
                (trees.grow_strong if strong else trees.grow_weak)(node)
                child = int((trees.strong_child if strong else trees.weak_child)[node[0]])
                if child < 0:
                    raise ValueError(
                        f"env state: env {env}'s node (query {trees.query_id[int(query)]!r}, step {depth + 1} "
                        f"{'strong' if strong else 'weak'}) is not in these trees and cannot be grown"
                    )
                node[0] = child
            nodes[env] = node[0]
        # As at the end of _play_to_decision: the proposal at each decision node exists.
        trees.grow_weak(nodes[~trees.terminal[nodes]])
        if self.lambda_range is None:
            self.set_lambda(float(state["lam"]))
        else:
            self._lam = np.array(state["episode_lambdas"], dtype=np.float64)
            self._cost_per_token = self._lam / self.cost_unit_tokens
            self._lambda_rng.bit_generator.state = state["lambda_rng"]
        self._orders = [row.copy() for row in orders]
        self._positions = np.array(state["positions"], dtype=np.int64)
        self._query = np.array(state["query"], dtype=np.int64)
        self._node = nodes
        self._steps = np.array(state["steps"], dtype=np.int64)
        self._strong_tokens = np.array(state["strong_tokens"], dtype=np.int64)
        # A state saved before cost models were wired has none: its episodes were priced in strong tokens.
        self._cost = np.array(state.get("cost", self._strong_tokens), dtype=np.float64)
        self._unpaid = np.array(state.get("unpaid_cost", np.zeros(self.num_envs)), dtype=np.float64)
        self._escalations = np.array(state["escalations"], dtype=np.int64)
        self._cap_reached = np.array(state["cap_reached"], dtype=bool)
        self._seq = np.array(state["seq"], dtype=np.float32)
        self._started = bool(state["started"])
        self.skipped_total = int(state["skipped_total"])
        # Seeds given before (PPO.load seeds its env) would rebuild the orders at a reset.
        self._reset_seeds()
