"""Evaluate a routing policy on a dataset split and write ``results.json`` (``trim-evaluate``).

Examples::

    trim-evaluate policy=thr 'policy.thresholds=[0,0.05,1]' data.path=DIR hydra.run.dir=OUT
    trim-evaluate policy=thr data.preset=math500-qwen1.5b-7b data.seed=1 data.n_queries=500
    trim-evaluate policy=router policy.path=OUT/router data.path=DIR
    trim-evaluate policy=random
    trim-evaluate policy=classifier                  # learned query-level baselines learn on data.train_split first

The policy's class comes from the registry (``conf/policy/<name>.yaml``) and gives its points
(:meth:`agents.base.Router.sweep`): a threshold or probability sweep, or an exported router's
point (``policy=router``); kinds that learn before sweeping (``sweep_trains``: classifier, knn) are
given ``data.train_split``. The weak-only and strong-only anchors of the split are always included.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from agents.base import PolicyKind, check_cost_support, sweep_points
from agents.cli import config_dir
from agents.cli.common import (
    read_bool,
    read_cost_model,
    read_simulated_selection,
    register_schemas,
    run_dir,
    settings_of,
)
from agents.registry import registry
from trim_env.data import growth_source, load_trees
from trim_env.evaluation import anchor_points, make_point, reference, results_config, write_results
from trim_env.tree import RolloutTrees

#: What an evaluation writes into its directory.
OUTPUTS = ["results.json"]


def learning_split(cfg: DictConfig, policy_class: type[PolicyKind]) -> dict[str, RolloutTrees]:
    """``{"training": data.train_split}`` for a kind whose sweep learns first (``sweep_trains``), else nothing."""
    if not policy_class.sweep_trains:
        return {}
    if cfg.data.preset is not None:
        raise ValueError(
            f"policy {cfg.policy.name!r} learns on a train split, which data.preset runs do not have; "
            "use trim-baselines (it simulates preset_train_queries further queries to learn on) or data.path"
        )
    return {"training": load_trees(path=cfg.data.path, split=cfg.data.train_split, grow=False)}  # only anchors and features are read


def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Points for the configured policy on the configured split (anchors first)."""
    policy_class = registry().policy(str(cfg.policy.name))
    cost_model = read_cost_model(cfg)
    check_cost_support(policy_class, str(cfg.policy.name), cost_model)
    settings = settings_of(cfg.policy).check()
    if cfg.data.preset is not None:
        read_simulated_selection(cfg)
    trees = load_trees(
        path=cfg.data.path, split=cfg.data.split, preset=cfg.data.preset, seed=cfg.data.seed, n_queries=cfg.data.n_queries,
        grow=read_bool(cfg, "data.grow"), persist=read_bool(cfg, "data.persist_growth"),
        source=growth_source(cfg.data.path, cfg.data.backends),
    )
    anchors = reference(trees, cost_model)
    points = anchor_points(trees, cost_model)
    for swept in sweep_points(policy_class, settings, trees, cost_model, **learning_split(cfg, policy_class)):
        points.append({**make_point(swept.label, swept.parameter, swept.outcomes, anchors, cost_model), **swept.extra})
    trees.flush()
    return points


@hydra.main(config_path=str(config_dir()), config_name="evaluate", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    with run_dir(cfg, OUTPUTS, "trim-evaluate") as out:
        write_results(out, results_config(OmegaConf.to_container(cfg, resolve=True)), evaluate(cfg))  # type: ignore[arg-type]


def main() -> None:
    """The ``trim-evaluate`` console script."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
