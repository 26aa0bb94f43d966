"""Benchmark: one λ-conditioned TRIM-Agg run against the per-λ TRIM-Agg sweep, side by side.

For each seed, runs (one after the other, so that neither competes with the other for the cores)
``train.py policy=agg`` at every λ of the Agg grid (``sweep_lambdas`` of ``conf/policy/agg.yaml``)
and one ``train.py policy=agg_conditioned``, whose test points are taken at the same λ grid. Then
reports, on the default test split, each method's APGR over its own points (mean ± SD over seeds,
the frontier report's own computation) and the training wall time (PPO's ``learn``, as
``train_wall_time_s`` of results.json) of the conditioned run against one per-λ run.

Targets (issue #13): APGR(conditioned) >= APGR(per-λ sweep) − 0.005; wall(conditioned) <= 2 × wall(one per-λ run).

Usage::

    python scripts/bench_conditioned.py [--seeds 0 1 2] [--out bench_conditioned] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from agents.cli.frontier import write_report

ROOT = Path(__file__).resolve().parents[1]
APGR_MARGIN = 0.005
WALL_RATIO = 2.0


def train(out: Path, *overrides: str) -> dict:
    """One ``train.py`` run into ``out`` (reused if it already finished); returns its last results point."""
    results = out / "results.json"
    if not results.exists():
        command = [sys.executable, "train.py", f"hydra.run.dir={out}", "progress_bar=false", *overrides]
        print("  " + " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(results.read_text())["points"][-1]


def apgr(runs: list[Path], method: str, report: Path) -> dict:
    """The frontier report's APGR of ``method`` over ``runs`` (mean and SD over seeds)."""
    write_report([str(run) for run in runs], report, baseline=method)
    return json.loads((report / "frontier.json").read_text())["methods"][method]["apgr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench_conditioned"), help="run dirs and reports (finished runs are reused)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    lambdas = yaml.safe_load((ROOT / "conf" / "policy" / "agg.yaml").read_text()).get("sweep_lambdas")
    if lambdas is None:  # the default lives in the settings dataclass
        from agents.actor import ActorSettings  # noqa: PLC0415

        lambdas = ActorSettings().sweep_lambdas
    out = args.out.resolve()
    per_lambda_runs, conditioned_runs = [], []
    per_lambda_walls, conditioned_walls = [], []
    started = time.perf_counter()
    for seed in args.seeds:
        print(f"seed {seed}: per-λ TRIM-Agg at λ = {lambdas}, then one λ-conditioned run", flush=True)
        for lam in lambdas:
            run = out / f"agg_lambda{lam}_seed{seed}"
            per_lambda_walls.append(train(run, "policy=agg", f"lambda={lam}", f"seed={seed}")["train_wall_time_s"])
            per_lambda_runs.append(run)
        run = out / f"agg_conditioned_seed{seed}"
        conditioned_walls.append(train(run, "policy=agg_conditioned", f"seed={seed}",
                                       f"policy.sweep_lambdas=[{','.join(map(str, lambdas))}]")["train_wall_time_s"])
        conditioned_runs.append(run)
    per_lambda_apgr = apgr(per_lambda_runs, "agg", out / "report_agg")
    conditioned_apgr = apgr(conditioned_runs, "agg_conditioned", out / "report_agg_conditioned")
    wall_per_run = float(np.mean(per_lambda_walls))
    wall_conditioned = float(np.mean(conditioned_walls))
    figures = {
        "seeds": args.seeds, "lambdas": lambdas, "load_average": os.getloadavg()[0], "bench_wall_s": time.perf_counter() - started,
        "apgr_per_lambda_sweep": per_lambda_apgr, "apgr_conditioned": conditioned_apgr,
        "train_wall_s_per_lambda_run": wall_per_run, "train_wall_s_per_lambda_sweep": wall_per_run * len(lambdas),
        "train_wall_s_conditioned": wall_conditioned, "wall_ratio": wall_conditioned / wall_per_run,
    }
    figures["apgr_target_met"] = conditioned_apgr["value"] >= per_lambda_apgr["value"] - APGR_MARGIN
    figures["wall_target_met"] = figures["wall_ratio"] <= WALL_RATIO

    def sd(entry: dict) -> str:
        return "" if entry["sd"] is None else f" ± {entry['sd']:.3f}"

    print(f"\nload average {figures['load_average']:.2f} on {os.cpu_count()} cores; seeds {args.seeds}")
    print(f"{'method':<34}{'APGR':>16}{'train wall (s)':>18}")
    print(f"{'TRIM-Agg, one run per λ':<34}{per_lambda_apgr['value']:>10.3f}{sd(per_lambda_apgr):>6}"
          f"{wall_per_run:>12.1f} per run ({len(lambdas)} runs per frontier)")
    print(f"{'TRIM-Agg λ-conditioned, one run':<34}{conditioned_apgr['value']:>10.3f}{sd(conditioned_apgr):>6}{wall_conditioned:>12.1f}")
    print(f"APGR target (>= per-λ − {APGR_MARGIN}): {'met' if figures['apgr_target_met'] else 'missed'}; "
          f"wall ratio {figures['wall_ratio']:.2f} (target <= {WALL_RATIO}): {'met' if figures['wall_target_met'] else 'missed'}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
