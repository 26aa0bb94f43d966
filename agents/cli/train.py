"""Train a step-level router and evaluate it on the test split (``trim-train``, ``python train.py``).

    trim-train policy=agg lambda=0.01            # TRIM-Agg (PPO, MLP over aggregates)
    trim-train policy=seq lambda=0.01            # TRIM-Seq (PPO, transformer over the step sequence)
    trim-train policy=thr lambda=0.01            # TRIM-Thr, threshold chosen on validation
    trim-train policy=pomdp lambda=0.01          # TRIM-POMDP, fitted and solved, no env steps
    trim-train policy=agg lambda=0.01 data.path=DIR hydra.run.dir=OUT logger=wandb [overwrite=true]

The policy's class comes from the registry (``conf/policy/<name>.yaml``, field ``router``). Writes
``OUT/results.json`` (``{"config", "points"}``, the schema of ``trim-evaluate``), the exported
router in ``OUT/router/`` and, for trained kinds, ``OUT/training_history.json``; all atomically.
The checkpoint (or threshold) is chosen on a validation part of the train split by the env's
return, accuracy − λ · cost; the test split is only used for the final evaluation. A directory
that already holds results is refused unless ``overwrite=true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.base import TrainingData
from agents.cli import config_dir
from agents.cli.common import (
    export_router,
    read_bool,
    read_cost_unit_tokens,
    read_float,
    read_int,
    register_schemas,
    run_dir,
    settings_of,
)
from agents.export import load_router
from agents.registry import registry
from agents.tracking import make_tracker
from trim_env import atomic
from trim_env.data import default_dataset_dir, growth_source, load_trees
from trim_env.evaluation import (
    anchor_points,
    make_point,
    reference,
    run_episodes,
    write_results,
)
from trim_env.tree import RolloutTrees, read_manifest

#: The validation part of train is fixed across seeds so that runs are compared on the same queries.
VALIDATION_SPLIT_SEED = 12345
#: What a training run writes into its directory (their presence means it holds results).
OUTPUTS = ["results.json", "router", "training_history.json", "wandb"]


def split_validation(trees: RolloutTrees, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training query indices, validation query indices) of the train split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_fraction = {fraction} must be strictly between 0 and 1")
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(trees.num_queries)
    n_validation = max(1, int(round(fraction * trees.num_queries)))
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def train(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Fit the configured policy on the train split, export it to ``out/router``, evaluate it on the test split.

    :returns: ``{"config": the resolved config, "points": anchors and the router's test point}``.
    """
    lam = read_float(cfg, "lambda", lambda x: x >= 0, "a finite number >= 0")
    seed = read_int(cfg, "seed", minimum=0)
    cost_unit = read_cost_unit_tokens(cfg)
    progress_bar = read_bool(cfg, "progress_bar")
    if cfg.data.preset is not None:
        raise ValueError("trim-train trains on cached trees: give data.path (or nothing for the default data), not data.preset")
    policy_class = registry().policy(str(cfg.policy.name))
    settings = settings_of(cfg.policy).check()
    groups = {name: settings_of(cfg[name]).check() for name in policy_class.config_groups}

    data_dir = cfg.data.path if cfg.data.path is not None else default_dataset_dir()
    grow, persist = read_bool(cfg, "data.grow"), read_bool(cfg, "data.persist_growth")
    source = growth_source(data_dir, cfg.data.backends)
    train_trees = load_trees(path=str(data_dir), split=cfg.data.train_split, grow=grow, persist=persist, source=source)
    test_trees = load_trees(path=str(data_dir), split=cfg.data.split, grow=grow, persist=persist, source=source)
    train_queries, validation_queries = split_validation(train_trees, float(cfg.validation_fraction))
    validation = train_trees.subset(validation_queries)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = make_tracker(dict(cfg.logger), resolved, out, f"{cfg.policy.name}__lambda={lam}__seed={seed}")  # type: ignore[arg-type]
    data = TrainingData(
        trees=train_trees, train_queries=train_queries, validation=validation, lam=lam, cost_unit_tokens=cost_unit, seed=seed,
        dataset_content_hash=read_manifest(data_dir)["content_hash"], split=str(cfg.data.train_split),
        progress_bar=progress_bar, log=tracker.log,
    )
    fitted = policy_class.fit(settings, data, **groups)
    router_dir = export_router(out / "router", fitted.router, train_trees.query_id)  # training and validation parts
    if fitted.history is not None:
        atomic.write_json(out / "training_history.json", fitted.history)
    router = load_router(router_dir)  # evaluate exactly what was exported
    points = []
    for value in fitted.operating_points or [lam]:
        at = router if fitted.operating_points is None else router.at_operating_point(value)
        point = make_point(str(cfg.policy.name), value, run_episodes(test_trees, at), reference(test_trees))
        points.append({**point, "lambda": value, "seed": seed, **fitted.summary})
    for trees in (train_trees, validation, test_trees):
        trees.flush()
    if len(points) == 1:
        tracker.summary({f"test/{key}": value for key, value in points[0].items() if isinstance(value, (int, float))})
    else:
        tracker.summary({f"test/lambda={point['lambda']:g}/{key}": value for point in points
                         for key, value in point.items() if isinstance(value, (int, float))})
    tracker.finish()
    # The config is the truth: the fit was given exactly cfg.policy (and its groups) as dataclasses.
    return {"config": resolved, "points": [*anchor_points(test_trees), *points]}


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    with run_dir(cfg, OUTPUTS, "trim-train") as out:
        results = train(cfg, out)
        write_results(out, results["config"], results["points"])


def main() -> None:
    """The ``trim-train`` console script."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
