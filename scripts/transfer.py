"""Cross-dataset transfer: fit on the calibrated MATH data, evaluate on other presets, tabulate mean ΔIBC.

Learned routers (the classifier, kNN, and any exported router given with ``--routers``) are trained
on the default data (simulated ``math500-qwen1.5b-7b``) only. Each target preset is simulated into
cached trees with the default data's cap and node budget (test split only), and every method is
evaluated on it: TRIM-Thr (the ``conf/policy/thr.yaml`` threshold sweep), the baselines of
``conf/baselines.yaml`` and the routers. The source's own test split is the first column.

Usage::

    python scripts/transfer.py --out outputs/transfer [--routers OUT/router ...] [oracle.n_lambdas=50 ...]

Writes ``OUT/transfer.md``, ``OUT/transfer.json`` and ``OUT/<dataset>/results.json`` (for
``scripts/frontier.py``). Trailing ``key=value`` arguments override ``conf/baselines.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "scripts"))

from frontier import summarize_methods  # noqa: E402  (the report's own frontier summary)

from agents import load_router  # noqa: E402
from agents.export import check_not_trained_on  # noqa: E402
from agents.baselines.suite import baseline_points, fit_query_routers  # noqa: E402
from trim_env import metrics  # noqa: E402
from trim_env.data import default_recipe, load_trees, open_split  # noqa: E402
from trim_env.evaluation import anchor_points, make_point, reference, run_episodes, run_thresholds  # noqa: E402
from trim_env.simulate import generate_dataset  # noqa: E402
from trim_env.tree import RolloutTrees  # noqa: E402

TARGET_PRESETS = ("aime-qwen1.5b-7b", "math500-qwen1.5b-qwen3-8b")


def load_configs(overrides: list[str]) -> tuple[DictConfig, list[float]]:
    """The baselines config (with ``overrides``) and TRIM-Thr's thresholds, from ``conf/``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        baselines = compose("baselines", overrides=overrides)
        thresholds = [float(k) for k in compose("evaluate", overrides=["policy=thr"]).policy.thresholds]
    return baselines, thresholds


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
    trees: RolloutTrees, thresholds: list[float], routers: list[Any], baselines: Any, cfg: DictConfig
) -> list[dict[str, Any]]:
    """Anchors, TRIM-Thr, the baselines and the exported routers on one dataset."""
    anchors = reference(trees)
    points = anchor_points(trees)
    points += [make_point("thr", k, outcomes, anchors) for k, outcomes in zip(thresholds, run_thresholds(trees, thresholds))]
    points += baseline_points(trees, baselines, cfg)
    for router in routers:
        label = f"router:{router.config['policy']}"
        points.append(make_point(label, router.config.get("lambda"), run_episodes(trees, router), anchors))
    return points


def summarize(points: list[dict[str, Any]], trees: RolloutTrees) -> tuple[dict[str, dict[str, Any]], tuple[float, float] | None]:
    """Frontier summary per method and the common ΔIBC cost range, as ``scripts/frontier.py`` makes them.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routers", nargs="*", default=[], help="exported router directories (trained on the default data)")
    parser.add_argument("--n-queries", type=int, default=500, help="simulated queries per target preset")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed of the target datasets")
    parser.add_argument("--out", default="outputs/transfer", help="output directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of conf/baselines.yaml")
    args = parser.parse_args()

    cfg, thresholds = load_configs(args.overrides)
    routers = [load_router(path) for path in args.routers]
    baselines = fit_query_routers(load_trees(split="train"), cfg)
    out = Path(args.out)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    references: dict[str, metrics.Reference] = {}
    ibc_ranges: dict[str, tuple[float, float] | None] = {}
    with tempfile.TemporaryDirectory(prefix="trim-transfer-") as workdir:
        for name, trees in target_datasets(args.n_queries, args.seed, Path(workdir)).items():
            for path in args.routers:
                check_not_trained_on(path, trees.query_id)
            points = dataset_points(trees, thresholds, routers, baselines, cfg)
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
                "routers": args.routers,
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


if __name__ == "__main__":
    main()
