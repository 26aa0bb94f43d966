"""Benchmarks of uncapped training: the batched VecEnv warm and while growing, PPO throughput side by side, training memory.

Figures (2-core targets of issue #9; best of ``--repeats``):

* ``vec_env_warm_steps_per_s``: :class:`~trim_env.vec_env.StepRoutingVecEnv` at the training
  default of 64 envs, replaying episodes whose nodes are all stored (same seed and actions as a
  first pass); target >= 100k.
* ``vec_env_growing_steps_per_s``: the first pass, from the default data's seed cache, with
  random actions (30 % regenerate), which grows new nodes on most steps; target >= 30k.
* ``ppo_steps_per_s_batched_growing`` vs ``ppo_steps_per_s_capped_dummy``: SB3 PPO (TRIM-Agg
  settings) on the batched growing env vs the previous set-up, frozen capped trees in a
  ``DummyVecEnv`` of 8 single envs with 8 x 256 steps per rollout; measured side by side in one
  process; target: batched >= capped.
* ``train_peak_rss_mb``: peak memory of ``python train.py policy=agg lambda=0.01`` on the default
  data (a child process); target < 1,024 MB.

Usage::

    python scripts/bench_growth.py [--repeats 3] [--json bench_growth.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.ppo import PolicySpec
from trim_env.data import default_dataset_dir, open_split
from trim_env.env import StepRoutingEnv
from trim_env.vec_env import StepRoutingVecEnv

ROOT = Path(__file__).resolve().parents[1]


def vec_env_steps_per_s(n_envs: int, steps: int, seed: int) -> tuple[float, float, int]:
    """(growing steps/s, warm steps/s, nodes grown) of one pass with random actions, then its replay."""
    trees = open_split(default_dataset_dir(), "train", persist=False)
    actions = (np.random.default_rng(seed).random((steps // n_envs, n_envs)) < 0.3).astype(np.int64)
    passes = []
    before = trees.num_nodes
    for _ in range(2):
        env = StepRoutingVecEnv(trees, n_envs, "agg", 0.01, seed=seed)
        env.reset()
        started = time.perf_counter()
        for row in actions:
            env.step(row)
        passes.append(actions.size / (time.perf_counter() - started))
        if len(passes) == 1:
            grown = trees.num_nodes - before
    return passes[0], passes[1], grown


def ppo_steps_per_s(batched: bool, timesteps: int) -> float:
    """Env steps/s of PPO (TRIM-Agg network and update settings) learning for ``timesteps`` steps."""
    torch.set_num_threads(1)
    directory = default_dataset_dir()
    if batched:
        env = StepRoutingVecEnv(open_split(directory, "train", persist=False), 64, "agg", 0.01, seed=0)
        n_steps = 32
    else:
        trees = open_split(directory, "train", grow=False)
        env = DummyVecEnv([lambda rank=rank: StepRoutingEnv(trees, "agg", 0.01, seed=rank) for rank in range(8)])
        n_steps = 256
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=256, n_epochs=10, gamma=1.0, seed=0, device="cpu",
                policy_kwargs=PolicySpec().policy_kwargs(), verbose=0)
    started = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    return model.num_timesteps / (time.perf_counter() - started)


def train_peak_rss_mb() -> float:
    """Peak resident memory of a default TRIM-Agg training run (a child process)."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "train.py", "policy=agg", "lambda=0.01", "progress_bar=false", "data.persist_growth=false",
             f"hydra.run.dir={out}"],
            cwd=ROOT, check=True, capture_output=True,
        )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vec-steps", type=int, default=128_000)
    parser.add_argument("--ppo-steps", type=int, default=61_440)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    figures: dict[str, float] = {}
    for n_envs in (64, 8):
        runs = [vec_env_steps_per_s(n_envs, args.vec_steps, seed) for seed in range(args.repeats)]
        figures[f"vec_env_growing_steps_per_s_{n_envs}_envs"] = max(r[0] for r in runs)
        figures[f"vec_env_warm_steps_per_s_{n_envs}_envs"] = max(r[1] for r in runs)
        figures[f"vec_env_nodes_grown_per_step_{n_envs}_envs"] = runs[0][2] / args.vec_steps
    # Alternate the two set-ups so that a busy machine slows both alike.
    capped, batched = [], []
    for _ in range(args.repeats):
        capped.append(ppo_steps_per_s(False, args.ppo_steps))
        batched.append(ppo_steps_per_s(True, args.ppo_steps))
    figures["ppo_steps_per_s_capped_dummy"] = max(capped)
    figures["ppo_steps_per_s_batched_growing"] = max(batched)
    figures["train_peak_rss_mb"] = train_peak_rss_mb()

    targets = {
        "vec_env_warm_steps_per_s_64_envs": (">=", 100_000),
        "vec_env_growing_steps_per_s_64_envs": (">=", 30_000),
        "ppo_steps_per_s_batched_growing": (">=", figures["ppo_steps_per_s_capped_dummy"]),
        "train_peak_rss_mb": ("<", 1024),
    }
    print(f"{'figure':<44}{'value':>14}  target")
    for name, value in figures.items():
        target = targets.get(name)
        verdict = ""
        if target:
            ok = value >= target[1] if target[0] == ">=" else value < target[1]
            verdict = f"{target[0]} {target[1]:,.0f}  {'ok' if ok else 'MISSED'}"
        print(f"{name:<44}{value:>14,.2f}  {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
