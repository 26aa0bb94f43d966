"""Calibration report: a simulator preset side by side with the real reference figures.

Writes ``calibration.md`` (tables) and ``calibration.png`` (TRIM-Thr frontier and step counts)
to ``out``. Simulated figures are averaged over ``seeds`` runs of ``n_queries`` queries each,
evaluated through the uncapped simulator and, for the default cached test split, through the
cached trees (where the cap K and node budget apply).

Usage (a Hydra app: ``conf/calibration_report.yaml``)::

    python scripts/calibration_report.py [preset=math500-qwen1.5b-7b] [out=cached_rollouts/calibration] ['seeds=[0,1,2]']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import hydra
import matplotlib
import numpy as np
from omegaconf import DictConfig

from agents.cli.strict import check_boolean_overrides, refuse_to_overwrite
from trim_env.calibration import (
    DEFAULT_REFERENCE,
    LEVEL_AUROC_TARGET,
    MIN_SCORE_AUROC_TARGET,
    SimulatedFigures,
    Targets,
    measure,
    measure_trees,
)
from trim_env.data import load_trees
from trim_env.paths import config_dir
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import STATE_CORRECT, STATE_DERAILED, STATE_LAST_STEP_WRONG

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt


@dataclass(frozen=True)
class Arguments:
    """The report's settings (``conf/calibration_report.yaml``)."""

    preset: str
    reference: str
    seeds: list[int]
    n_queries: int
    out: str


STATE_GRIDS = {
    STATE_CORRECT: "S0_correct",
    STATE_DERAILED: "S1_irrecoverable",
    STATE_LAST_STEP_WRONG: "S2_last_step_wrong",
}


def _mean(figures: list[SimulatedFigures], name: str) -> np.ndarray:
    return np.mean([getattr(f, name) for f in figures], axis=0)


def _std(figures: list[SimulatedFigures], name: str) -> np.ndarray:
    return np.std([getattr(f, name) for f in figures], axis=0)


def observation_summary(params: SimulatorParams, reference_path: Path, n_queries: int = 2000) -> list[str]:
    """Mean current-step PRM score and P(score < 0.5) per hidden state: weak steps vs ProcessBench grids."""
    grids = json.loads(reference_path.read_text())["observation_model"]
    trees = SimulatedTrees(params, 12345, np.arange(n_queries))
    # Weak steps on weak-only paths, as the router sees them.
    node = trees.root.astype(np.int64).copy()
    scores, states = [], []
    active = np.arange(len(node))
    while active.size:
        trees.expand(node[active])
        node[active] = trees.weak_child[node[active]]
        scores.append(trees.step_prm[node[active]])
        states.append(trees.hidden_state[node[active]])
        active = active[~trees.terminal[node[active]]]
    score, state = np.concatenate(scores), np.concatenate(states)
    centres = (np.arange(20) + 0.5) * 0.05
    lines = [
        "| hidden state | ProcessBench mean score | simulated mean score | ProcessBench P(score<0.5) | simulated P(score<0.5) "
        "| simulated share of weak steps |",
        "|---|---|---|---|---|---|",
    ]
    for code, key in STATE_GRIDS.items():
        column = np.asarray(grids[key]).sum(axis=0)
        chosen = score[state == code]
        lines.append(
            f"| {key} | {float(column @ centres):.3f} | {chosen.mean():.3f} | {column[:10].sum():.3f} | "
            f"{np.mean(chosen < 0.5):.3f} | {np.mean(state == code):.3f} |"
        )
    return lines


