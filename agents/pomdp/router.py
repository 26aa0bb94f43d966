"""The TRIM-POMDP router: belief filter + solved policy lookup, its settings, fit, export and load.

:class:`PomdpRouter` reads `seq` observations only (PRM scores, token counts and strong flags of
steps already written, plus the proposal), runs the belief filter over each sequence and compares
the two Q-values of the solved policy at the proposal's step, belief and token bin. It is
stateless, so the same object serves the environment, the batch evaluator and live routing.

An exported router directory holds ``config.json`` (:func:`agents.export.write_router`, kind
``"pomdp"``), the fitted model (``pomdp_model.json``) and the solved tables (``pomdp_policy.npz``).
:meth:`PomdpRouter.fit` fits the model on the training part of the train split (cached across λ:
:func:`agents.pomdp.cache.fit_or_load`) and solves it for λ (:func:`solve_router`, which plans
with the observations the chosen belief filter reads: :func:`planning_for`); there are no
environment steps.

**Cost models.** Under ``cost=price|flops|latency`` the fit prices a rewrite in cost units per
step and token bin (:func:`agents.pomdp.fit.regeneration_cost`: the strong call and its PRM
scoring, beyond the weak proposal and its scoring that every step pays), the solver charges that
at each step, and the validation objective is the priced return, as the environment's. The model
file records the cost model, the router's ``config.json`` too (``cost``), and every re-solve at
another λ (an operating point, the server) reuses the fitted costs. A router is scored under any
cost model (``policy=router``, as every kind: e.g. a strong-token router in dollars); it plans
with the one it was fitted under.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Fitted, Router, RouterSettings, TrainingData
from agents.export import CONFIG_FILE, write_router
from agents.pomdp.belief import FILTERS, track
from agents.pomdp.cache import FitSettings, fit_or_load
from agents.pomdp.model import PomdpModel
from agents.pomdp.solver import (
    DEFAULT_GRID_SIZE,
    Emissions,
    SolvedPolicy,
    planning_emissions,
    solve,
)
from trim_env import atomic
from trim_env.evaluation import run_episodes, validation_objective

MODEL_FILE = "pomdp_model.json"
POLICY_FILE = "pomdp_policy.npz"


@dataclass
class PomdpSettings(RouterSettings):
    """TRIM-POMDP settings (``policy=pomdp``).

    :param filter: belief tracking: ``bayes`` (recursive Bayes filter; plans with the current
        score and the rewrite's score) or ``per_step`` (the authors' P(state | min earlier score,
        current score), uniform prior).
    :param bins: PRM-score bins per axis of the observation model.
    :param token_bins: quantile bins of the proposal's token count.
    :param token_evidence: read each weak step's length (its token bin) as evidence of its state
        beside the PRM score: in the calibrated data a wrong step is longer, which TRIM-Agg sees
        through c_t. Chosen on the validation part of train: APGR 0.964 with, 0.879 without
        (TRIM-Thr 0.795); false gives the scores-only POMDP.
    :param floor: weight of the uniform distribution mixed into the observation model (no zero likelihoods).
    :param grid_size: grid points on the clean-prefix probability; the solver's proven error bound
        is ~1e-4 at 2001.
    :param max_strong_steps: cap on strong steps per solution to plan for: ``data`` = the training
        data's cap K (the environment only continues past it), an integer, or null (uncapped, e.g.
        live routing).
    :param model_cache_dir: fitted models are cached here (relative to the launch directory),
        keyed by data and settings; null: always fit.
    :param observation_data: optional ProcessBench-format JSON list (steps, label, per-step PRM
        scores in ``score_field``) to fit the observation model from instead of the trees' hidden states.
    :param score_field: the records' field holding the PRM scores.
    :param sweep_lambdas: λ grid of the frontier study (``scripts/run_frontier.py``).
    """

    filter: str = "bayes"
    bins: int = 20
    token_bins: int = 8
    token_evidence: bool = True
    floor: float = 1.0e-4
    grid_size: int = DEFAULT_GRID_SIZE
    max_strong_steps: Any = "data"
    model_cache_dir: str | None = "outputs/pomdp_models"
    observation_data: str | None = None
    score_field: str = "prm_scores"
    sweep_lambdas: list[float] = field(
        default_factory=lambda: [0.0005, 0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.025, 0.03, 0.05]
    )

    def check(self) -> PomdpSettings:
        """Refuse values the fit or the solver cannot use; messages name the key."""
        if self.filter not in FILTERS:
            raise ValueError(f"policy.filter = {self.filter!r} is not one of {list(FILTERS)}")
        for name in ("bins", "token_bins", "grid_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"policy.{name} = {getattr(self, name)} must be at least 2")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"policy.floor = {self.floor} must be in [0, 1)")
        cap = self.max_strong_steps
        if not (cap is None or cap == "data" or (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0)):
            raise ValueError(f"policy.max_strong_steps = {cap!r} must be 'data', an integer >= 0 or null")
        return self

    def fit_settings(self) -> FitSettings:
        """The settings a fitted model depends on (its cache key)."""
        return FitSettings(self.bins, self.token_bins, self.floor, self.token_evidence, self.observation_data, self.score_field)


class PomdpRouter(Router):
    """Regenerate iff the solved Q-value of regenerating beats continuing at the filtered belief.

    :param model: the fitted POMDP (the filter reads its transitions and observation model).
    :param policy: the solved tables for one λ.
    :param belief_filter: ``"bayes"`` (recursive filter) or ``"per_step"`` (the authors' belief).
    :param config: the router's self-description (see :class:`~agents.base.Router`).
    """

    kind = "pomdp"
    observation_kind = "seq"
    Settings = PomdpSettings
    supports_cost_models = True

    def __init__(self, model: PomdpModel, policy: SolvedPolicy, belief_filter: str = "bayes", config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        if belief_filter not in FILTERS:
            raise ValueError(f"filter = {belief_filter!r} is not one of {list(FILTERS)}")
        if policy.horizon != model.horizon or policy.rewrite_cost.shape != model.regeneration_cost.shape:
            raise ValueError(
                f"solved policy (horizon {policy.horizon}, rewrite costs of shape {policy.rewrite_cost.shape}) does not fit the "
                f"model (horizon {model.horizon}, rewrite costs of shape {model.regeneration_cost.shape})"
            )
        self.model = model
        self.policy = policy
        self.belief_filter = belief_filter

    def q_values(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q_continue, Q_regenerate) for a batch of `seq` observations."""
        beliefs = track(observations, self.model, self.belief_filter)
        return self.policy.q_values(beliefs.step, beliefs.strong_used, beliefs.belief, self.model.token_bin(beliefs.proposal_tokens))

    def predict(self, observations: np.ndarray) -> np.ndarray:
        q_continue, q_regenerate = self.q_values(observations)
        return (q_regenerate > q_continue).astype(np.int64)

    def operating_point_parameter(self) -> str:
        return "lambda"

    def set_operating_point(self, value: float) -> None:
        """Solve the fitted model again for λ = ``value`` (seconds; the server does it in a worker thread)."""
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"lambda = {value} must be a finite number >= 0")
        if np.isclose(value, self.policy.lam, rtol=1e-12, atol=0.0):
            return
        solved = solve_router(self.model, value, self.policy.cost_unit_tokens, self.belief_filter,
                              int(self.policy.continue_value.shape[-1]), self.policy.max_strong_steps)
        self.policy = solved.policy

    @classmethod
    def fit(cls, settings: PomdpSettings, data: TrainingData, **groups: Any) -> Fitted:
        """Fit (or load the cached fit) on the training part of the train split, solve for λ."""
        from hydra.utils import to_absolute_path  # noqa: PLC0415  (hydra only when fitting: loading or serving a router never imports it)

        settings.check()
        cache_dir = None if settings.model_cache_dir is None else to_absolute_path(str(settings.model_cache_dir))
        model, fit_time, from_cache = fit_or_load(data.trees, data.train_queries, settings.fit_settings(), data.data_key, cache_dir,
                                                  data.cost_model)
        # Trees that grow have no cap (max_strong_steps None); frozen trees keep the data's K.
        cap = data.trees.max_strong_steps if settings.max_strong_steps == "data" else settings.max_strong_steps
        solved = solve_router(model, data.lam, data.cost_unit_tokens, settings.filter, settings.grid_size, cap)
        router = cls(solved.model, solved.policy, solved.belief_filter, {**data.identity(settings), **_export_fields(solved)})
        outcomes = run_episodes(data.validation, router, cost_model=data.cost_model)
        summary = {
            "validation_objective": validation_objective(outcomes.correct, outcomes.cost, data.lam, data.cost_unit_tokens),
            "train_wall_time_s": fit_time + router.policy.solve_time_s,
            "env_steps": 0,
            "solve_time_s": router.policy.solve_time_s,
            "fit_time_s": fit_time,
            "model_from_cache": from_cache,
            "solver_error_bound": router.policy.error_bound,
        }
        return Fitted(router, summary)

    def save(self, directory: str | Path) -> Path:
        """``config.json``, the fitted model and the solved tables."""
        return export_router(directory, self, self.config)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> PomdpRouter:
        return _load_pomdp(directory, config)


