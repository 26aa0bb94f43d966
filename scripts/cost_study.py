"""The frontier study under several cost models, and one report comparing them.

For each cost model named in ``costs`` (``cost_options`` maps a name to the overrides that select
it), in order:

1. under every model but the first (which counts strong tokens), the routers of
   ``rescored_policy`` trained in that first study are evaluated again under this model
   (``scripts/evaluate.py policy=router``; method ``router:<policy>``): what a router chosen for
   strong tokens is worth when the user pays in dollars, FLOPs or seconds;
2. ``scripts/run_frontier.py`` with that model: TRIM-Thr, the baselines and the oracle, a λ sweep
   of each learned policy over the seeds, trained and evaluated in that model's cost units, and its
   report in ``out/<name>/`` (the re-scored routers of step 1 are in it).

Then ``out/cost_study.md``, ``cost_study.json`` and ``cost_study.png``: APGR (mean ± SD over
seeds) and CPT(80 %) per method × cost model, each model's anchors (c_w = weak-only's cost over
strong-only's) and a panel per model with the methods' mean envelopes. Each stage skips what its
run dir already holds, so an interrupted study resumes.

Usage (a Hydra app, ``conf/cost_study.yaml``)::

    python scripts/cost_study.py out=cached_rollouts/cost_study
    python scripts/cost_study.py out=report/ 'seeds=[0]' 'costs=[strong_tokens,price]'        # a quick look
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import matplotlib.pyplot as plt
import numpy as np
from hydra import compose
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agents.cli.common import read_bool, register_schemas, settings_of
from trim_env import atomic, metrics
from trim_env.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("cost_study.md", "cost_study.json", "cost_study.png")


def run(name: str, command: list[str], times: dict[str, float]) -> None:
    """Run one stage with its output streamed; stop the study if it fails."""
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    times[name] = time.perf_counter() - started


def check_costs(cfg: DictConfig) -> dict[str, list[str]]:
    """``{name: overrides}`` of the study's cost models, each composed once so a bad one fails before any stage."""
    if OmegaConf.is_missing(cfg, "out"):
        raise ValueError("out is missing: give the study's directory, e.g. python scripts/cost_study.py out=cached_rollouts/cost_study")
    if not cfg.costs:
        raise ValueError("costs is empty; name at least one cost model of cost_options")
    costs: dict[str, list[str]] = {}
    for index, name in enumerate(str(name) for name in cfg.costs):
        if name not in cfg.cost_options:
            raise ValueError(f"costs[{index}] = {name!r} is not in cost_options {sorted(cfg.cost_options)}")
        overrides = [str(o) for o in cfg.cost_options[name]]
        try:
            model = settings_of(compose("evaluate", overrides).cost)
        except (HydraException, OmegaConfBaseException, ValueError) as error:  # each names the override or key
            raise ValueError(f"cost_options.{name} = {overrides}: {error}") from None
        if index == 0 and model.name != "strong_tokens":
            raise ValueError(f"costs[0] = {name!r} must count strong tokens (its routers are re-scored under the others)")
        costs[name] = overrides
    return costs


def trained_routers(study: Path, policy: str) -> list[Path]:
    """Exported router directories of ``policy``'s runs in a run_frontier study."""
    return sorted(path.parent for path in (study / "runs").glob(f"{policy}-*/**/router/config.json"))


def rescore(routers: list[Path], target: Path, overrides: list[str], data: list[str], times: dict[str, float], name: str) -> None:
    """Evaluate each router under ``overrides`` into ``target/<i>`` (skipping those already there)."""
    for index, router in enumerate(routers):
        run_dir = target / f"{index:03d}"
        if (run_dir / "results.json").exists():
            continue
        # The training run's seed, so the report averages seeds; quoted: a job dir's name holds '=' and ','.
        seed = json.loads((router.parent / "results.json").read_text())["points"][-1]["seed"]
        run(f"{name} rescore {index + 1}/{len(routers)}", [sys.executable, "scripts/evaluate.py", "policy=router", f"policy.path='{router}'",
                                                           f"policy.seed={seed}", f"hydra.run.dir={run_dir}", *overrides, *data], times)


