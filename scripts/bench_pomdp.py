"""Benchmark of TRIM-POMDP: fit time, solve time per λ and for an 8-λ frontier, with the solver's error bound.

Fits the model on the default data's train split (its training part, as ``train.py`` does) once,
then solves every (step, strong steps used, token bin, belief) case for each λ of the frontier
grid, for both filters. Target on a 2-core machine: <= 10 s per λ. Each time is the best of
``--repeats`` solves (the machine may be shared; the load average is printed).

Usage::

    python scripts/bench_pomdp.py [--repeats 3] [--grid-size 2001] [--json bench_pomdp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from agents.cli.train import split_validation
from agents.pomdp.fit import fit_model
from agents.pomdp.model import uniform_bin_edges
from agents.pomdp.router import planning_for
from agents.pomdp.solver import DEFAULT_GRID_SIZE, solve
from trim_env.data import load_trees
from trim_env.env import DEFAULT_COST_UNIT_TOKENS

LAMBDAS = (0.002, 0.004, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05)
VALIDATION_FRACTION = 0.2  # train.py's default: fit on the rest of the train split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="solves per λ; the best time is reported")
    parser.add_argument("--grid-size", type=int, default=DEFAULT_GRID_SIZE, help="grid points on the clean-prefix probability")
    parser.add_argument("--bins", type=int, default=20, help="PRM-score bins of the observation model")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    trees = load_trees(split="train")
    training, _ = split_validation(trees, VALIDATION_FRACTION)
    start = time.perf_counter()
    model = fit_model(trees.subset(training), uniform_bin_edges(args.bins))
    fit_time = time.perf_counter() - start
    cap = trees.max_strong_steps
    levels = 1 if cap is None else cap + 1
    cases = model.horizon * levels * len(model.rewrite_tokens) * args.grid_size
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; fit {fit_time:.2f} s on {len(training)} queries")
    print(f"cases per λ: {model.horizon} steps x {levels} strong-step levels x {len(model.rewrite_tokens)} token bins "
          f"x {args.grid_size} belief grid points = {cases:,} (exact at any belief of the simplex through 1-D tables)")

    figures: dict = {"fit_time_s": fit_time, "grid_size": args.grid_size, "bins": args.bins, "max_strong_steps": cap,
                     "load_average": os.getloadavg()[0], "filters": {}}
    header = f"{'filter':<10}{'lambda':>8}{'solve s':>10}{'error bound':>14}"
    for belief_filter in ("bayes", "per_step"):
        emissions = planning_for(model, belief_filter)
        print(f"\n{header}\n{'-' * len(header)}")
        rows = []
        for lam in LAMBDAS:
            times = []
            for _ in range(args.repeats):
                policy = solve(model, lam, DEFAULT_COST_UNIT_TOKENS, emissions, args.grid_size, cap)
                times.append(policy.solve_time_s)
            rows.append({"lambda": lam, "solve_time_s": min(times), "error_bound": policy.error_bound})
            print(f"{belief_filter:<10}{lam:>8g}{min(times):>10.3f}{policy.error_bound:>14.2e}")
        total = sum(row["solve_time_s"] for row in rows)
        print(f"{belief_filter:<10}{'8 λ':>8}{total:>10.3f}   (fit once: {fit_time:.2f} s, total {fit_time + total:.2f} s)")
        figures["filters"][belief_filter] = {"observations": int(emissions.proposal.shape[2]), "per_lambda": rows,
                                             "total_solve_time_s": total}
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