def planning_for(model: PomdpModel, belief_filter: str) -> Emissions:
    """The planning observations that match a filter: the recursive filter sees the current score
    (earlier ones are in the belief) and a rewrite's score; the per-step belief sees (min earlier, current)."""
    if belief_filter not in FILTERS:
        raise ValueError(f"filter = {belief_filter!r} is not one of {list(FILTERS)}")
    bayes = belief_filter == "bayes"
    return planning_emissions(model.observation, model.horizon, joint=not bayes, observe_rewrite=bayes,
                              token_likelihood=model.token_likelihood)


def solve_router(model: PomdpModel, lam: float, cost_unit_tokens: float, belief_filter: str,
                 grid_size: int = DEFAULT_GRID_SIZE, max_strong_steps: int | None = None) -> PomdpRouter:
    """Solve the POMDP for ``lam`` (with a cap of ``max_strong_steps`` strong steps, if any) and wrap
    it in a router using ``belief_filter``."""
    policy = solve(model, lam, cost_unit_tokens, planning_for(model, belief_filter), grid_size, max_strong_steps)
    return PomdpRouter(model, policy, belief_filter)


# ----------------------------------------------------------------------------------------------
# Export and load


def export_router(directory: str | Path, router: PomdpRouter, config: dict[str, Any]) -> Path:
    """Write ``config.json`` (kind ``"pomdp"``), the fitted model and the solved tables to ``directory``.

    :param directory: the router directory (created).
    :param router: the router to export.
    :param config: common fields (policy, lambda, cost unit, dataset hash) for ``config.json``.
    """
    policy = router.policy
    directory = write_router(directory, {**config, **_export_fields(router)})
    router.model.save(directory / MODEL_FILE)
    atomic.write_atomic(directory / POLICY_FILE, lambda scratch: _save_tables(scratch, policy))
    return directory