def method_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """APGR, its SD, CPT(80 %) and the seed count per method of a frontier.json."""
    return {name: {"apgr": summary["apgr"]["value"], "apgr_sd": summary["apgr"]["sd"], "seeds": len(summary["seeds"]),
                   "cpt80": summary["cpt80"]["value"], "cpt80_max_pgr": summary["cpt80"].get("max_pgr")}
            for name, summary in report["methods"].items()}


def anchors(report: dict[str, Any]) -> dict[str, float]:
    """Weak-only's normalised cost and both anchors' accuracies of a frontier.json."""
    reference = report["reference"]
    return {"weak_cost": reference["weak_strong_tokens_per_query"] / reference["strong_tokens_per_query"],
            "weak_accuracy": reference["weak_accuracy"], "strong_accuracy": reference["strong_accuracy"]}


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    return f"{row['apgr']:.3f}" + (f" ± {row['apgr_sd']:.3f}" if row["apgr_sd"] is not None else "")


def _cpt_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    if row["cpt80"] is not None:
        return f"{row['cpt80']:.3f}"
    return f"not reached (max PGR {row['cpt80_max_pgr']:.2f})" if row["cpt80_max_pgr"] is not None else "not reached"


def format_markdown(models: dict[str, dict[str, Any]], overrides: dict[str, list[str]]) -> str:
    """The report: anchors per model, then APGR and CPT(80 %) per method × model."""
    names = list(models)
    methods = sorted({method for model in models.values() for method in model["methods"]}, key=lambda m: (m == "oracle", m))
    lines = [
        "# Frontiers under each cost model (simulated data)",
        "",
        "Every number below was measured on **simulated** rollout trees (the calibrated simulator), not on real models.",
        "Costs are normalised by strong-only's cost in the same model (c = 1); weak-only sits at c_w. APGR is the area",
        "under each method's envelope of its own points from (c_w, 0) on c ∈ [0, 1]: the straight weak→strong line",
        "scores (1 − c_w) / 2, so compare APGRs within a column. `router:<policy>`: routers trained in strong tokens,",
        "evaluated under the column's model.",
        "",
        "| cost model | overrides | c_w | weak-only acc | strong-only acc |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        anchor = models[name]["anchors"]
        lines.append(f"| {name} | `{' '.join(overrides[name])}` | {anchor['weak_cost']:.3f} | {anchor['weak_accuracy']:.3f} | "
                     f"{anchor['strong_accuracy']:.3f} |")
    for title, cell in (("APGR (mean ± SD over seeds)", _cell), ("CPT(80 %) (least c reaching PGR 0.8)", _cpt_cell)):
        lines += ["", f"## {title}", "", "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for method in methods:
            lines.append(f"| {method} | " + " | ".join(cell(models[name]["methods"].get(method)) for name in names) + " |")
    return "\n".join(lines)


def draw(models: dict[str, dict[str, Any]], methods: list[str]) -> plt.Figure:
    """One panel per cost model: each method's envelope of its mean points from weak-only, and the anchors."""
    columns = min(4, len(models))
    rows = -(-len(models) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    colors = dict(zip(methods, plt.get_cmap("tab10").colors))  # type: ignore[attr-defined]
    for axis, (name, model) in zip(axes.flat, models.items()):
        anchor = model["anchors"]
        max_cost = 1.0
        for method in methods:
            points = model["mean_points"].get(method)
            if not points:
                continue
            costs = np.array([anchor["weak_cost"]] + [p["normalized_cost"] for p in points])
            accuracy = np.array([anchor["weak_accuracy"]] + [p["accuracy"] for p in points])
            pareto = metrics.pareto_points(costs, accuracy)
            axis.plot(costs[pareto], accuracy[pareto], "-", color=colors[method], linewidth=1.4, label=method)
            axis.plot(costs[1:], accuracy[1:], "o", color=colors[method], markersize=2.5, alpha=0.5)
            max_cost = max(max_cost, float(costs.max()))
        axis.plot([anchor["weak_cost"]], [anchor["weak_accuracy"]], "k*", markersize=9)
        axis.plot([1.0], [anchor["strong_accuracy"]], "r*", markersize=9)
        axis.plot([anchor["weak_cost"], 1.0], [anchor["weak_accuracy"], anchor["strong_accuracy"]], "k:", linewidth=0.8)
        axis.set_title(name, fontsize=10)
        axis.set_xlim(-0.02, min(max_cost, 3.0) + 0.02)
        axis.set_xlabel("c = cost / strong-only cost")
        axis.set_ylabel("accuracy")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(models):]:
        axis.axis("off")
    legend: dict[str, Any] = {}  # one entry per method drawn in any panel
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=max(1, len(legend)), fontsize=8)
    figure.suptitle("Simulated data: accuracy vs cost under each cost model (★ weak-only / strong-only; c axis cut at 3)")
    figure.tight_layout(rect=(0, 0.05, 1, 0.96))
    return figure


def write_report(out: Path, overrides: dict[str, list[str]], figure_methods: list[str]) -> dict[str, dict[str, Any]]:
    """Read each model's frontier.json under ``out`` and write the three outputs atomically."""
    models: dict[str, dict[str, Any]] = {}
    for name in overrides:
        report = json.loads((out / name / "frontier.json").read_text())
        models[name] = {"anchors": anchors(report), "methods": method_rows(report), "mean_points": report["mean_points"],
                        "cost_unit": report["cost_unit"]}
    atomic.write_text(out / "cost_study.md", format_markdown(models, overrides) + "\n")
    atomic.write_json(out / "cost_study.json", {"simulated": "every number was measured on simulated rollout trees",
                                                "overrides": overrides, "models": models})
    figure = draw(models, figure_methods)
    try:
        atomic.write_atomic(out / "cost_study.png", lambda path: figure.savefig(path, format="png", dpi=100))
    finally:
        plt.close(figure)
    return models


@hydra.main(config_path=str(config_dir()), config_name="cost_study", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    try:
        costs = check_costs(cfg)
    except ValueError as error:
        raise SystemExit(f"cost_study.py: {error}") from None
    out = Path(str(cfg.out)).resolve()
    data = [f"data.path={cfg.data_path}"] if cfg.data_path is not None else []
    policies = "[" + ",".join(str(p) for p in cfg.policies) + "]"
    seeds = "[" + ",".join(str(s) for s in cfg.seeds) + "]"
    times: dict[str, float] = {}
    started = time.perf_counter()
    first = next(iter(costs))
    for name, overrides in costs.items():
        if name != first:
            routers = trained_routers(out / first, str(cfg.rescored_policy))
            rescore(routers, out / name / "runs" / f"rescored-{cfg.rescored_policy}", overrides, data, times, name)
        study_data = [f"data_path={cfg.data_path}"] if cfg.data_path is not None else []
        run(name, [sys.executable, "scripts/run_frontier.py", f"out={out / name}", f"policies={policies}", f"seeds={seeds}",
                   f"match_rewrite_penalty={read_bool(cfg, 'match_rewrite_penalty')}", *study_data, *overrides], times)
    models = write_report(out, costs, [str(m) for m in cfg.figure_methods])
    print((out / "cost_study.md").read_text())
    total = time.perf_counter() - started
    print(f"\nwrote {', '.join(str(out / name) for name in OUTPUTS)}; wall time {total:.0f} s")
    atomic.write_json(out / "cost_study_times.json", {"stages_s": times, "total_s": total, "models": list(models)})


def main() -> None:
    """Register the settings dataclasses (the cost models are composed to check them), then run."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
