"""Router observations: what a deployed router knows at a decision, as Agg and Seq feature arrays.

A router deciding at node ``n`` knows the PRM scores and token counts of the steps already in the
prefix (strong rewrites included) and of the weak step just proposed. It never sees the strong
rewrite's length or outcome, the hidden state or the final answer.

Scaling (fixed, so exported routers need no statistics): PRM scores are in [0, 1] as they are;
token counts are divided by :data:`TOKEN_SCALE` and clipped at :data:`TOKEN_FEATURE_HIGH` (10,000
tokens, to keep observation spaces bounded); the step index is divided by :data:`MAX_STEPS`;
strong steps used by :data:`STRONG_STEP_SCALE`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from trim_env.tree import MAX_STEPS, RolloutTrees

TOKEN_SCALE = 100.0
TOKEN_FEATURE_HIGH = 100.0
STRONG_STEP_SCALE = 5.0

#: Columns of the aggregate (TRIM-Agg) observation, in order.
AGG_FEATURES: tuple[str, ...] = (
    "prm",  # r_t: PRM score of the proposed weak step
    "min_previous_prm",  # min r_<t over the prefix (1.0 before the first step)
    "tokens",  # c_t: tokens of the proposed weak step / TOKEN_SCALE
    "step",  # t / MAX_STEPS (t = 1 for the first step)
    "strong_steps_used",  # strong rewrites already in the prefix / STRONG_STEP_SCALE
    "previous_prm",  # r_{t-1} (1.0 before the first step)
    "previous_was_strong",  # 1 if the previous step is a strong rewrite
)
#: Channels of each row of the sequence (TRIM-Seq) observation; rows are steps 1..t, the last
#: valid row is the proposed step, rows after it are zero padding with mask 0.
SEQ_CHANNELS: tuple[str, ...] = ("prm", "tokens", "is_strong", "mask")
#: The column a λ-conditioned Agg observation appends to :data:`AGG_FEATURES`.
LAMBDA_FEATURE = "log_lambda"


@dataclass(frozen=True)
class LambdaRange:
    """The cost weights a λ-conditioned router was trained for, and how it observes λ.

    The policy reads λ as ``log(λ / low) / log(high / low)``: 0 at ``low``, 1 at ``high``. On a log
    scale because the frontier's operating points are spread over orders of magnitude (λ from
    0.0005 to 0.02 moves c(π) from ~0.9 to ~0.15), so a log-uniform draw trains every part of it
    about equally, where a uniform draw would spend most episodes on the cheap end.

    :param low: smallest λ (> 0).
    :param high: largest λ (> ``low``).
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 < self.low < self.high):
            raise ValueError(f"lambda_range = [{self.low}, {self.high}] must be two finite numbers with 0 < low < high")

    def check(self, lam: float, key: str = "lambda") -> float:
        """``lam`` as a float if the range holds it; the error names ``key`` and the range."""
        value = float(lam)
        if not self.low <= value <= self.high:
            raise ValueError(f"{key} = {lam} is outside the λ range [{self.low:g}, {self.high:g}] this router was trained for")
        return value

    def feature(self, lam: np.ndarray | float) -> np.ndarray:
        """The observed value of each λ (float32)."""
        return (np.log(np.asarray(lam, dtype=np.float64) / self.low) / math.log(self.high / self.low)).astype(np.float32)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` draws, log-uniform on the range."""
        return np.exp(rng.uniform(math.log(self.low), math.log(self.high), size))


def with_lambda(observations: np.ndarray, lam: np.ndarray | float, lambda_range: LambdaRange) -> np.ndarray:
    """Agg observations (B, 7) with the λ column appended: (B, 8)."""
    observations = np.asarray(observations, dtype=np.float32)
    column = np.broadcast_to(lambda_range.feature(lam), observations.shape[:-1])[..., None]
    return np.concatenate([observations, column], axis=-1)


def agg_features(trees: RolloutTrees, nodes: np.ndarray) -> np.ndarray:
    """Aggregate observations at decision ``nodes`` (their children must exist), shape (B, 7)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    proposal = trees.weak_child[nodes]
    out = np.empty((len(nodes), len(AGG_FEATURES)), dtype=np.float32)
    out[:, 0] = trees.step_prm[proposal]
    out[:, 1] = trees.path_min_prm[nodes]
    out[:, 2] = np.minimum(trees.step_tokens[proposal] / TOKEN_SCALE, TOKEN_FEATURE_HIGH)
    out[:, 3] = (trees.depth[nodes] + 1) / MAX_STEPS
    out[:, 4] = trees.strong_steps[nodes] / STRONG_STEP_SCALE
    out[:, 5] = trees.step_prm[nodes]  # the root's "step" score is 1.0 by convention
    out[:, 6] = trees.step_is_strong[nodes]
    return out


def seq_features(trees: RolloutTrees, nodes: np.ndarray) -> np.ndarray:
    """Sequence observations at decision ``nodes``, shape (B, MAX_STEPS, 4)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    batch = np.arange(len(nodes))
    out = np.zeros((len(nodes), MAX_STEPS, len(SEQ_CHANNELS)), dtype=np.float32)
    proposal = trees.weak_child[nodes]
    row = trees.depth[nodes].astype(np.int64)
    out[batch, row] = np.stack(
        [
            trees.step_prm[proposal],
            np.minimum(trees.step_tokens[proposal] / TOKEN_SCALE, TOKEN_FEATURE_HIGH),
            np.zeros(len(nodes)),
            np.ones(len(nodes)),
        ],
        axis=1,
    )
    current = nodes.copy()
    while True:
        has_step = trees.parent[current] >= 0
        if not has_step.any():
            break
        at, step_node = batch[has_step], current[has_step]
        out[at, trees.depth[step_node].astype(np.int64) - 1] = np.stack(
            [
                trees.step_prm[step_node],
                np.minimum(trees.step_tokens[step_node] / TOKEN_SCALE, TOKEN_FEATURE_HIGH),
                trees.step_is_strong[step_node],
                np.ones(len(step_node)),
            ],
            axis=1,
        )
        current[has_step] = trees.parent[step_node]
    return out


def observation_from_steps(
    steps: Sequence[tuple[float, int, bool]], proposal_prm: float, proposal_tokens: int, kind: str = "agg"
) -> np.ndarray:
    """One decision's observation from the steps written so far, for routing outside a tree (live).

    Equals :func:`agg_features` / :func:`seq_features` at the tree node whose prefix is ``steps``
    and whose weak proposal has score ``proposal_prm`` and ``proposal_tokens`` tokens.

    :param steps: the prefix's steps in order, each (PRM score, tokens, written by the strong model).
    :param proposal_prm: PRM score of the proposed weak step.
    :param proposal_tokens: tokens of the proposed weak step.
    :param kind: ``"agg"`` (shape ``(7,)``) or ``"seq"`` (shape ``(MAX_STEPS, 4)``).
    """
    if len(steps) >= MAX_STEPS:
        raise ValueError(f"{len(steps)} steps written: a decision needs a prefix shorter than MAX_STEPS = {MAX_STEPS}")
    tokens = min(proposal_tokens / TOKEN_SCALE, TOKEN_FEATURE_HIGH)
    if kind == "agg":
        previous_prm, _, previous_strong = steps[-1] if steps else (1.0, 0, False)
        return np.array(
            (
                proposal_prm,
                min((prm for prm, _, _ in steps), default=1.0),
                tokens,
                (len(steps) + 1) / MAX_STEPS,
                sum(is_strong for _, _, is_strong in steps) / STRONG_STEP_SCALE,
                previous_prm,
                previous_strong,
            ),
            dtype=np.float32,
        )
    if kind != "seq":
        raise ValueError(f"kind = {kind!r} must be 'agg' or 'seq'")
    out = np.zeros((MAX_STEPS, len(SEQ_CHANNELS)), dtype=np.float32)
    for row, (prm, step_tokens, is_strong) in enumerate(steps):
        out[row] = (prm, min(step_tokens / TOKEN_SCALE, TOKEN_FEATURE_HIGH), is_strong, 1.0)
    out[len(steps)] = (proposal_prm, tokens, 0.0, 1.0)
    return out