def _export_fields(router: PomdpRouter) -> dict[str, Any]:
    """The ``config.json`` fields of a POMDP router beside the common ones."""
    policy = router.policy
    return {
        "kind": PomdpRouter.kind,
        "observation": "seq",
        "filter": router.belief_filter,
        "grid_size": int(policy.continue_value.shape[-1]),
        "max_strong_steps": policy.max_strong_steps,
        "error_bound": policy.error_bound,
        "model_file": MODEL_FILE,
        "policy_file": POLICY_FILE,
    }


def _save_tables(path: Path, policy: SolvedPolicy) -> None:
    with open(path, "wb") as handle:  # a file handle: np.savez would add ".npz" to the temporary name
        np.savez(
            handle,
            continue_value=policy.continue_value,
            regenerate_value=policy.regenerate_value,
            start_value=policy.start_value,
            rewrite_cost=policy.rewrite_cost,
            lam=policy.lam,
            cost_unit_tokens=policy.cost_unit_tokens,
            max_strong_steps=-1 if policy.max_strong_steps is None else policy.max_strong_steps,  # -1: uncapped
            error_bound=policy.error_bound,
            solve_time_s=policy.solve_time_s,
        )


def _load_pomdp(directory: Path, config: dict[str, Any]) -> PomdpRouter:
    config_path = directory / CONFIG_FILE
    model = PomdpModel.load(directory / config.get("model_file", MODEL_FILE))
    policy_path = directory / config.get("policy_file", POLICY_FILE)
    if not policy_path.exists():
        raise FileNotFoundError(f"{policy_path}: missing; the router directory is incomplete")
    with np.load(policy_path) as tables:
        required = {"continue_value", "regenerate_value", "start_value", "rewrite_cost", "lam", "cost_unit_tokens",
                    "max_strong_steps", "error_bound", "solve_time_s"}
        missing = sorted(required - set(tables.files))
        if missing:
            raise ValueError(f"{policy_path}: missing arrays {missing}")
        policy = SolvedPolicy(
            continue_value=tables["continue_value"],
            regenerate_value=tables["regenerate_value"],
            start_value=tables["start_value"],
            rewrite_cost=tables["rewrite_cost"],
            lam=float(tables["lam"]),
            cost_unit_tokens=float(tables["cost_unit_tokens"]),
            max_strong_steps=None if int(tables["max_strong_steps"]) < 0 else int(tables["max_strong_steps"]),
            error_bound=float(tables["error_bound"]),
            solve_time_s=float(tables["solve_time_s"]),
        )
    if config.get("cost") != model.cost_model:  # both absent in strong tokens
        raise ValueError(f"{config_path}: field cost = {config.get('cost')!r} but {directory / MODEL_FILE} prices rewrites under "
                         f"{model.cost_model!r}; the files come from different runs")
    for name in ("lambda", "cost_unit_tokens"):
        stored = policy.lam if name == "lambda" else policy.cost_unit_tokens
        if name in config and not np.isclose(float(config[name]), stored, rtol=1e-12, atol=0.0):
            raise ValueError(f"{config_path}: field {name} = {config[name]} but {policy_path} was solved for {stored}")
    levels = 1 if policy.max_strong_steps is None else policy.max_strong_steps + 1
    for name in ("continue_value", "regenerate_value", "start_value"):
        shape = getattr(policy, name).shape
        if len(shape) != 3 or shape[:2] != (model.horizon, levels):
            raise ValueError(f"{policy_path}: {name} has shape {shape}, expected ({model.horizon}, {levels}, grid size)")
    expected_cost = policy.lam * model.regeneration_cost / policy.cost_unit_tokens
    if policy.rewrite_cost.shape != expected_cost.shape or not np.allclose(policy.rewrite_cost, expected_cost, rtol=1e-9, atol=1e-12):
        raise ValueError(f"{policy_path}: rewrite_cost does not match the model in {directory / MODEL_FILE}; the files come from different runs")
    return PomdpRouter(model, policy, config.get("filter", "bayes"), config)
