"""Benchmarks of the data path: env steps/s, batch-evaluator decisions/s, Thr frontier time, load time/memory.

Targets on a 2-core machine: env >= 50k steps/s, 21-threshold Thr frontier on the test split
<= 0.2 s, default data loaded in <= 2 s. Each figure is the best of ``--repeats`` runs.

Usage::

    python scripts/bench.py [--repeats 3] [--json bench.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from trim_env.data import default_dataset_dir
from trim_env.env import StepRoutingEnv
from trim_env.evaluation import DecisionBatch, run_episodes, run_thresholds
from trim_env.tree import load_split

THRESHOLDS = np.linspace(0.0, 1.0, 21)


def bench_env(trees, observation: str, steps: int) -> float:
    """Raw env steps/s with a fixed policy (regenerate iff the proposal's PRM score < 0.5)."""
    env = StepRoutingEnv(trees, observation=observation)
    obs, _ = env.reset(seed=0)
    prm = env.trees.step_prm
    start = time.perf_counter()
    for _ in range(steps):
        # The fixed policy reads the PRM score from the tree so the seq mode is timed on equal terms.
        action = int(prm[env.trees.weak_child[env.current_node]] < 0.5)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


class _HalfThreshold:
    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return batch.agg()[:, 0] < 0.5  # builds the feature matrix, as a learned policy would


def best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def load_in_subprocess(directory: Path) -> tuple[float, float]:
    """Load time (s) and peak resident memory (MB) of loading both splits in a fresh process."""
    code = (
        "import time, resource; t = time.perf_counter();"
        "from trim_env.tree import load_split;"
        f"train = load_split({str(directory)!r}, 'train'); test = load_split({str(directory)!r}, 'test');"
        "import sys; print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]
    )
    seconds, megabytes = output.stdout.split()
    return float(seconds), float(megabytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=200_000)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    directory = default_dataset_dir()
    load_seconds, load_megabytes = min(load_in_subprocess(directory) for _ in range(args.repeats))
    test = load_split(directory, "test")
    train = load_split(directory, "train")

    figures = {
        "default_data_load_s": load_seconds,
        "default_data_peak_rss_mb": load_megabytes,
        "test_nodes": test.num_nodes,
        "train_nodes": train.num_nodes,
        "env_steps_per_s_agg": max(bench_env(train, "agg", args.env_steps) for _ in range(args.repeats)),
        "env_steps_per_s_seq": max(bench_env(train, "seq", args.env_steps // 2) for _ in range(args.repeats)),
        "thr_frontier_21_test_s": best(lambda: run_thresholds(test, THRESHOLDS), args.repeats),
    }
    decisions = int(sum(o.steps.sum() for o in run_thresholds(test, THRESHOLDS)))
    figures["batch_decisions_per_s_thr"] = decisions / figures["thr_frontier_21_test_s"]
    queries = np.tile(np.arange(train.num_queries), 5)
    outcomes = run_episodes(train, _HalfThreshold(), queries)
    seconds = best(lambda: run_episodes(train, _HalfThreshold(), queries), args.repeats)
    figures["batch_decisions_per_s_agg_features"] = int(outcomes.steps.sum()) / seconds
    figures["this_process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    targets = {
        "env_steps_per_s_agg": (">=", 50_000),
        "thr_frontier_21_test_s": ("<=", 0.2),
        "default_data_load_s": ("<=", 2.0),
    }
    print(f"{'figure':<40}{'value':>16}  target")
    for name, value in figures.items():
        target = targets.get(name)
        verdict = ""
        if target:
            ok = value >= target[1] if target[0] == ">=" else value <= target[1]
            verdict = f"{target[0]} {target[1]:g}  {'ok' if ok else 'MISSED'}"
        print(f"{name:<40}{value:>16,.3f}  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
