"""Checkpoints and ``train.py … resume=PATH``: a killed run, resumed, ends where the uninterrupted run ends.

The runs train on a small simulated dataset with a node budget, so the trees grow during training
and (``data.persist_growth=true``, the default) persist what they grow: a resumed process loads
the killed run's growth shards, whose node ids differ from the ids in the killed process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from agents.checkpoints import CHECKPOINT_DIR, checkpoints_in, find_checkpoint
from agents.cli.common import register_schemas
from agents.cli.train import train
from agents.ppo import ValidationCallback
from trim_env.cost import PriceCost
from trim_env.data import load_trees
from trim_env.simulate import generate_dataset
from trim_env.vec_env import StepRoutingVecEnv

ROOT = Path(__file__).resolve().parents[1]
#: 8 rollouts of 4 x 64 steps; a checkpoint every 2 rollouts (at 512, 1024, 1536 steps).
BUDGET = [
    "lambda=0.01", "policy.total_timesteps=2048", "ppo.n_envs=4", "ppo.n_steps=64", "ppo.batch_size=64",
    "ppo.n_epochs=2", "ppo.eval_every=384", "ppo.checkpoint_every=512", "progress_bar=false",
]
#: The killed run dies at the first validation after this many steps (past the 1024-step checkpoint).
KILLED_AFTER = 1100
#: Per-run figures that legitimately differ between identical runs.
TIMING_KEYS = {"env_steps_per_s"}


@pytest.fixture(scope="module")
def growing_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset whose trees hold only part of their nodes (node budget 40 per query): training grows them."""
    directory = tmp_path_factory.mktemp("growing") / "data"
    generate_dataset(directory, preset="math500-qwen1.5b-7b", n_queries=40, seed=3, max_strong_steps=2, node_budget=40)
    return directory


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_train(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "train.py", *arguments], cwd=ROOT, capture_output=True, text=True, env=subprocess_env(),
                          timeout=300)


def compose_config(*arguments: str):
    register_schemas()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="test_resume"):
        return compose(config_name="config", overrides=list(arguments))


class Killed(Exception):
    """Stands for the process being killed."""


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "router" / "model.safetensors"))


def history(run: Path) -> list[dict[str, float]]:
    records = json.loads((run / "training_history.json").read_text())
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


