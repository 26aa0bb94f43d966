"""Evaluate the baselines (random, AutoMix-PRM, classifier, kNN, hindsight oracle) and write ``results.json`` (``trim-baselines``).

Examples::

    trim-baselines                                   # default data, test split
    trim-baselines data.path=DIR hydra.run.dir=OUT
    trim-baselines data.preset=aime-qwen1.5b-7b data.n_queries=500 'methods=[automix-min,oracle]'
    trim-baselines oracle.n_lambdas=50 classifier.seed=1           # any field of a baseline's settings

Each baseline is a policy of the registry (``conf/policy/<name>.yaml``), composed in
``conf/baselines.yaml`` under its own name; its class gives its points (:meth:`agents.base.Router.sweep`),
the learned query-level ones after learning on the training split.

Points use the ``results.json`` schema of ``trim-evaluate`` (weak-only and strong-only anchors
first), so ``trim-frontier`` gathers them together with ``thr`` and trained routers.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.base import PolicyKind, RouterSettings, check_cost_support, sweep_points
from agents.cli import config_dir
from agents.cli.common import (
    read_bool,
    read_cost_model,
    read_int,
    read_simulated_selection,
    register_schemas,
    run_dir,
    settings_of,
)
from agents.registry import registry
from trim_env.data import load_trees
from trim_env.evaluation import anchor_points, make_point, reference, results_config, write_results
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import RolloutTrees

#: What a baselines run writes into its directory.
OUTPUTS = ["results.json"]


def baseline_kinds(cfg: DictConfig) -> list[tuple[type[PolicyKind], RouterSettings]]:
    """The class and checked settings of each of ``cfg.methods``, in order, found in the registry.

    A method is a policy the config composes under its own name (``policy@<name>: <name>`` in
    ``conf/baselines.yaml``); anything else is refused, naming what is known.
    """
    composed = [str(key) for key, node in cfg.items() if isinstance(node, DictConfig) and "router" in node]
    methods = [str(name) for name in cfg.methods]
    unknown = sorted(set(methods) - set(composed))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {composed} (conf/baselines.yaml composes each as policy@<name>: <name>)")
    kinds = [(registry().policy(str(cfg[name].name)), settings_of(cfg[name]).check()) for name in methods]
    cost_model = read_cost_model(cfg)
    for name, (kind, _) in zip(methods, kinds):
        check_cost_support(kind, name, cost_model)
    return kinds


def baseline_points(trees: RolloutTrees, cfg: DictConfig, training: Callable[[], RolloutTrees]) -> list[dict[str, Any]]:
    """Frontier points of every configured baseline on ``trees`` (anchors not included).

    :param trees: the evaluated split.
    :param cfg: the baselines config (``methods`` and a policy node per method).
    :param training: the split the learned kinds (``sweep_trains``) learn on; called only for them.
    """
    cost_model = read_cost_model(cfg)
    anchors = reference(trees, cost_model)
    points: list[dict[str, Any]] = []
    for kind, settings in baseline_kinds(cfg):
        learn_on = {"training": training()} if kind.sweep_trains else {}
        for swept in sweep_points(kind, settings, trees, cost_model, **learn_on):
            points.append({**make_point(swept.label, swept.parameter, swept.outcomes, anchors, cost_model), **swept.extra})
    return points


def training_split(cfg: DictConfig) -> RolloutTrees:
    """Where the learned baselines learn: the dataset's train split, or further queries of the preset."""
    if cfg.data.preset is None:
        return load_trees(path=cfg.data.path, split=cfg.data.train_split, grow=False)  # only anchors and features are read
    # Query indices after the evaluated ones, so that no evaluated query is trained on.
    first = read_int(cfg, "data.n_queries", minimum=1)
    return SimulatedTrees(
        SimulatorParams.preset(cfg.data.preset), int(cfg.data.seed), np.arange(first, first + read_int(cfg, "preset_train_queries", 1))
    )


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Anchor points followed by every configured baseline's points on the configured split."""
    baseline_kinds(cfg)  # refuse unknown methods and bad settings before the data is loaded
    if cfg.data.preset is not None:
        read_simulated_selection(cfg)
    trees = load_trees(
        path=cfg.data.path, split=cfg.data.split, preset=cfg.data.preset, seed=cfg.data.seed, n_queries=cfg.data.n_queries,
        grow=read_bool(cfg, "data.grow"), persist=read_bool(cfg, "data.persist_growth"),
    )
    points = anchor_points(trees, read_cost_model(cfg)) + baseline_points(trees, cfg, cache(lambda: training_split(cfg)))
    trees.flush()
    return points


@hydra.main(config_path=str(config_dir()), config_name="baselines", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    with run_dir(cfg, OUTPUTS, "trim-baselines") as out:
        write_results(out, results_config(OmegaConf.to_container(cfg, resolve=True)), evaluate(cfg))  # type: ignore[arg-type]


def main() -> None:
    """The ``trim-baselines`` console script."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
