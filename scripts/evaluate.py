"""Evaluate routing policies on a dataset split and write ``results.json`` in the Hydra run dir.

Examples::

    python scripts/evaluate.py policy=thr 'policy.thresholds=[0,0.05,1]' data.path=DIR hydra.run.dir=OUT
    python scripts/evaluate.py policy=thr data.preset=math500-qwen1.5b-7b data.seed=1 data.n_queries=500
    python scripts/evaluate.py policy=router policy.path=OUT/router data.path=DIR

The weak-only and strong-only anchors of the split are always included as points.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents import load_router  # noqa: E402
from agents.export import check_not_trained_on  # noqa: E402
from trim_env.data import growth_source, load_trees  # noqa: E402
from trim_env.evaluation import anchor_points, make_point, reference, run_episodes, run_thresholds, write_results  # noqa: E402
from trim_env.store import GrowthBudgetSpent  # noqa: E402


def evaluate(cfg: DictConfig) -> list[dict]:
    """Points for the configured policy on the configured split (anchors first)."""
    trees = load_trees(
        path=cfg.data.path, split=cfg.data.split, preset=cfg.data.preset, seed=cfg.data.seed, n_queries=cfg.data.n_queries,
        grow=cfg.data.grow, persist=cfg.data.persist_growth, source=growth_source(cfg.data.path, cfg.data.backends),
    )
    anchors = reference(trees)
    points = anchor_points(trees)
    name = cfg.policy.name
    if name == "thr":
        thresholds = [float(k) for k in cfg.policy.thresholds]
        if not thresholds or any(k < 0 for k in thresholds):
            raise ValueError(f"policy.thresholds = {thresholds} must be a non-empty list of numbers >= 0")
        for threshold, outcomes in zip(thresholds, run_thresholds(trees, thresholds)):
            points.append(make_point("thr", threshold, outcomes, anchors))
    elif name == "router":
        check_not_trained_on(cfg.policy.path, trees.query_id, bool(cfg.policy.allow_training_queries))
        router = load_router(cfg.policy.path)
        label = f"router:{router.config['policy']}"  # type: ignore[attr-defined]
        points.append(make_point(label, router.config.get("lambda"), run_episodes(trees, router), anchors))  # type: ignore[attr-defined]
    else:
        raise ValueError(f"unknown policy.name {name!r}; scripts/evaluate.py knows: thr, router")
    trees.flush()
    return points


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        points = evaluate(cfg)
    except GrowthBudgetSpent as spent:  # every grown batch is on disk already (persisted as it was grown)
        raise SystemExit(f"scripts/evaluate.py: {spent}") from spent
    write_results(HydraConfig.get().runtime.output_dir, OmegaConf.to_container(cfg, resolve=True), points)


if __name__ == "__main__":
    main()
