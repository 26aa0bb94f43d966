"""Cross-dataset transfer: fit on the calibrated MATH data, evaluate on other presets, tabulate mean ΔIBC.

Learned routers (the classifier, kNN, and any exported router given with ``--routers``) are trained
on the default data (simulated ``math500-qwen1.5b-7b``) only. Each target preset is simulated into
cached trees with the default data's cap and node budget (test split only), and every method is
evaluated on it: TRIM-Thr (the ``conf/policy/thr.yaml`` threshold sweep), the baselines of
``conf/baselines.yaml`` and the routers. The source's own test split is the first column.

Usage (a Hydra app: ``conf/transfer.yaml``, which extends ``conf/baselines.yaml``)::

    python scripts/transfer.py out=outputs/transfer ['routers=[OUT/router, ...]'] [oracle.n_lambdas=50 ...]

Writes ``OUT/transfer.md``, ``OUT/transfer.json`` and ``OUT/<dataset>/results.json`` (for
``trim-frontier``). Every setting of ``conf/baselines.yaml`` is overridden the same way (a
baseline's settings as ``<name>.<field>``); the baselines come from the registry as in
``trim-baselines`` (:func:`agents.cli.baselines.baseline_points`), the learned ones learning on the
source's train split for every dataset.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from agents import load_router
from agents.cli.baselines import baseline_kinds, baseline_points
from agents.cli.common import register_schemas
from agents.cli.frontier import summarize_methods
from agents.cli.strict import check_boolean_overrides, refuse_to_overwrite
from agents.export import check_not_trained_on
from trim_env import metrics
from trim_env.data import default_recipe, load_trees, open_split
from trim_env.evaluation import anchor_points, make_point, reference, run_episodes, run_thresholds
from trim_env.paths import config_dir
from trim_env.simulate import generate_dataset
from trim_env.tree import RolloutTrees

TARGET_PRESETS = ("aime-qwen1.5b-7b", "math500-qwen1.5b-qwen3-8b")


def target_datasets(n_queries: int, seed: int, workdir: Path) -> dict[str, RolloutTrees]:
    """The source's test split, then each target preset simulated with the default data's cap and budget."""
    recipe = default_recipe()
    datasets = {f"{recipe['source']['preset']} (source)": load_trees(split="test")}
    for preset in TARGET_PRESETS:
        directory = workdir / preset
        generate_dataset(
            directory,
            preset=preset,
            n_queries=n_queries,
            seed=seed,
            max_strong_steps=recipe["max_strong_steps"],
            node_budget=recipe["node_budget"],
            test_fraction=1.0,
        )
        datasets[preset] = open_split(directory, "test")
    return datasets


def dataset_points(
    trees: RolloutTrees, thresholds: list[float], routers: list[Any], training: RolloutTrees, cfg: DictConfig
) -> list[dict[str, Any]]:
    """Anchors, TRIM-Thr, the baselines (learned ones on ``training``) and the exported routers on one dataset."""
    anchors = reference(trees)
    points = anchor_points(trees)
    points += [make_point("thr", k, outcomes, anchors) for k, outcomes in zip(thresholds, run_thresholds(trees, thresholds))]
    points += baseline_points(trees, cfg, lambda: training)
    for router in routers:
        label = f"router:{router.config['policy']}"
        points.append(make_point(label, router.config.get("lambda"), run_episodes(trees, router), anchors))
    return points


def summarize(points: list[dict[str, Any]], trees: RolloutTrees) -> tuple[dict[str, dict[str, Any]], tuple[float, float] | None]:
    """Frontier summary per method and the common ΔIBC cost range, as ``trim-frontier`` makes them.

    CPT and APGR come from each method's own points plus the weak-only anchor; mean ΔIBC is taken
    over the dataset's common cost range of the non-oracle methods.
    """
    anchors = reference(trees)
    methods: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        if point["policy"] not in ("weak-only", "strong-only"):
            methods.setdefault(point["policy"], []).append(point)
    return summarize_methods(methods, anchors)


def markdown(
    results: dict[str, dict[str, dict[str, Any]]],
    references: dict[str, metrics.Reference],
    ibc_ranges: dict[str, tuple[float, float] | None],
) -> str:
    """Mean ΔIBC and APGR tables: one row per method, one column per dataset.

    :param results: Summaries per dataset and method (``scripts/frontier.py``'s ``summarize_methods``).
    :param references: Anchors per dataset.
    :param ibc_ranges: The common ΔIBC cost range per dataset.
    """
    names = list(results)
    first = results[names[0]]
    methods = sorted({m for summary in results.values() for m in summary}, key=lambda m: -first[m]["apgr"]["value"] if m in first else 1.0)
    lines = [
        (
            "Learned routers trained on the source's train split only; targets simulated into cached trees "
            "(default data's cap and node budget). All data simulated."
        ),
        "",
        "| dataset | weak-only acc | strong-only acc | strong tokens/query |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {ref.weak_accuracy:.3f} | {ref.strong_accuracy:.3f} | {ref.strong_tokens_per_query:.1f} |"
        for name, ref in references.items()
    ]
    ranges = "; ".join(
        f"{name} [{r[0]:.3f}, {r[1]:.3f}]" if (r := ibc_ranges[name]) is not None else f"{name} none" for name in names
    )
    titles = (
        ("mean_delta_ibc", f"Mean ΔIBC (over each dataset's common c range of the non-oracle methods: {ranges}; † = not covered)"),
        ("apgr", "APGR (own points plus weak-only, flat beyond the last point)"),
    )
    for key, title in titles:
        lines += ["", f"{title} per method and dataset:", "", "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for method in methods:
            cells = []
            for name in names:
                entry = results[name].get(method, {}).get(key, {"value": None})
                mark = " †" if key == "mean_delta_ibc" and entry["value"] is not None and not entry["covers_range"] else ""
                cells.append("—" if entry["value"] is None else f"{entry['value']:.3f}{mark}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@hydra.main(config_path=str(config_dir()), config_name="transfer", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    check_boolean_overrides(cfg)
    refuse_to_overwrite(cfg.out, ("transfer.md", "transfer.json"), bool(cfg.overwrite))
    thresholds = [float(k) for k in cfg.thr.thresholds]
    router_dirs = [str(path) for path in cfg.routers]
    routers = [load_router(path) for path in router_dirs]
    baseline_kinds(cfg)  # refuse unknown methods and bad settings before any data is simulated
    training = load_trees(split="train")
    out = Path(cfg.out)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    references: dict[str, metrics.Reference] = {}
    ibc_ranges: dict[str, tuple[float, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="trim-transfer-") as workdir:
        for name, trees in target_datasets(int(cfg.target_queries), int(cfg.target_seed), Path(workdir)).items():
            for path in router_dirs:
                check_not_trained_on(path, trees.query_id)
            points = dataset_points(trees, thresholds, routers, training, cfg)
            run_dir = out / name.split(" ")[0]
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "results.json").write_text(json.dumps({"dataset": name, "points": points}, indent=2) + "\n")
            results[name], ibc_ranges[name] = summarize(points, trees)
            references[name] = reference(trees)
            print(f"evaluated {name}: {len(points)} points", flush=True)
    report = markdown(results, references, ibc_ranges)
    (out / "transfer.md").write_text(report + "\n")
    (out / "transfer.json").write_text(
        json.dumps(
            {
                "config": OmegaConf.to_container(cfg, resolve=True),
                "routers": router_dirs,
                "references": {name: ref.__dict__ for name, ref in references.items()},
                "delta_ibc_ranges": ibc_ranges,
                "methods": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(report)
    print(f"\nwrote {out / 'transfer.md'}, {out / 'transfer.json'}")


def main() -> None:
    """Register the policies' settings dataclasses (``conf/policy/*.yaml`` extend them), then run."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
