"""Gather runs into one Pareto-frontier report: a table per method, frontier.json and a PNG.

Any mix of run directories (a Hydra multirun dir, single run dirs) and ``results.json`` files is
searched for ``results.json``; every point in them is grouped by its ``policy`` field. Methods
with several seeds are summarised per seed (mean ± SD of CPT, APGR, ΔIBC) and plotted as the
per-λ mean over seeds. Every frontier includes the weak-only (c = 0) and strong-only (c = 1)
anchors of the split.

Usage::

    python scripts/frontier.py multirun/train/2026-… outputs/evaluate/thr/… --out report/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trim_env import metrics  # noqa: E402

ANCHORS = ("weak-only", "strong-only")


def find_results(paths: list[str]) -> list[Path]:
    """Every ``results.json`` under ``paths`` (files are taken as they are)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    if not found:
        raise FileNotFoundError(f"no results.json under {paths}")
    return found


def gather(files: list[Path]) -> tuple[metrics.Reference, dict[str, list[dict[str, Any]]]]:
    """The split's anchors and the points of every method (anchors must agree across files)."""
    anchors: dict[str, dict[str, Any]] = {}
    methods: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for file in files:
        points = json.loads(file.read_text()).get("points")
        if not isinstance(points, list):
            raise ValueError(f"{file}: field 'points' is missing or not a list")
        for point in points:
            name = point["policy"]
            if name in ANCHORS:
                previous = anchors.setdefault(name, point)
                if abs(previous["accuracy"] - point["accuracy"]) > 1e-9:
                    raise ValueError(
                        f"{file}: {name} accuracy {point['accuracy']} differs from {previous['accuracy']} in another "
                        "file; the runs were evaluated on different splits"
                    )
            else:
                methods[name].append({**point, "source": str(file)})
    missing = [name for name in ANCHORS if name not in anchors]
    if missing:
        raise ValueError(f"no {missing} point in {len(files)} results files; cannot normalise costs")
    reference = metrics.Reference(
        weak_accuracy=anchors["weak-only"]["accuracy"],
        strong_accuracy=anchors["strong-only"]["accuracy"],
        strong_tokens_per_query=anchors["strong-only"]["strong_tokens_per_query"],
    )
    return reference, dict(methods)


def _with_anchors(points: list[dict[str, Any]], reference: metrics.Reference) -> tuple[np.ndarray, np.ndarray]:
    accuracy = [reference.weak_accuracy, reference.strong_accuracy] + [p["accuracy"] for p in points]
    tokens = [0.0, reference.strong_tokens_per_query] + [p["strong_tokens_per_query"] for p in points]
    return np.array(accuracy), np.array(tokens)


