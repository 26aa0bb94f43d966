"""The TRIM-POMDP router: belief filter + solved policy lookup, its export/load, and fit-or-load for train.py.

:class:`PomdpRouter` reads `seq` observations only (PRM scores, token counts and strong flags of
steps already written, plus the proposal), runs the belief filter over each sequence and compares
the two Q-values of the solved policy at the proposal's step, belief and token bin. It is
stateless, so the same object serves the environment, the batch evaluator and live routing.

An exported router directory holds ``config.json`` (:func:`agents.export.write_router`, kind
``"pomdp"``), the fitted model (``pomdp_model.json``) and the solved tables (``pomdp_policy.npz``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Router, register_router
from agents.export import CONFIG_FILE, LOADERS, write_router
from agents.pomdp.belief import FILTERS, track
from agents.pomdp.model import (
    FIT_VERSION,
    PomdpModel,
    fit_model,
    observation_samples_from_processbench,
    uniform_bin_edges,
)
from agents.pomdp.solver import (
    DEFAULT_GRID_SIZE,
    Emissions,
    SolvedPolicy,
    planning_emissions,
    solve,
)
from trim_env.tree import RolloutTrees

MODEL_FILE = "pomdp_model.json"
POLICY_FILE = "pomdp_policy.npz"


@register_router("pomdp")
class PomdpRouter(Router):
    """Regenerate iff the solved Q-value of regenerating beats continuing at the filtered belief.

    :param model: the fitted POMDP (the filter reads its transitions and observation model).
    :param policy: the solved tables for one λ.
    :param belief_filter: ``"bayes"`` (recursive filter) or ``"per_step"`` (the authors' belief).
    """

    observation_kind = "seq"

    def __init__(self, model: PomdpModel, policy: SolvedPolicy, belief_filter: str = "bayes") -> None:
        if belief_filter not in FILTERS:
            raise ValueError(f"filter = {belief_filter!r} is not one of {list(FILTERS)}")
        if policy.horizon != model.horizon or len(policy.rewrite_cost) != len(model.rewrite_tokens):
            raise ValueError(
                f"solved policy (horizon {policy.horizon}, {len(policy.rewrite_cost)} token bins) does not fit the model "
                f"(horizon {model.horizon}, {len(model.rewrite_tokens)} token bins)"
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
    directory = write_router(directory, {
        **config,
        "kind": "pomdp",
        "observation": "seq",
        "filter": router.belief_filter,
        "grid_size": int(policy.continue_value.shape[-1]),
        "max_strong_steps": policy.max_strong_steps,
        "error_bound": policy.error_bound,
        "model_file": MODEL_FILE,
        "policy_file": POLICY_FILE,
    })
    router.model.save(directory / MODEL_FILE)
    np.savez(
        directory / POLICY_FILE,
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
    return directory


def _load_pomdp(directory: Path, config: dict[str, Any]) -> Router:
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
    for name in ("lambda", "cost_unit_tokens"):
        stored = policy.lam if name == "lambda" else policy.cost_unit_tokens
        if name in config and not np.isclose(float(config[name]), stored, rtol=1e-12, atol=0.0):
            raise ValueError(f"{config_path}: field {name} = {config[name]} but {policy_path} was solved for {stored}")
    levels = 1 if policy.max_strong_steps is None else policy.max_strong_steps + 1
    for name in ("continue_value", "regenerate_value", "start_value"):
        shape = getattr(policy, name).shape
        if len(shape) != 3 or shape[:2] != (model.horizon, levels):
            raise ValueError(f"{policy_path}: {name} has shape {shape}, expected ({model.horizon}, {levels}, grid size)")
    expected_cost = policy.lam * model.rewrite_tokens / policy.cost_unit_tokens
    if policy.rewrite_cost.shape != expected_cost.shape or not np.allclose(policy.rewrite_cost, expected_cost, rtol=1e-9, atol=1e-12):
        raise ValueError(f"{policy_path}: rewrite_cost does not match the model in {directory / MODEL_FILE}; the files come from different runs")
    return PomdpRouter(model, policy, config.get("filter", "bayes"))


LOADERS["pomdp"] = _load_pomdp


# ----------------------------------------------------------------------------------------------
# Fitting for train.py


@dataclass
class FitSettings:
    """What a fitted model depends on besides the data (part of its cache key).

    :param bins: PRM-score bins per axis of the observation model.
    :param token_bins: quantile bins of the proposal's length.
    :param floor: uniform weight in the observation model.
    :param token_evidence: read each weak step's token bin as evidence of its state (beside its score).
    :param observation_data: optional ProcessBench-format JSON (records with ``steps``, ``label``
        and per-step PRM scores) to fit the observation model from instead of the trees.
    :param score_field: the records' field holding the PRM scores.
    """

    bins: int = 20
    token_bins: int = 8
    floor: float = 1e-4
    token_evidence: bool = False
    observation_data: str | None = None
    score_field: str = "prm_scores"

    @classmethod
    def from_config(cls, policy_config: Any) -> FitSettings:
        return cls(
            bins=int(policy_config.get("bins", cls.bins)),
            token_bins=int(policy_config.get("token_bins", cls.token_bins)),
            floor=float(policy_config.get("floor", cls.floor)),
            token_evidence=bool(policy_config.get("token_evidence", cls.token_evidence)),
            observation_data=policy_config.get("observation_data"),
            score_field=str(policy_config.get("score_field", cls.score_field)),
        )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fit_or_load(trees: RolloutTrees, queries: np.ndarray, settings: FitSettings, data_key: str,
                cache_dir: str | Path | None) -> tuple[PomdpModel, float, bool]:
    """The model fitted on ``queries`` of ``trees`` with ``settings``, from the cache when fitted before.

    :param trees: the train split.
    :param queries: the query indices to fit on (the train split minus its validation part).
    :param settings: fit settings.
    :param data_key: identifies the dataset (its content hash and split).
    :param cache_dir: where fitted models are kept (``None``: always fit).
    :returns: (model, seconds spent fitting or loading it, whether it came from the cache).
    """
    queries = np.asarray(queries, dtype=np.int64)
    records_path = Path(settings.observation_data) if settings.observation_data else None
    key_source = {"data": data_key, "queries": hashlib.sha256(queries.tobytes()).hexdigest(), "fit_version": FIT_VERSION,
                  **settings.__dict__}
    if records_path is not None:
        if not records_path.exists():
            raise FileNotFoundError(f"policy.observation_data = {records_path}: file not found")
        key_source["observation_data"] = _file_sha256(records_path)
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:20]
    start = time.perf_counter()
    if cache_dir is None:
        return _fit(trees, queries, settings, data_key, records_path), time.perf_counter() - start, False
    cached = Path(cache_dir) / f"pomdp-model-{key}.json"
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Parallel multirun jobs (one per λ) share the fit: the first takes the lock and fits, the others wait and load.
    with open(cached.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.exists():
            return PomdpModel.load(cached), time.perf_counter() - start, True
        model = _fit(trees, queries, settings, data_key, records_path)
        model.save(cached)
    return model, time.perf_counter() - start, False


def _fit(trees: RolloutTrees, queries: np.ndarray, settings: FitSettings, data_key: str, records_path: Path | None) -> PomdpModel:
    samples = None
    if records_path is not None:
        try:
            records = json.loads(records_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{records_path}: not valid JSON ({error})") from error
        if not isinstance(records, list):
            raise ValueError(f"{records_path}: expected a JSON list of ProcessBench-format records")
        samples = observation_samples_from_processbench(records, settings.score_field, str(records_path))
    return fit_model(
        trees.subset(queries), uniform_bin_edges(settings.bins), settings.token_bins, samples, settings.floor,
        source={"data": data_key, "n_fit_queries": len(queries), "settings": settings.__dict__},
        token_evidence=settings.token_evidence,
    )
