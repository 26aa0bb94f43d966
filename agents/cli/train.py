"""Train a step-level router and evaluate it on the test split (``trim-train``, ``python train.py``).

    trim-train policy=agg lambda=0.01            # TRIM-Agg (PPO, MLP over aggregates)
    trim-train policy=seq lambda=0.01            # TRIM-Seq (PPO, transformer over the step sequence)
    trim-train policy=thr lambda=0.01            # TRIM-Thr, threshold chosen on validation
    trim-train policy=pomdp lambda=0.01          # TRIM-POMDP, fitted and solved, no env steps
    trim-train policy=agg lambda=0.01 data.path=DIR hydra.run.dir=OUT logger=wandb [overwrite=true]

The policy's class comes from the registry (``conf/policy/<name>.yaml``, field ``router``). Writes
``OUT/results.json`` (``{"config", "points"}``, the schema of ``trim-evaluate``), the exported
router in ``OUT/router/`` (with a model card, ``README.md``) and, for trained kinds,
``OUT/training_history.json``; all atomically. With ``logger=wandb`` the router directory is also
logged as a W&B artifact (type ``router``) carrying its config and test metrics.
The checkpoint (or threshold) is chosen on a validation part of the train split by the env's
return, accuracy − λ · cost; the test split is only used for the final evaluation. A directory
that already holds results is refused unless ``overwrite=true``.

PPO policies write a checkpoint every ``ppo.checkpoint_every`` steps to ``OUT/checkpoints/``;
``resume=PATH`` (a run directory, its latest checkpoint, or one checkpoint zip) continues a killed
run in its own directory to the result the uninterrupted run gives (:mod:`agents.checkpoints`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.base import TrainingData, check_cost_support
from agents.checkpoints import CHECKPOINT_DIR, check_same_run, find_checkpoint, run_dir_of
from agents.cli import config_dir
from agents.cli.common import (
    export_router,
    read_bool,
    read_cost_model,
    read_cost_unit_tokens,
    read_float,
    read_int,
    register_schemas,
    run_dir,
    settings_of,
)
from agents.export import load_router, write_model_card
from agents.registry import registry
from agents.tracking import TensorBoardTracker, make_tracker
from trim_env import atomic
from trim_env.data import growth_source, load_trees, resolve_dataset_dir
from trim_env.evaluation import (
    anchor_points,
    make_point,
    reference,
    results_config,
    run_episodes,
    write_results,
)
from trim_env.run_dirs import CONFIG_SUBDIR
from trim_env.tree import RolloutTrees, read_manifest

#: The validation part of train is fixed across seeds so that runs are compared on the same queries.
VALIDATION_SPLIT_SEED = 12345
#: What a finished training run writes into its directory.
RESULTS = ["results.json", "router", "training_history.json"]
#: Everything a training run writes into its directory (their presence means it holds a run); a
#: resumed run continues the checkpoints and logs of a killed one, refusing only its results.
OUTPUTS = [*RESULTS, "wandb", TensorBoardTracker.SUBDIR, CHECKPOINT_DIR]
#: Top-level keys a resumed run may set differently from the killed one: how it is driven and
#: logged, where the data lives (its content is checked), how often it checkpoints.
RESUME_MAY_CHANGE = ("resume", "overwrite", "progress_bar", "data.path", "ppo.checkpoint_every", "logger.")


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
    cost_model = read_cost_model(cfg)
    check_cost_support(policy_class, str(cfg.policy.name), cost_model)
    settings = settings_of(cfg.policy).check()
    groups = {name: settings_of(cfg[name]).check() for name in policy_class.config_groups}
    resume_from = None
    if cfg.get("resume") is not None:
        if "ppo" not in policy_class.config_groups:
            raise ValueError(f"resume = {cfg.resume}: policy {cfg.policy.name} is not trained with PPO and has no checkpoints")
        resume_from = find_checkpoint(str(cfg.resume))

    data_dir = resolve_dataset_dir(cfg.data.path)  # a Hub path is fetched once here
    grow, persist = read_bool(cfg, "data.grow"), read_bool(cfg, "data.persist_growth")
    source = growth_source(data_dir, cfg.data.backends)
    train_trees = load_trees(path=str(data_dir), split=cfg.data.train_split, grow=grow, persist=persist, source=source)
    test_trees = load_trees(path=str(data_dir), split=cfg.data.split, grow=grow, persist=persist, source=source)
    train_queries, validation_queries = split_validation(train_trees, float(cfg.validation_fraction))
    validation = train_trees.subset(validation_queries)
    resolved = results_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    tracker = make_tracker(dict(cfg.logger), resolved, out, f"{cfg.policy.name}__lambda={lam}__seed={seed}")
    data = TrainingData(
        trees=train_trees, train_queries=train_queries, validation=validation, lam=lam, cost_unit_tokens=cost_unit, seed=seed,
        dataset_content_hash=read_manifest(data_dir)["content_hash"], split=str(cfg.data.train_split),
        progress_bar=progress_bar, log=tracker.log, run_dir=out, resume_from=resume_from,
        tensorboard_dir=tracker.directory if isinstance(tracker, TensorBoardTracker) else None, cost_model=cost_model,
    )
    fitted = policy_class.fit(settings, data, **groups)
    router_dir = export_router(out / "router", fitted.router, train_trees.query_id)  # training and validation parts
    if fitted.history is not None:
        atomic.write_json(out / "training_history.json", fitted.history)
    router = load_router(router_dir)  # evaluate exactly what was exported
    test_reference = reference(test_trees, cost_model)
    points = []
    for value in fitted.operating_points or [lam]:
        at = router if fitted.operating_points is None else router.at_operating_point(value)
        point = make_point(str(cfg.policy.name), value, run_episodes(test_trees, at, cost_model=cost_model), test_reference, cost_model)
        points.append({**point, "lambda": value, "seed": seed, **fitted.summary})
    for trees in (train_trees, validation, test_trees):
        trees.flush()
    anchors = anchor_points(test_trees, cost_model)
    write_model_card(router_dir, points, anchors, read_manifest(data_dir), cfg.data.path, str(cfg.data.split), test_trees.num_queries)
    if len(points) == 1:
        tracker.summary({f"test/{key}": value for key, value in points[0].items() if isinstance(value, (int, float))})
    else:
        tracker.summary({f"test/lambda={point['lambda']:g}/{key}": value for point in points
                         for key, value in point.items() if isinstance(value, (int, float))})
    tracker.log_router(router_dir, f"{cfg.policy.name}-lambda-{lam}-seed-{seed}",
                       {"router_config": router.config, "run_config": resolved, "test_points": points})
    tracker.finish()
    # The config is the truth: the fit was given exactly cfg.policy (and its groups) as dataclasses.
    return {"config": resolved, "points": [*anchors, *points]}


def resume_run_dir(resume: str | None, default: str) -> str:
    """``hydra.run.dir``: the resumed run's own directory with ``resume=PATH``, else ``default``
    (the ``trim_resume_run_dir`` resolver in ``conf/config.yaml``)."""
    if resume is None:
        return default
    try:
        return str(run_dir_of(resume))
    except FileNotFoundError as error:
        raise SystemExit(f"trim-train: {error}") from None


def check_resumed_config(cfg: DictConfig) -> None:
    """Refuse ``resume=PATH`` with a config other than the killed run's ``.hydra/config.yaml`` (when it has one),
    before the run directory is claimed (which would record this config over the killed run's).

    Only how the run is driven may differ: :data:`RESUME_MAY_CHANGE`. The checkpoint itself records
    the data's content hash and the training queries, checked again when training starts. Both sides
    are compared as results record them (:func:`~trim_env.evaluation.results_config`): a run killed
    before ``cost=`` existed recorded none, which is ``cost=strong_tokens``.
    """
    recorded_path = run_dir_of(str(cfg.resume)) / CONFIG_SUBDIR / "config.yaml"
    if recorded_path.is_file():
        recorded = results_config(OmegaConf.to_container(OmegaConf.load(recorded_path), resolve=True))  # type: ignore[arg-type]
        current = results_config(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        check_same_run(recorded, current, recorded_path, RESUME_MAY_CHANGE)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    if cfg.get("resume") is not None:
        try:
            check_resumed_config(cfg)
        except ValueError as error:
            raise SystemExit(f"trim-train: {error}") from None
    with run_dir(cfg, RESULTS if cfg.get("resume") is not None else OUTPUTS, "trim-train") as out:
        results = train(cfg, out)
        write_results(out, results["config"], results["points"])


def main() -> None:
    """The ``trim-train`` console script."""
    register_schemas()
    OmegaConf.register_new_resolver("trim_resume_run_dir", resume_run_dir, replace=True)
    _app()


if __name__ == "__main__":
    main()