def by_seed(points: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        groups[int(point.get("seed", 0))].append(point)
    return dict(groups)


def mean_over_seeds(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per parameter (λ or threshold): the mean accuracy and cost over seeds."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for point in points:
        groups[point.get("lambda", point.get("parameter"))].append(point)
    return [
        {
            "parameter": key,
            "accuracy": float(np.mean([p["accuracy"] for p in group])),
            "strong_tokens_per_query": float(np.mean([p["strong_tokens_per_query"] for p in group])),
            "n_seeds": len(group),
        }
        for key, group in sorted(groups.items(), key=lambda item: (item[0] is None, item[0]))
    ]


def summarize_method(points: list[dict[str, Any]], reference: metrics.Reference) -> dict[str, Any]:
    """Per-seed frontier summaries and their mean and SD."""
    per_seed = {}
    for seed, group in sorted(by_seed(points).items()):
        accuracy, tokens = _with_anchors(group, reference)
        summary = metrics.summarize_frontier(accuracy, tokens, reference).__dict__
        # The anchors shape the envelope (CPT, APGR) but are not the method's own operating points.
        own_accuracy, own_tokens = accuracy[2:], tokens[2:]
        summary["mean_delta_ibc"] = metrics.mean_delta_ibc(own_accuracy, own_tokens, reference)
        per_seed[seed] = summary
    keys = ("cpt50", "cpt80", "cpt95", "apgr", "mean_delta_ibc")
    summary: dict[str, Any] = {"n_points": len(points), "seeds": sorted(per_seed), "per_seed": per_seed}
    for key in keys:
        values = np.array([s[key] for s in per_seed.values()], dtype=float)
        finite = values[np.isfinite(values)]
        summary[key] = float(finite.mean()) if finite.size else float("nan")
        summary[f"{key}_sd"] = float(finite.std()) if finite.size > 1 else 0.0
    return summary


def accuracy_at_matched_cost(
    points: list[dict[str, Any]], baseline: list[dict[str, Any]], reference: metrics.Reference
) -> list[dict[str, float]]:
    """For each point, the baseline frontier's envelope accuracy at the same c(π)."""
    accuracy, tokens = _with_anchors(baseline, reference)
    costs = tokens / reference.strong_tokens_per_query
    rows = []
    for point in points:
        cost = point["strong_tokens_per_query"] / reference.strong_tokens_per_query
        rows.append(
            {"normalized_cost": cost, "accuracy": point["accuracy"], "baseline_accuracy": float(metrics.envelope(costs, accuracy, [cost])[0])}
        )
    return rows


def plot(methods: dict[str, list[dict[str, Any]]], reference: metrics.Reference, path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(7, 5))
    for name, points in sorted(methods.items()):
        mean_points = mean_over_seeds(points)
        accuracy, tokens = _with_anchors(mean_points, reference)
        costs = tokens / reference.strong_tokens_per_query
        order = metrics.pareto_points(costs, accuracy)
        (line,) = axis.plot(costs[order], accuracy[order], "-", alpha=0.8, label=name)
        axis.plot(costs[2:], accuracy[2:], "o", color=line.get_color(), alpha=0.6, markersize=4)
    axis.plot([0], [reference.weak_accuracy], "k*", markersize=12, label="weak-only")
    axis.plot([1], [reference.strong_accuracy], "r*", markersize=12, label="strong-only")
    axis.plot([0, 1], [reference.weak_accuracy, reference.strong_accuracy], "k:", linewidth=0.8)
    axis.set_xlabel("c(π) = strong tokens / strong-only tokens")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.set_xlim(-0.02, 1.02)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def format_markdown(summaries: dict[str, dict[str, Any]], reference: metrics.Reference) -> str:
    lines = [
        f"Anchors: weak-only accuracy {reference.weak_accuracy:.3f}, strong-only accuracy {reference.strong_accuracy:.3f} "
        f"at {reference.strong_tokens_per_query:.1f} strong tokens/query.",
        "",
        "| method | points | seeds | CPT(50%) | CPT(80%) | CPT(95%) | APGR | mean ΔIBC |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(summary: dict[str, Any], key: str) -> str:
        value, sd = summary[key], summary[f"{key}_sd"]
        if not np.isfinite(value):
            return "not reached"
        return f"{value:.3f}" + (f" ± {sd:.3f}" if len(summary["seeds"]) > 1 else "")

    for name, summary in sorted(summaries.items(), key=lambda item: -item[1]["apgr"]):
        lines.append(
            f"| {name} | {summary['n_points']} | {len(summary['seeds'])} | {cell(summary, 'cpt50')} | {cell(summary, 'cpt80')} | "
            f"{cell(summary, 'cpt95')} | {cell(summary, 'apgr')} | {cell(summary, 'mean_delta_ibc')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run dirs, multirun dirs or results.json files")
    parser.add_argument("--out", default="frontier_report", help="directory for frontier.md/json/png")
    parser.add_argument("--title", default="Accuracy vs normalised strong cost")
    parser.add_argument("--baseline", default="thr", help="method to compare others with at matched c(π)")
    args = parser.parse_args()

    reference, methods = gather(find_results(args.paths))
    summaries = {name: summarize_method(points, reference) for name, points in methods.items()}
    matched = {}
    if args.baseline in methods:
        for name, points in methods.items():
            if name != args.baseline:
                rows = accuracy_at_matched_cost(mean_over_seeds(points), methods[args.baseline], reference)
                matched[name] = {"points": rows, "share_at_least_baseline": float(np.mean([r["accuracy"] >= r["baseline_accuracy"] for r in rows]))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = format_markdown(summaries, reference)
    for name, comparison in matched.items():
        report += (
            f"\n\n{name} vs {args.baseline} at matched c(π) (mean over seeds): accuracy ≥ {args.baseline}'s envelope at "
            f"{comparison['share_at_least_baseline']:.0%} of points\n\n| c(π) | {name} | {args.baseline} |\n|---|---|---|\n"
            + "\n".join(f"| {r['normalized_cost']:.3f} | {r['accuracy']:.3f} | {r['baseline_accuracy']:.3f} |" for r in comparison["points"])
        )
    (out / "frontier.md").write_text(report + "\n")
    (out / "frontier.json").write_text(
        json.dumps(
            {"reference": reference.__dict__, "methods": summaries, "mean_points": {n: mean_over_seeds(p) for n, p in methods.items()},
             "matched_cost": matched},
            indent=2,
        )
        + "\n"
    )
    plot(methods, reference, out / "frontier.png", args.title)
    print(report)
    print(f"\nwrote {out / 'frontier.md'}, {out / 'frontier.json'}, {out / 'frontier.png'}")


if __name__ == "__main__":
    main()
