"""Evaluate the baselines (random, AutoMix-PRM, classifier, kNN, hindsight oracle) and write ``results.json``.

Examples::

    python scripts/baselines.py                                   # default data, test split
    python scripts/baselines.py data.path=DIR hydra.run.dir=OUT
    python scripts/baselines.py data.preset=aime-qwen1.5b-7b data.n_queries=500 'methods=[automix-min,oracle]'

Points use the ``results.json`` schema of ``scripts/evaluate.py`` (weak-only and strong-only anchors
first), so ``scripts/frontier.py`` gathers them together with ``thr`` and trained routers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.baselines.suite import baseline_points, check_methods, fit_query_routers  # noqa: E402
from trim_env.data import load_trees  # noqa: E402
from trim_env.evaluation import anchor_points, write_results  # noqa: E402
from trim_env.simulate import SimulatedTrees, SimulatorParams  # noqa: E402
from trim_env.tree import RolloutTrees  # noqa: E402


def training_split(cfg: DictConfig) -> RolloutTrees:
    """Where the learned routers train: the dataset's train split, or further queries of the preset."""
    if cfg.data.preset is None:
        return load_trees(path=cfg.data.path, split=cfg.data.train_split, grow=False)  # only anchors and features are read
    # Query indices after the evaluated ones, so that no evaluated query is trained on.
    first = int(cfg.data.n_queries)
    return SimulatedTrees(
        SimulatorParams.preset(cfg.data.preset), int(cfg.data.seed), np.arange(first, first + int(cfg.preset_train_queries))
    )


def evaluate(cfg: DictConfig) -> list[dict]:
    """Anchor points followed by every configured baseline's points on the configured split."""
    check_methods(list(cfg.methods))  # before the data is loaded
    trees = load_trees(
        path=cfg.data.path, split=cfg.data.split, preset=cfg.data.preset, seed=cfg.data.seed, n_queries=cfg.data.n_queries,
        grow=cfg.data.grow, persist=cfg.data.persist_growth,
    )
    routers = fit_query_routers(training_split(cfg), cfg)
    points = anchor_points(trees) + baseline_points(trees, routers, cfg)
    trees.flush()
    return points


@hydra.main(config_path="../conf", config_name="baselines", version_base="1.3")
def main(cfg: DictConfig) -> None:
    points = evaluate(cfg)
    write_results(HydraConfig.get().runtime.output_dir, OmegaConf.to_container(cfg, resolve=True), points)


if __name__ == "__main__":
    main()