@pytest.mark.parametrize(
    ("policy", "persist_growth"),
    [("agg", True), ("seq", False), ("agg_conditioned", True)],
    ids=["agg-growth-persisted", "seq-growth-grown-again", "agg-conditioned"],
)
def test_a_killed_run_resumed_gives_the_uninterrupted_runs_router(policy, persist_growth, growing_dataset, tmp_path, monkeypatch):
    """With persisted growth the resumed process loads the killed one's shards; without, it grows the envs' nodes again."""
    uninterrupted_data, killed_data = (shutil.copytree(growing_dataset, tmp_path / name) for name in ("data_a", "data_b"))
    budget = [*BUDGET, f"policy={policy}", f"data.persist_growth={str(persist_growth).lower()}"]
    uninterrupted = tmp_path / "uninterrupted"
    result = run_train(*budget, f"data.path={uninterrupted_data}", f"hydra.run.dir={uninterrupted}")
    assert result.returncode == 0, result.stderr
    assert [path.name for path in checkpoints_in(uninterrupted / CHECKPOINT_DIR)] == [
        f"checkpoint_{steps}_steps.zip" for steps in (512, 1024, 1536)]

    killed = tmp_path / "killed"
    killed.mkdir()
    evaluate = ValidationCallback.evaluate

    def evaluate_then_die(self: ValidationCallback) -> None:
        evaluate(self)
        if self.num_timesteps > KILLED_AFTER:
            raise Killed

    monkeypatch.setattr(ValidationCallback, "evaluate", evaluate_then_die)
    with pytest.raises(Killed):
        train(compose_config(*budget, f"data.path={killed_data}"), killed)
    monkeypatch.undo()
    assert find_checkpoint(killed).name == "checkpoint_1024_steps.zip"
    assert not (killed / "results.json").exists() and not (killed / "router").exists()
    assert bool(list((killed_data / "train" / "growth").glob("*.parquet"))) == persist_growth

    resumed = run_train(*budget, f"data.path={killed_data}", f"resume={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "results.json").is_file()  # written into the killed run's own directory

    expected, got = weights(uninterrupted), weights(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert history(killed) == history(uninterrupted)
    best = json.loads((killed / "results.json").read_text())["points"][-1]["best_checkpoint_timesteps"]
    from stable_baselines3 import PPO

    models = [PPO.load(run / "router" / "sb3_model.zip", device="cpu") for run in (uninterrupted, killed)]
    assert models[0].num_timesteps == models[1].num_timesteps == 2048
    # The best checkpoint may predate the kill; the optimizer's state is that of the last update.
    optimizer_states = [model.policy.optimizer.state_dict()["state"] for model in models]
    for index, state in optimizer_states[0].items():
        assert torch.equal(state["exp_avg"], optimizer_states[1][index]["exp_avg"]), (index, best)


def test_resume_refuses_a_missing_checkpoint_and_another_config(growing_dataset, tmp_path):
    data = shutil.copytree(growing_dataset, tmp_path / "data")
    missing = run_train(*BUDGET, f"data.path={data}", f"resume={tmp_path / 'no_such_run'}")
    assert missing.returncode != 0
    assert f"resume = {tmp_path / 'no_such_run'}: no such file or directory" in missing.stderr, missing.stderr
    assert not (tmp_path / "no_such_run").exists()

    run = tmp_path / "run"
    assert run_train(*BUDGET, "policy.total_timesteps=768", "ppo.checkpoint_every=256", f"data.path={data}",
                     f"hydra.run.dir={run}").returncode == 0
    (run / "results.json").unlink()
    shutil.rmtree(run / "router")
    (run / "training_history.json").unlink()
    empty = tmp_path / "empty"
    (empty / CHECKPOINT_DIR).mkdir(parents=True)
    no_checkpoint = run_train(*BUDGET, f"data.path={data}", f"resume={empty}")
    assert no_checkpoint.returncode != 0 and "no checkpoint in" in no_checkpoint.stderr, no_checkpoint.stderr

    recorded = (run / ".hydra" / "config.yaml").read_text()
    other = run_train(*BUDGET, "policy.total_timesteps=768", "ppo.checkpoint_every=256", "ppo.n_epochs=3", f"data.path={data}",
                      f"resume={run}")
    assert other.returncode != 0
    assert f"{run / '.hydra' / 'config.yaml'} records a run with ppo.n_epochs = 2, this run has ppo.n_epochs = 3" in other.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == recorded  # refused before the directory was claimed
    # Without the run's recorded config, the checkpoint's own record refuses it when training starts.
    bare = shutil.copytree(run, tmp_path / "bare", ignore=shutil.ignore_patterns(".hydra"))
    other = run_train(*BUDGET, "policy.total_timesteps=768", "ppo.checkpoint_every=256", "lambda=0.02", f"data.path={data}",
                      f"resume={bare}")
    assert other.returncode != 0
    assert "checkpoint_512_steps.zip records a run with lambda = 0.01, this run has lambda = 0.02" in other.stderr, other.stderr
    assert not (bare / "results.json").exists()

    finished = run_train(*BUDGET, "policy.total_timesteps=768", "ppo.checkpoint_every=256", f"data.path={data}", f"resume={run}")
    assert finished.returncode == 0, finished.stderr
    again = run_train(*BUDGET, "policy.total_timesteps=768", "ppo.checkpoint_every=256", f"data.path={data}", f"resume={run}")
    assert again.returncode != 0 and "already holds results" in again.stderr, again.stderr


@pytest.mark.parametrize("priced", [False, True], ids=["strong-tokens", "price"])
def test_env_state_continues_the_episodes_in_a_fresh_env(priced, growing_dataset, tmp_path):
    """Node ids may differ between processes; the state names nodes by path, so the continuation is the same
    (under a priced model the episodes' costs so far, and what no reward has paid yet, too)."""
    data = shutil.copytree(growing_dataset, tmp_path / "data")
    trees = load_trees(path=str(data), split="train", persist=False)
    stored_nodes = trees.num_nodes
    cost_model = PriceCost() if priced else None
    env = StepRoutingVecEnv(trees, n_envs=8, observation="seq", lam=0.01, seed=5, cost_model=cost_model)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(30):
        env.step(rng.integers(0, 2, size=8))
    assert (env._node >= stored_nodes).any(), "no env stands on a grown node: the test would not need paths"
    state = env.get_state()
    fresh = StepRoutingVecEnv(load_trees(path=str(data), split="train", persist=False), n_envs=8, observation="seq", lam=0.5, seed=99,
                              cost_model=cost_model)
    fresh.set_state(state)
    assert fresh.lam == env.lam
    for _ in range(40):
        actions = rng.integers(0, 2, size=8)
        expected, got = env.step(actions), fresh.step(actions)
        for a, b in zip(expected[:3], got[:3]):
            np.testing.assert_array_equal(a, b)
        assert [(info.get("query_id"), info.get("cost")) for info in expected[3]] == [(info.get("query_id"), info.get("cost")) for info in got[3]]
    with pytest.raises(ValueError, match="4 envs over"):
        StepRoutingVecEnv(trees, n_envs=4, observation="seq", seed=0).set_state(state)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_checkpoint_every_must_be_a_count_of_steps(value):
    from agents.actor import PPOSettings

    with pytest.raises(ValueError, match=f"ppo.checkpoint_every = {value!r} must be an integer >= 0"):
        PPOSettings(checkpoint_every=value).check()
    assert PPOSettings(checkpoint_every=0).check().checkpoint_every == 0  # 0: no checkpoints
