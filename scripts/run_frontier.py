"""One command for the whole frontier study on a dataset: sweeps, baselines and the report.

Runs, each in its own run dir under ``--out``: the TRIM-Thr threshold sweep
(``scripts/evaluate.py``), all baselines and the hindsight oracle (``scripts/baselines.py``), a
Hydra multirun of ``train.py`` over the λ grid for each learned policy (jobs in parallel on the
local cores), then ``scripts/frontier.py`` over all of it. Prints the wall time of each stage.

Usage::

    python scripts/run_frontier.py --out cached_rollouts/frontier                 # Thr + Agg (8 λ) + baselines
    python scripts/run_frontier.py --policies agg seq --seeds 0 1 2 --out report/  # the full study
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS = "0.002,0.005,0.0075,0.01,0.0125,0.015,0.02,0.025"


def stage(name: str, command: list[str]) -> float:
    """Run one stage, stream its output, stop everything if it fails; returns its wall time."""
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    elapsed = time.perf_counter() - started
    print(f"== {name} took {elapsed:.1f} s", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for the run dirs and the report")
    parser.add_argument("--policies", nargs="+", default=["agg"], help="learned policies to sweep (agg, seq, pomdp)")
    parser.add_argument("--lambdas", default=LAMBDAS, help="comma-separated λ grid")
    parser.add_argument("--seeds", nargs="+", default=["0"])
    parser.add_argument("--data-path", default=None, help="dataset directory (default: the bundled data)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    runs = out / "runs"
    data = [f"data.path={args.data_path}"] if args.data_path else []
    python = sys.executable
    times = {
        "thr": stage("TRIM-Thr", [python, "scripts/evaluate.py", "policy=thr", f"hydra.run.dir={runs / 'thr'}", *data]),
        "baselines": stage("baselines", [python, "scripts/baselines.py", f"hydra.run.dir={runs / 'baselines'}", *data]),
    }
    times["train"] = stage(
        "train sweep",
        [
            python, "train.py", "-m", f"policy={','.join(args.policies)}", f"lambda={args.lambdas}",
            f"seed={','.join(args.seeds)}", "progress_bar=false", f"hydra.sweep.dir={runs / 'train'}", *data,
        ],
    )
    times["report"] = stage("report", [python, "scripts/frontier.py", str(runs), "--out", str(out)])
    total = sum(times.values())
    print("\nwall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()) + f"; total {total:.0f} s")


if __name__ == "__main__":
    main()
