"""Calibrated simulator of weak/strong step generation and PRM scores, writing rollout trees.

The simulator is a hidden-state process in the spirit of TRIM-POMDP. Each query has a latent
difficulty ``z ~ N(0, 1)``; per-step accuracies of the weak and strong model fall with ``z``. The
prefix is in one of three hidden states: correct (S0), only its last step wrong (S2: a strong
rewrite of that step can fix it) or derailed by an earlier error (S1: irrecoverable). After each
step the solution ends with a hazard ``h(t)``; the final answer is right with a probability that
depends on whether the prefix is still clean ("answers fail for reasons beyond step errors").
PRM scores are logit-normal around a state-dependent mean, with a per-query offset so that scores
inside one trajectory are correlated. Token counts are log-normal with a per-query scale; a strong
rewrite's length follows the weak step it replaces. A query's prompt length (``prompt_tokens``:
chat template, system prompt and problem) is a fixed template length plus a log-normal problem
length whose log-mean depends on the visible level, fitted to MATH-500 (:class:`SimulatorParams`).

Randomness is keyed on the *path*: every node's draws come from a counter-based hash of
``(seed, query, actions so far)``. So the same node always gets the same step whichever way it
is reached, a cached tree and the lazy (uncapped) simulator agree node for node, output is
byte-identical for a seed, and calibration uses common random numbers for free.

Command line: ``trim-simulate`` (:mod:`agents.cli.simulate`) calls :func:`generate_dataset`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, ndtri

from trim_env.keys import mix, simulated_query_keys
from trim_env.store import ChildBatch, GrowingTrees
from trim_env.tree import (
    MAX_STEPS,
    STATE_CORRECT,
    STATE_DERAILED,
    STATE_LAST_STEP_WRONG,
    RolloutTrees,
    save_dataset,
)

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class SimulatorParams:
    """Every figure of the simulated process (a preset is a JSON file of these fields)."""

    #: Logit of the weak model's next-step accuracy (given a correct prefix) at difficulty z = 0.
    weak_step_logit: float = 2.0
    #: Logit of the strong model's next-step accuracy at z = 0.
    strong_step_logit: float = 3.6
    #: Decrease of the weak per-step logit per standard deviation of difficulty.
    weak_difficulty_slope: float = 0.8
    #: Decrease of the strong per-step logit per standard deviation of difficulty.
    strong_difficulty_slope: float = 0.8
    #: P(final answer correct | no uncorrected step error).
    final_correct_if_clean: float = 0.92
    #: P(final answer correct | an uncorrected error in the solution).
    final_correct_if_derailed: float = 0.06
    #: Termination hazard h(t) = max * sigmoid((t - midpoint) / width) for step t (1-based); h(30) = 1.
    weak_hazard_max: float = 0.23
    weak_hazard_midpoint: float = 5.0
    weak_hazard_width: float = 1.0
    strong_hazard_max: float = 0.22
    strong_hazard_midpoint: float = 5.5
    strong_hazard_width: float = 1.0
    #: Shift of the hazard logit per SD of difficulty (harder queries have longer solutions).
    hazard_difficulty_slope: float = 0.2
    #: Mean tokens of a weak / strong step.
    weak_tokens_per_step: float = 51.0
    strong_tokens_per_step: float = 60.0
    #: Log-scale SD of a query's token scale and of a single step's length.
    tokens_query_sd: float = 0.3
    tokens_step_sd: float = 0.5
    #: Weight of the replaced weak step's log-length in the strong rewrite's log-length.
    rewrite_length_correlation: float = 0.5
    #: Multiplier on the length of a wrong step (errors come in longer steps).
    wrong_step_length_factor: float = 1.2
    #: Logit-normal PRM score: mean logit for a correct step, a wrong step (S2), a step after an error (S1).
    prm_logit_correct: float = 3.0
    prm_logit_last_wrong: float = -2.0
    prm_logit_derailed: float = 0.0
    prm_noise_sd: float = 1.8
    #: SD of a per-query PRM logit offset (correlates scores inside a trajectory).
    prm_query_sd: float = 0.8
    #: Decrease of every PRM logit per SD of difficulty.
    prm_difficulty_slope: float = 0.3
    #: Visible difficulty level 1-5 = quantile bucket of (z + noise); proportions of each level.
    level_noise_sd: float = 0.6
    level_proportions: tuple[float, ...] = (0.086, 0.18, 0.21, 0.256, 0.268)
    #: Number of noisy per-query features (stand-ins for text) and the SD of their noise.
    n_features: int = 4
    feature_noise_sd: float = 1.0
    #: Problem length in tokens is log-normal given the visible level: log-mean for levels 1-5 and
    #: log-SD (pooled within levels). Fitted to the 500 MATH-500 problems shipped in
    #: ``trim_env/data/problems/math500`` tokenised with the Qwen2/Qwen2.5 tokenizer (llama.cpp's
    #: ``ggml-vocab-qwen2.gguf`` vocabulary): mean 70.9 tokens, median 50, range 8-791; the rule of
    #: thumb characters / 4 undercounts these LaTeX-heavy problems by about 1.45x.
    prompt_log_mean: tuple[float, ...] = (3.549, 3.687, 3.796, 4.057, 4.331)
    prompt_log_sd: float = 0.666
    #: Tokens of the prompt around the problem: Qwen2.5's ChatML template with the default system
    #: prompt (:data:`trim_env.sources.base.DEFAULT_SYSTEM_PROMPT`) is 28 tokens.
    prompt_template_tokens: int = 28

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SimulatorParams:
        """Load preset ``name`` from ``trim_env/presets/`` and apply ``overrides``."""
        path = PRESET_DIR / f"{name}.json"
        if not path.exists():
            available = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
            raise ValueError(f"unknown simulator preset {name!r}; available: {available}")
        content = json.loads(path.read_text())
        # A preset either lists every parameter or names a base preset and what it changes.
        values = dict(cls.preset(content["base"]).__dict__) if "base" in content else {}
        values.update(content.get("params", {}))
        return cls.from_dict({**values, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SimulatorParams:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown simulator parameter(s) {unknown}; known: {sorted(names)}")
        converted: dict[str, Any] = {}
        for key, value in values.items():
            default = names[key].default
            if isinstance(default, tuple):
                converted[key] = tuple(float(v) for v in value)
            elif isinstance(default, int) and not isinstance(default, bool):
                converted[key] = int(value)
            else:
                converted[key] = float(value)
        params = cls(**converted)
        params.validate()
        return params

    def validate(self) -> None:
        for name in ("final_correct_if_clean", "final_correct_if_derailed", "weak_hazard_max", "strong_hazard_max"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"simulator parameter {name} = {value} must be a probability in [0, 1]")
        for name in ("weak_tokens_per_step", "strong_tokens_per_step", "weak_hazard_width", "strong_hazard_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"simulator parameter {name} = {getattr(self, name)} must be positive")
        if len(self.level_proportions) != 5 or abs(sum(self.level_proportions) - 1) > 1e-6:
            raise ValueError(f"level_proportions = {self.level_proportions} must be 5 numbers summing to 1")
        if len(self.prompt_log_mean) != 5:
            raise ValueError(f"prompt_log_mean = {self.prompt_log_mean} must be 5 numbers (one log-mean per level 1-5)")
        if self.prompt_log_sd < 0 or self.prompt_template_tokens < 0:
            raise ValueError(f"simulator parameters prompt_log_sd = {self.prompt_log_sd} and prompt_template_tokens = "
                             f"{self.prompt_template_tokens} must be >= 0")

    def hazard(self, model_is_strong: np.ndarray, step: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
        """P(the solution ends at ``step`` | it reached it), for weak or strong steps."""
        peak = np.where(model_is_strong, self.strong_hazard_max, self.weak_hazard_max)
        mid = np.where(model_is_strong, self.strong_hazard_midpoint, self.weak_hazard_midpoint)
        width = np.where(model_is_strong, self.strong_hazard_width, self.weak_hazard_width)
        base = peak * expit((step - mid) / width)
        logit = np.log(np.clip(base, 1e-9, 1 - 1e-9) / np.clip(1 - base, 1e-9, None))
        hazard = expit(logit - self.hazard_difficulty_slope * difficulty)
        return np.where(step >= MAX_STEPS, 1.0, hazard)


# ----------------------------------------------------------------------------------------------
# Counter-based randomness keyed on paths (node keys: trim_env.keys)

_STREAM = np.uint64(0x9E3779B97F4A7C15)
#: The salt of draw number ``s`` of a key is ``_STREAM * (s + 1)`` (wrapping).
_STREAM_SALTS = _STREAM * np.arange(1, 17, dtype=np.uint64)
_MANTISSA_SHIFT = np.uint64(11)


def _uniforms(key: np.ndarray, streams: list[int]) -> np.ndarray:
    """Uniform draws in (0, 1): column ``j`` is draw number ``streams[j]`` of each key."""
    bits = mix(key[:, None] + _STREAM_SALTS[streams]) >> _MANTISSA_SHIFT
    return (bits.astype(np.float64) + 0.5) * 2.0**-53


def _uniform(key: np.ndarray, stream: int) -> np.ndarray:
    """Uniform draw in (0, 1) number ``stream`` of each key."""
    return _uniforms(np.asarray(key, dtype=np.uint64), [stream])[:, 0]


def _normal(key: np.ndarray, stream: int) -> np.ndarray:
    return ndtri(_uniform(key, stream))


# ----------------------------------------------------------------------------------------------
# Per-query latents


@dataclass
class QueryLatents:
    """Hidden and visible per-query quantities (one row per query)."""

    difficulty: np.ndarray
    weak_step_accuracy: np.ndarray
    strong_step_accuracy: np.ndarray
    token_scale: np.ndarray
    prm_offset: np.ndarray
    level: np.ndarray
    features: np.ndarray

    def take(self, rows: np.ndarray) -> QueryLatents:
        """The latents :func:`draw_step` reads, of the given query rows (level and features are not drawn from)."""
        return QueryLatents(
            difficulty=self.difficulty[rows],
            weak_step_accuracy=self.weak_step_accuracy[rows],
            strong_step_accuracy=self.strong_step_accuracy[rows],
            token_scale=self.token_scale[rows],
            prm_offset=self.prm_offset[rows],
            level=self.level,
            features=self.features,
        )


def draw_queries(params: SimulatorParams, keys: np.ndarray) -> QueryLatents:
    """Each query's latents, drawn from its root key."""
    difficulty = _normal(keys, 0)
    noisy = difficulty + params.level_noise_sd * _normal(keys, 1)
    # Levels are quantile buckets of the noisy difficulty, so their proportions match the preset.
    spread = np.sqrt(1 + params.level_noise_sd**2)
    cut_points = spread * ndtri(np.cumsum(params.level_proportions)[:-1])
    level = (np.searchsorted(cut_points, noisy) + 1).astype(np.int8)
    features = np.stack(
        [difficulty + params.feature_noise_sd * _normal(keys, 10 + k) for k in range(params.n_features)], axis=1
    ).astype(np.float32)
    return QueryLatents(
        difficulty=difficulty,
        weak_step_accuracy=expit(params.weak_step_logit - params.weak_difficulty_slope * difficulty),
        strong_step_accuracy=expit(params.strong_step_logit - params.strong_difficulty_slope * difficulty),
        token_scale=params.tokens_query_sd * _normal(keys, 2),
        prm_offset=params.prm_query_sd * _normal(keys, 3) - params.prm_difficulty_slope * difficulty,
        level=level,
        features=features.reshape(len(keys), params.n_features),
    )