@hydra.main(config_path=str(config_dir()), config_name="calibration_report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    check_boolean_overrides(cfg)
    args = Arguments(
        preset=str(cfg.preset),
        reference=str(cfg.reference or DEFAULT_REFERENCE),
        seeds=[int(seed) for seed in cfg.seeds],
        n_queries=int(cfg.n_queries),
        out=str(cfg.out),
    )
    refuse_to_overwrite(args.out, ("calibration.md", "calibration.png"), bool(cfg.overwrite))
    targets = Targets.load(args.reference)
    params = SimulatorParams.preset(args.preset)
    figures = [measure(params, seed, args.n_queries, targets.thresholds) for seed in args.seeds]
    cached = measure_trees(load_trees(split="test"), targets.thresholds) if args.preset == "math500-qwen1.5b-7b" else None

    acc, cost = _mean(figures, "thr_accuracy"), _mean(figures, "thr_cost")
    acc_error = np.abs(acc - targets.thr_accuracy)
    cost_error = np.abs(cost - targets.thr_cost)
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"# Calibration of preset `{args.preset}`",
        "",
        "Simulated figures (NOT real model output) against real figures measured with Qwen2.5-1.5B-Instruct (weak), "
        "Qwen2.5-7B-Instruct (strong) and Qwen2.5-Math-PRM-7B on MATH-500 (source: "
        "`trim_env/references/trim_qwen1.5b_7b_math.json`, the TRIM authors' published figures) and AUROCs from real "
        "MATH-500 trajectories (the constants in `trim_env/calibration.py`, with their sources).",
        f"Simulator: {args.n_queries} queries × seeds {{{seeds}}}, uncapped; mean ± SD over seeds.",
        f"Command: `python scripts/calibration_report.py preset={args.preset}`",
        "",
        "## Anchors and signal quality",
        "",
        "| figure | real | simulated | target |",
        "|---|---|---|---|",
    ]
    rows = [
        ("weak-only accuracy", targets.weak_accuracy, "weak_accuracy", "±0.02"),
        ("strong-only accuracy", targets.strong_accuracy, "strong_accuracy", "±0.02"),
        ("weak-only tokens / query", targets.weak_tokens, "weak_tokens", ""),
        ("strong-only tokens / query", targets.strong_tokens, "strong_tokens", "±5 %"),
        ("strong-only steps / query", targets.strong_steps, "strong_steps", ""),
        ("weak-only steps / query", float("nan"), "weak_steps", "real: 8.4-10.5 (other models)"),
        ("AUROC min step score → weak correct", MIN_SCORE_AUROC_TARGET, "min_score_auroc", "real 0.86-0.88"),
        ("AUROC last step score → weak correct", 0.86, "last_score_auroc", "real 0.86"),
        ("AUROC difficulty level → weak correct", LEVEL_AUROC_TARGET, "level_auroc", "real 0.72-0.76"),
    ]
    for label, real, name, target in rows:
        lines.append(f"| {label} | {real:.3f} | {_mean(figures, name):.3f} ± {_std(figures, name):.3f} | {target} |")
    level_accuracy = _mean(figures, "level_accuracy")
    lines += [
        "",
        "Weak-only accuracy by level 1-5 (simulated): "
        + ", ".join(f"{a:.2f}" for a in level_accuracy)
        + " (real, Llama-3.2-3B at 44.6 % overall: 0.81, 0.64, 0.52, 0.39, 0.19).",
        "",
        "## TRIM-Thr frontier at the 21 reference thresholds",
        "",
        "| k | real accuracy | simulated accuracy | real c(π) | simulated c(π) |"
        + (" cached test accuracy | cached c(π) | cap binds |" if cached else ""),
        "|---|---|---|---|---|" + ("---|---|---|" if cached else ""),
    ]
    for i, k in enumerate(targets.thresholds):
        row = f"| {k:.2f} | {targets.thr_accuracy[i]:.3f} | {acc[i]:.3f} | {targets.thr_cost[i]:.3f} | {cost[i]:.3f} |"
        if cached:
            row += f" {cached.thr_accuracy[i]:.3f} | {cached.thr_cost[i]:.3f} | {cached.thr_cap_binding[i]:.2f} |"
        lines.append(row)
    lines += [
        "",
        f"Accuracy error: mean {acc_error.mean():.3f}, max {acc_error.max():.3f} (target ≤ 0.03, ≤ 0.07). "
        f"c(π) error: mean {cost_error.mean():.3f} (target ≤ 0.05).",
    ]
    if cached:
        lines.append(
            "Cached columns: the default test split (K and node budget apply); 'cap binds' = share of queries "
            "where Thr asked to regenerate at a node without a strong child."
        )
    lines += [
        "",
        "## Observation model: weak steps vs ProcessBench grids",
        "",
        "The reference grids were fitted on ProcessBench solutions; the weak model's own steps are scored differently, "
        "so the simulator is calibrated to the on-policy frontier, not to these grids.",
        "",
        *observation_summary(params, Path(args.reference)),
    ]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.md").write_text("\n".join(lines) + "\n")

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(targets.thr_cost, targets.thr_accuracy, "o-", label="real (Qwen2.5 1.5B→7B)")
    left.errorbar(cost, acc, yerr=_std(figures, "thr_accuracy"), fmt="s-", label="simulator (uncapped)")
    if cached:
        left.plot(cached.thr_cost, cached.thr_accuracy, "^--", label="cached test split (capped)")
    left.set_xlabel("c(π) = strong tokens / strong-only tokens")
    left.set_ylabel("accuracy")
    left.set_title("TRIM-Thr frontier, MATH-500")
    left.legend()
    trees = SimulatedTrees(params, args.seeds[0], np.arange(4000))
    bins = np.arange(1, 32)
    right.hist(trees.weak_only_steps, bins=bins, alpha=0.6, density=True, label="simulated weak-only")
    right.hist(trees.strong_only_steps, bins=bins, alpha=0.6, density=True, label="simulated strong-only")
    right.axvline(targets.strong_steps, color="k", linestyle=":", label="real strong-only mean")
    right.set_xlabel("steps per solution")
    right.set_title("Solution length")
    right.legend()
    figure.tight_layout()
    figure.savefig(out / "calibration.png", dpi=110)
    print("\n".join(lines))
    print(f"\nwrote {out / 'calibration.md'} and {out / 'calibration.png'}")


if __name__ == "__main__":
    main()
