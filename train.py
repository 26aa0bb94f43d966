"""Train a step-level router and evaluate it on the test split.

    python train.py policy=agg lambda=0.01            # TRIM-Agg (PPO, MLP over aggregates)
    python train.py policy=seq lambda=0.01            # TRIM-Seq (PPO, transformer over the step sequence)
    python train.py policy=thr lambda=0.01            # TRIM-Thr, threshold chosen on validation
    python train.py policy=agg lambda=0.01 data.path=DIR hydra.run.dir=OUT logger=wandb

Writes ``OUT/results.json`` (``{"points": [...]}``, the schema of ``scripts/evaluate.py``) and the
exported router in ``OUT/router/`` (plus SB3's ``OUT/router/sb3_model.zip`` for PPO policies).
The checkpoint (or threshold) is chosen on a validation part of the train split by the env's
return, accuracy − λ · cost; the test split is only used for the final evaluation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.export import load_router, write_router, write_training_queries
from agents.tracking import make_tracker
from trim_env.data import default_dataset_dir, growth_source, load_trees
from trim_env.evaluation import (
    anchor_points,
    make_point,
    reference,
    run_episodes,
    run_thresholds,
    validation_objective,
    write_results,
)
from trim_env.store import GrowthBudgetSpent
from trim_env.tree import RolloutTrees, read_manifest

#: The validation part of train is fixed across seeds so that runs are compared on the same queries.
VALIDATION_SPLIT_SEED = 12345


def split_validation(trees: RolloutTrees, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training query indices, validation query indices) of the train split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction = {fraction} must be strictly between 0 and 1")
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(trees.num_queries)
    n_validation = max(1, int(round(fraction * trees.num_queries)))
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def choose_threshold(validation: RolloutTrees, thresholds: list[float], lam: float, cost_unit_tokens: float) -> tuple[float, float]:
    """The threshold with the best validation return, and that return."""
    scores = [
        validation_objective(o.correct, o.strong_tokens, lam, cost_unit_tokens) for o in run_thresholds(validation, thresholds)
    ]
    best = int(np.argmax(scores))
    return thresholds[best], scores[best]


def train(cfg: DictConfig, out: Path) -> dict[str, Any]:
    lam = float(cfg["lambda"])
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lambda = {cfg['lambda']} must be a finite number >= 0")
    if cfg.data.preset is not None:
        raise ValueError("train.py trains on cached trees: give data.path (or nothing for the default data), not data.preset")
    cost_unit = float(cfg.env.cost_unit_tokens)
    data_dir = cfg.data.path if cfg.data.path is not None else default_dataset_dir()
    growth = {"grow": bool(cfg.data.grow), "persist": bool(cfg.data.persist_growth), "source": growth_source(data_dir, cfg.data.backends)}
    train_trees = load_trees(path=str(data_dir), split=cfg.data.train_split, **growth)
    test_trees = load_trees(path=str(data_dir), split=cfg.data.split, **growth)
    manifest_hash = read_manifest(data_dir)["content_hash"]
    train_queries, validation_queries = split_validation(train_trees, float(cfg.validation_fraction))
    validation = train_trees.subset(validation_queries)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = make_tracker(
        dict(cfg.logger), resolved, out, f"{cfg.policy.name}__lambda={lam}__seed={cfg.seed}"  # type: ignore[arg-type]
    )
    router_dir = out / "router"
    common = {"policy": cfg.policy.name, "lambda": lam, "cost_unit_tokens": cost_unit, "dataset_content_hash": manifest_hash}
    extra: dict[str, Any]
    if cfg.policy.name == "thr":
        threshold, objective = choose_threshold(validation, [float(k) for k in cfg.policy.thresholds], lam, cost_unit)
        write_router(router_dir, {**common, "kind": "threshold", "observation": "agg", "threshold": threshold})
        extra = {"threshold": threshold, "validation_objective": objective, "train_wall_time_s": 0.0, "env_steps": 0}
    elif cfg.policy.name in ("agg", "seq"):
        from agents.ppo import PolicySpec, PPOSettings, train_router  # noqa: PLC0415  (SB3 only when training)

        spec = PolicySpec(
            observation=cfg.policy.observation,
            hidden=list(cfg.policy.hidden),
            activation=cfg.policy.activation,
            seq=dict(cfg.policy.get("seq") or {}),
        )
        settings = PPOSettings.from_dict(
            {**dict(cfg.ppo), "total_timesteps": int(cfg.policy.total_timesteps)}
        )
        result = train_router(
            train_trees, train_queries, validation, spec, settings, lam, cost_unit, int(cfg.seed), bool(cfg.progress_bar), tracker.log
        )
        network = {"observation_dim": int(np.prod(result.model.observation_space.shape)), "hidden": spec.hidden,
                   "activation": spec.activation, "seq": spec.seq or None}
        write_router(router_dir, {**common, "kind": "actor", "observation": spec.observation, "network": network},
                     result.actor.state_dict())
        result.model.save(router_dir / "sb3_model.zip")
        (out / "training_history.json").write_text(json.dumps(result.history, indent=2) + "\n")
        extra = {
            "validation_objective": result.best["objective"],
            "best_checkpoint_timesteps": result.best["timesteps"],
            "train_wall_time_s": result.wall_time_s,
            "env_steps": result.env_steps,
            "env_steps_per_s": result.env_steps / max(result.wall_time_s, 1e-9),
        }
    elif cfg.policy.name == "pomdp":
        # Fits on the training part of train (cached across λ), solves for λ; no environment steps.
        from hydra.utils import to_absolute_path  # noqa: PLC0415

        from agents.pomdp.router import FitSettings, export_router, fit_or_load, solve_router  # noqa: PLC0415

        cache_dir = cfg.policy.model_cache_dir
        model, fit_time, from_cache = fit_or_load(
            train_trees, train_queries, FitSettings.from_config(cfg.policy), f"{manifest_hash}/{cfg.data.train_split}",
            None if cache_dir is None else to_absolute_path(str(cache_dir)),
        )
        # Trees that grow have no cap (max_strong_steps None); frozen trees keep the data's K.
        cap = train_trees.max_strong_steps if cfg.policy.max_strong_steps == "data" else cfg.policy.max_strong_steps
        router = solve_router(model, lam, cost_unit, str(cfg.policy.filter), int(cfg.policy.grid_size), cap)
        export_router(router_dir, router, common)
        outcomes = run_episodes(validation, router)
        extra = {
            "validation_objective": validation_objective(outcomes.correct, outcomes.strong_tokens, lam, cost_unit),
            "train_wall_time_s": fit_time + router.policy.solve_time_s,
            "env_steps": 0,
            "solve_time_s": router.policy.solve_time_s,
            "fit_time_s": fit_time,
            "model_from_cache": from_cache,
            "solver_error_bound": router.policy.error_bound,
        }
    else:
        raise ValueError(f"unknown policy.name {cfg.policy.name!r}; train.py trains agg, seq, thr and pomdp")

    write_training_queries(router_dir, train_trees.query_id)  # training and validation parts
    router = load_router(router_dir)  # evaluate exactly what was exported
    point = make_point(cfg.policy.name, lam, run_episodes(test_trees, router), reference(test_trees))
    for trees in (train_trees, validation, test_trees):
        trees.flush()
    point = {**point, "lambda": lam, "seed": int(cfg.seed), **extra}
    tracker.summary({f"test/{key}": value for key, value in point.items() if isinstance(value, (int, float))})
    tracker.finish()
    return {"config": resolved, "points": [*anchor_points(test_trees), point]}


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg, out)
    except GrowthBudgetSpent as spent:  # every grown batch is on disk already (persisted as it was grown)
        raise SystemExit(f"train.py: {spent}") from spent
    write_results(out, results["config"], results["points"])


if __name__ == "__main__":
    main()
