"""Evaluate the baselines (random, AutoMix-PRM, classifier, kNN, hindsight oracle) and write ``results.json`` (``trim-baselines``).

Examples::

    trim-baselines                                   # default data, test split
    trim-baselines data.path=DIR hydra.run.dir=OUT
    trim-baselines data.preset=aime-qwen1.5b-7b data.n_queries=500 'methods=[automix-min,oracle]'

Points use the ``results.json`` schema of ``trim-evaluate`` (weak-only and strong-only anchors
first), so ``trim-frontier`` gathers them together with ``thr`` and trained routers.
"""

from __future__ import annotations

from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.baselines.suite import baseline_points, check_methods, fit_query_routers
from agents.cli import config_dir
from agents.cli.common import (
    read_bool,
    read_int,
    read_simulated_selection,
    register_schemas,
    run_dir,
)
from trim_env.data import load_trees
from trim_env.evaluation import anchor_points, write_results
from trim_env.run_dirs import RunDirError
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import RolloutTrees

#: What a baselines run writes into its directory.
OUTPUTS = ["results.json"]


def training_split(cfg: DictConfig) -> RolloutTrees:
    """Where the learned routers train: the dataset's train split, or further queries of the preset."""
    if cfg.data.preset is None:
        return load_trees(path=cfg.data.path, split=cfg.data.train_split, grow=False)  # only anchors and features are read
    # Query indices after the evaluated ones, so that no evaluated query is trained on.
    first = read_int(cfg, "data.n_queries", minimum=1)
    return SimulatedTrees(
        SimulatorParams.preset(cfg.data.preset), int(cfg.data.seed), np.arange(first, first + read_int(cfg, "preset_train_queries", 1))
    )


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Anchor points followed by every configured baseline's points on the configured split."""
    check_methods(list(cfg.methods))  # before the data is loaded
    if cfg.data.preset is not None:
        read_simulated_selection(cfg)
    trees = load_trees(
        path=cfg.data.path, split=cfg.data.split, preset=cfg.data.preset, seed=cfg.data.seed, n_queries=cfg.data.n_queries,
        grow=read_bool(cfg, "data.grow"), persist=read_bool(cfg, "data.persist_growth"),
    )
    routers = fit_query_routers(training_split(cfg), cfg)
    points = anchor_points(trees) + baseline_points(trees, routers, cfg)
    trees.flush()
    return points


@hydra.main(config_path=str(config_dir()), config_name="baselines", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    try:
        with run_dir(cfg, OUTPUTS) as out:
            write_results(out, OmegaConf.to_container(cfg, resolve=True), evaluate(cfg))  # type: ignore[arg-type]
    except RunDirError as error:
        raise SystemExit(f"trim-baselines: {error}") from None


def main() -> None:
    """The ``trim-baselines`` console script."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