#: Draw stream of a root key that prompt lengths come from: no other draw reads it, so adding prompt
#: lengths left every other column of simulated data unchanged.
_PROMPT_STREAM = 5


def draw_prompt_tokens(params: SimulatorParams, keys: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Each query's prompt length in tokens (int64): template + a log-normal problem length given its level (1-5)."""
    log_mean = np.asarray(params.prompt_log_mean, dtype=np.float64)[np.asarray(level, dtype=np.int64) - 1]
    problem = np.maximum(1, np.rint(np.exp(log_mean + params.prompt_log_sd * _normal(keys, _PROMPT_STREAM))))
    return (params.prompt_template_tokens + problem).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _hazard_logits(params: SimulatorParams, is_strong: bool) -> np.ndarray:
    """logit h(t) at difficulty 0 for t = 0..MAX_STEPS (a table, so a batch needs one lookup)."""
    step = np.arange(MAX_STEPS + 1, dtype=np.float64)
    peak, mid, width = (
        (params.strong_hazard_max, params.strong_hazard_midpoint, params.strong_hazard_width)
        if is_strong
        else (params.weak_hazard_max, params.weak_hazard_midpoint, params.weak_hazard_width)
    )
    base = peak * expit((step - mid) / width)
    return np.log(np.clip(base, 1e-9, 1 - 1e-9) / np.clip(1 - base, 1e-9, None))


def draw_step(
    params: SimulatorParams,
    latents: QueryLatents,
    key: np.ndarray,
    parent_state: np.ndarray,
    step: np.ndarray,
    is_strong: bool,
    replaced_tokens: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The content of the steps with path keys ``key`` (``latents`` row-aligned with them).

    Draw streams of a key: 0 step correct, 1 solution ends, 2 token noise, 3 PRM noise, 4 final answer.
    """
    uniform = _uniforms(key, [0, 1, 4, 2, 3])
    token_noise, prm_noise = ndtri(uniform[:, 3:]).T
    accuracy = latents.strong_step_accuracy if is_strong else latents.weak_step_accuracy
    step_correct = uniform[:, 0] < accuracy
    state = np.where(
        parent_state == STATE_CORRECT,
        np.where(step_correct, STATE_CORRECT, STATE_LAST_STEP_WRONG),
        STATE_DERAILED,
    ).astype(np.int8)
    hazard = expit(_hazard_logits(params, is_strong)[step] - params.hazard_difficulty_slope * latents.difficulty)
    ends = uniform[:, 1] < np.where(step >= MAX_STEPS, 1.0, hazard)

    mean_tokens = params.strong_tokens_per_step if is_strong else params.weak_tokens_per_step
    spread = params.tokens_step_sd
    noise = token_noise
    if replaced_tokens is not None:
        # The rewrite of a long step is long: mix the replaced step's standardised log-length in.
        rho = params.rewrite_length_correlation
        weak_log = (np.log(replaced_tokens) - np.log(params.weak_tokens_per_step) - latents.token_scale) / spread
        noise = rho * np.clip(weak_log, -4, 4) + np.sqrt(1 - rho**2) * noise
    wrong = state == STATE_LAST_STEP_WRONG
    log_tokens = np.log(mean_tokens) - spread**2 / 2 + latents.token_scale + spread * noise
    log_tokens += wrong * np.log(params.wrong_step_length_factor)
    tokens = np.maximum(1, np.rint(np.exp(log_tokens))).astype(np.int32)

    # Mean PRM logit by hidden state code (0 correct, 1 derailed, 2 only this step wrong).
    mean_logit = np.array([params.prm_logit_correct, params.prm_logit_derailed, params.prm_logit_last_wrong])[state]
    prm = expit(mean_logit + latents.prm_offset + params.prm_noise_sd * prm_noise).astype(np.float32)

    clean = state == STATE_CORRECT
    p_final = np.where(clean, params.final_correct_if_clean, params.final_correct_if_derailed)
    correct = np.where(ends, uniform[:, 2] < p_final, -1).astype(np.int8)
    return {"step_tokens": tokens, "step_prm": prm, "terminal": ends, "correct": correct, "hidden_state": state}


# ----------------------------------------------------------------------------------------------
# The simulator as a tree source


class SimulatorSource:
    """Draws missing children from the simulator: all parents of a batch in array operations.

    :param params: the simulated process.
    """

    #: Simulated nodes are cheap to draw again: persist in large batches only.
    persist_each_batch = False

    def __init__(self, params: SimulatorParams) -> None:
        self.params = params
        self._latents: dict[int, tuple[np.ndarray, QueryLatents]] = {}

    def available(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {"kind": "simulator", "params": dataclasses.asdict(self.params)}

    def check_split(self, trees: RolloutTrees, where: str) -> None:
        """The simulator draws from path keys alone: it grows any split."""

    def query_latents(self, root_key: np.ndarray) -> QueryLatents:
        """The latents of every query of a store (cached per store's root-key array)."""
        cached = self._latents.get(id(root_key))
        if cached is None or cached[0] is not root_key:
            cached = (root_key, draw_queries(self.params, root_key))
            self._latents[id(root_key)] = cached
        return cached[1]

    def draw(self, store: RolloutTrees, parents: np.ndarray, strong: bool, keys: np.ndarray) -> ChildBatch:
        query = store.query[parents]
        replaced = store.step_tokens[store.weak_child[parents]] if strong else None
        assert store.root_key is not None  # RolloutTrees derives it on construction
        drawn = draw_step(
            self.params,
            self.query_latents(store.root_key).take(query),
            keys,
            store.hidden_state[parents],
            store.depth[parents].astype(np.int64) + 1,
            strong,
            replaced,
        )
        return ChildBatch(
            parents=parents,
            step_tokens=drawn["step_tokens"],
            step_prm=drawn["step_prm"],
            terminal=drawn["terminal"],
            correct=drawn["correct"],
            hidden_state=drawn["hidden_state"],
        )


# ----------------------------------------------------------------------------------------------
# Simulated trees grown on demand


def simulated_query_id(namespace: str, seed: int, index: int) -> str:
    """The id of simulated query ``index`` of population ``namespace`` under ``seed``."""
    return f"sim:{namespace or '-'}:{seed}:{index:06d}"


class SimulatedTrees(GrowingTrees):
    """Rollout trees generated on demand by the simulator (no cap unless one is given).

    Serves the environment and batch evaluator directly: children are drawn when an episode
    needs them (:meth:`grow_weak`, :meth:`grow_strong`).

    :param params: the simulated process.
    :param seed: the simulator seed.
    :param query_indices: which queries of the population to simulate.
    :param max_strong_steps: cap K on strong steps per path (``None``: uncapped).
    :param node_budget: per-query node budget of :meth:`expand_all` (``None``: breadth-first to K).
    :param with_anchors: play the weak-only and strong-only runs now.
    :param namespace: the query population (``"<preset>/<split>"`` for datasets): the same
        indices in two namespaces are different queries.
    """

    def __init__(
        self,
        params: SimulatorParams,
        seed: int,
        query_indices: np.ndarray,
        max_strong_steps: int | None = None,
        node_budget: int | None = None,
        with_anchors: bool = True,
        namespace: str = "",
    ) -> None:
        self.params = params
        self.seed = seed
        self.namespace = namespace
        self.query_indices = np.asarray(query_indices, dtype=np.int64)
        keys = simulated_query_keys(seed, namespace, self.query_indices)
        latents = draw_queries(params, keys)
        n = len(keys)
        zeros = lambda dtype: np.zeros(n, dtype=dtype)  # noqa: E731
        roots = RolloutTrees(
            query=np.arange(n, dtype=np.int32),
            parent=np.full(n, -1, np.int32),
            weak_child=np.full(n, -1, np.int32),
            strong_child=np.full(n, -1, np.int32),
            depth=zeros(np.int16),
            strong_steps=zeros(np.int16),
            step_tokens=zeros(np.int32),
            step_prm=np.ones(n, np.float32),
            step_is_strong=zeros(np.bool_),
            terminal=zeros(np.bool_),
            correct=np.full(n, -1, np.int8),
            hidden_state=np.full(n, STATE_CORRECT, np.int8),
            query_id=[simulated_query_id(namespace, seed, int(i)) for i in self.query_indices],
            root=np.arange(n, dtype=np.int32),
            level=latents.level,
            features=latents.features,
            weak_only_correct=zeros(np.int8),
            weak_only_tokens=zeros(np.int32),
            weak_only_steps=zeros(np.int16),
            strong_only_correct=zeros(np.int8),
            strong_only_tokens=zeros(np.int32),
            strong_only_steps=zeros(np.int16),
            root_key=keys,
            prompt_tokens=draw_prompt_tokens(params, keys, latents.level),
            node_budget=node_budget,
        )
        source = SimulatorSource(params)
        source._latents[id(keys)] = (keys, latents)
        super().__init__(roots, source, max_strong_steps=max_strong_steps)
        self.node_budget = node_budget
        self._node_count = np.ones(n, dtype=np.int64)
        if with_anchors:
            self._anchors()

    def _append_children(self, parents: np.ndarray, strong: np.ndarray, content: Any, keys: np.ndarray) -> np.ndarray:
        ids = super()._append_children(parents, strong, content, keys)
        self._node_count += np.bincount(self.query[ids], minlength=len(self._node_count))
        return ids

    def expand(self, nodes: np.ndarray) -> None:
        """Grow the weak child of ``nodes``, and the strong one where the cap allows, except that
        with a node budget :meth:`expand_all` opens strong children in order of the proposal's score."""
        self.grow_weak(nodes)
        if self.node_budget is None:
            self.grow_strong(nodes)

    def _anchors(self) -> None:
        """Weak-only (all continue) and strong-only (all regenerate, uncapped) runs of every query."""
        uncapped: SimulatedTrees = self
        if self.max_strong_steps is not None or self.node_budget is not None:
            uncapped = SimulatedTrees(self.params, self.seed, self.query_indices, with_anchors=False, namespace=self.namespace)
        for name, regenerate in (("weak_only", False), ("strong_only", True)):
            correct, tokens, steps = follow_constant(uncapped, regenerate)
            setattr(self, f"{name}_correct", correct.astype(np.int8))
            setattr(self, f"{name}_tokens", tokens.astype(np.int32))
            setattr(self, f"{name}_steps", steps.astype(np.int16))

    def to_cached(self) -> RolloutTrees:
        """Freeze into plain :class:`RolloutTrees`, nodes grouped by query in breadth-first order."""
        if ((self.weak_child < 0) & ~self.terminal).any():
            raise RuntimeError("to_cached() needs complete trees: every non-terminal node needs its weak child")
        return self.snapshot(np.lexsort((np.arange(self.num_nodes), self.depth, self.query)))

    def expand_all(self) -> None:
        """Expand every query's tree until all paths have ended.

        Without a node budget, breadth-first: every node with fewer than K strong steps on its path
        gets a strong child. With a budget, the weak-only path comes first; then strong branches
        are opened level by level of the proposal's PRM score (0.02 wide; the steps a router is
        most likely to regenerate first), each completed with weak steps to the end, until the
        query's tree holds ``node_budget`` nodes. The budget is soft: the level under way is
        finished for the query, so a tree can end larger. The last completed level is recorded per
        query in :attr:`strong_branch_cutoff`: a router that regenerates only proposals scoring
        below it never meets a missing strong child (short of the cap K).
        """
        self._complete(self.root)
        self.strong_branch_cutoff = np.full(self.num_queries, np.inf, dtype=np.float32)
        if self.node_budget is None:
            return
        cap = self.max_strong_steps if self.max_strong_steps is not None else MAX_STEPS
        finished = np.zeros(self.num_queries, dtype=bool)
        levels = np.append(np.arange(1, 51) / 50, 1.01)  # the last level admits scores of exactly 1
        for previous, cutoff in zip(np.append(0.0, levels[:-1]), levels):
            while True:
                candidates = np.flatnonzero(
                    (self.weak_child >= 0)
                    & (self.strong_child < 0)
                    & (self.strong_steps < cap)
                    & ~finished[self.query]
                    & (self.step_prm[np.maximum(self.weak_child, 0)] < cutoff)
                )
                if candidates.size == 0:
                    break
                before = self.num_nodes
                self._grow(candidates, strong=True)
                self._complete(np.arange(before, self.num_nodes))
                over = ~finished & (self._node_count >= self.node_budget)
                self.strong_branch_cutoff[over] = previous
                finished |= over
            if finished.all():
                break

    def _complete(self, frontier: np.ndarray) -> None:
        """Expand breadth-first from ``frontier`` until every path below it has ended."""
        frontier = frontier[~self.terminal[frontier]]
        while frontier.size:
            self.expand(frontier)
            children = np.concatenate([self.weak_child[frontier], self.strong_child[frontier]])
            children = children[children >= 0]
            frontier = children[~self.terminal[children] & (self.weak_child[children] < 0)]


def follow_constant(trees: RolloutTrees, regenerate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Play every query with one fixed action; returns (correct, tokens of that model, steps)."""
    node = trees.root.astype(np.int64).copy()
    tokens = np.zeros(len(node), dtype=np.int64)
    steps = np.zeros(len(node), dtype=np.int64)
    active = np.arange(len(node))
    while active.size:
        (trees.grow_strong if regenerate else trees.grow_weak)(node[active])
        child_array = trees.strong_child if regenerate else trees.weak_child
        child = child_array[node[active]]
        node[active] = child
        tokens[active] += trees.step_tokens[child]
        steps[active] += 1
        active = active[~trees.terminal[child]]
    return trees.correct[node].astype(np.int64), tokens, steps


# ----------------------------------------------------------------------------------------------
# Dataset generation


def generate_dataset(
    out: str | Path,
    preset: str,
    n_queries: int,
    seed: int,
    max_strong_steps: int = 4,
    node_budget: int | None = 1500,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Simulate ``n_queries`` queries into a train/test dataset at ``out``; returns the manifest.

    The last ``round(test_fraction * n_queries)`` queries form the test split. Each split is its
    own query population (``"<preset>/<split>"``): its queries are numbered from 0 and never
    coincide with another split's or another preset's.
    """
    if n_queries < 1:
        raise ValueError(f"n_queries = {n_queries} must be at least 1")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction = {test_fraction} must be in [0, 1]")
    params = SimulatorParams.preset(preset, **overrides)
    n_test = int(round(test_fraction * n_queries))
    split_sizes = {"train": n_queries - n_test, "test": n_test}
    splits = {}
    for name, size in split_sizes.items():
        if size == 0:
            continue
        trees = SimulatedTrees(params, seed, np.arange(size), max_strong_steps, node_budget, namespace=f"{preset}/{name}")
        trees.expand_all()
        splits[name] = trees.to_cached()
    source = {
        "kind": "simulator",
        "preset": preset,
        "seed": seed,
        "n_queries": n_queries,
        "test_fraction": test_fraction,
        "params": dataclasses.asdict(params),
        "overrides": overrides,
        "query_ids": "sim:<preset>/<split>:<seed>:<index>",
    }
    return save_dataset(out, splits, source, max_strong_steps, node_budget, overwrite=overwrite)
