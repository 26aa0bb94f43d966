"""Run directories lose nothing: one run per directory, no silent overwrite, every job of a sweep its own.

Also the values checked where they enter: strict booleans, cost unit, n_envs, seeds, hidden sizes,
thresholds (each error names the key).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from agents.cli.common import compose
from agents.cli.train import train
from trim_env.run_dirs import CONFIG_SUBDIR, RunDirError, claim_run_dir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_PPO = ["policy.total_timesteps=128", "ppo.n_envs=2", "ppo.n_steps=32", "ppo.batch_size=32", "ppo.n_epochs=1", "ppo.eval_every=64"]


def run_train(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "train.py", *arguments, "progress_bar=false"], cwd=ROOT, capture_output=True, text=True,
                          env=ENV, timeout=600, check=False)


# ------------------------------------------------------------------------------------------------
# The guard itself


def test_a_directory_with_results_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / CONFIG_SUBDIR).mkdir()
    (tmp_path / CONFIG_SUBDIR / "config.yaml").write_text("old: config\n")
    with pytest.raises(RunDirError) as error, claim_run_dir(tmp_path, ["results.json"], False, {"config.yaml": "new: config\n"}):
        pytest.fail("claimed a directory holding results")
    assert str(tmp_path) in str(error.value) and "overwrite=true" in str(error.value) and "results.json" in str(error.value)
    assert (tmp_path / "results.json").read_text() == "{}"
    assert (tmp_path / CONFIG_SUBDIR / "config.yaml").read_text() == "old: config\n"


def test_overwrite_removes_every_earlier_output(tmp_path):
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "model.safetensors").write_text("old weights")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("not an output")
    with claim_run_dir(tmp_path, ["results.json", "router"], True, {"config.yaml": "new: config\n"}):
        assert not (tmp_path / "router").exists() and not (tmp_path / "results.json").exists()
    assert (tmp_path / "notes.txt").exists()
    assert (tmp_path / CONFIG_SUBDIR / "config.yaml").read_text() == "new: config\n"


def test_a_second_run_cannot_share_a_directory_that_is_in_use(tmp_path):
    with claim_run_dir(tmp_path, ["results.json"], False):
        with pytest.raises(RunDirError, match="in use by another run"), claim_run_dir(tmp_path, ["results.json"], True):
            pytest.fail("two runs held one directory")
    with claim_run_dir(tmp_path, ["results.json"], False):  # released when the first run ended
        pass


# ------------------------------------------------------------------------------------------------
# Through the entry points


def test_train_refuses_a_run_dir_with_results_unless_told_and_overwrite_leaves_no_old_router_file(tiny_dataset_dir, tmp_path):
    out = tmp_path / "run"
    data = [f"data.path={tiny_dataset_dir}", "data.persist_growth=false", f"hydra.run.dir={out}"]
    first = run_train("policy=agg", *TINY_PPO, *data)
    assert first.returncode == 0, first.stderr
    assert (out / "router" / "model.safetensors").exists() and (out / "router" / "sb3_model.zip").exists()
    recorded = (out / ".hydra" / "config.yaml").read_text()

    refused = run_train("policy=thr", *data)
    assert refused.returncode != 0
    assert str(out) in refused.stderr and "overwrite=true" in refused.stderr
    assert (out / ".hydra" / "config.yaml").read_text() == recorded  # the agg run's config still describes its results
    assert json.loads((out / "results.json").read_text())["points"][-1]["policy"] == "agg"

    replaced = run_train("policy=thr", "overwrite=true", *data)
    assert replaced.returncode == 0, replaced.stderr
    assert sorted(path.name for path in (out / "router").iterdir()) == ["README.md", "config.json", "training_queries.json"]
    assert not (out / "training_history.json").exists()
    assert yaml.safe_load((out / ".hydra" / "config.yaml").read_text())["policy"]["name"] == "thr"
    assert json.loads((out / "results.json").read_text())["points"][-1]["policy"] == "thr"


def test_evaluate_refuses_a_run_dir_with_results(tiny_dataset_dir, tmp_path):
    command = [sys.executable, "scripts/evaluate.py", "policy=thr", "policy.thresholds=[0.5]", f"data.path={tiny_dataset_dir}",
               "data.persist_growth=false", f"hydra.run.dir={tmp_path}"]
    assert subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ENV, check=False).returncode == 0
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ENV, check=False)
    assert again.returncode != 0 and "already holds results" in again.stderr and "overwrite=true" in again.stderr


def test_every_job_of_a_sweep_gets_its_own_directory(tiny_dataset_dir, tmp_path):
    """The README's sweep: 2 λ x 2 filters = 4 jobs, 4 directories, each config beside its own results."""
    result = run_train("-m", "policy=pomdp", "lambda=0.01,0.02", "policy.filter=bayes,per_step", "policy.grid_size=101",
                       f"policy.model_cache_dir={tmp_path / 'cache'}", f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(path.parent for path in (tmp_path / "sweep").glob("*/results.json"))
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        point = json.loads((job / "results.json").read_text())["points"][-1]
        router = json.loads((job / "router" / "config.json").read_text())
        assert point["lambda"] == config["lambda"] and router["filter"] == config["policy"]["filter"]
        assert f"policy.filter={config['policy']['filter']}" in job.name and f"lambda={config['lambda']}" in job.name
        seen.add((config["lambda"], config["policy"]["filter"]))
    assert seen == {(0.01, "bayes"), (0.01, "per_step"), (0.02, "bayes"), (0.02, "per_step")}


# ------------------------------------------------------------------------------------------------
# Values checked where they enter


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["progress_bar=maybe"], "progress_bar"),
        (["data.persist_growth=False"], None),  # accepted: Hydra parses it as a bool
        (["data.grow=yes"], "data.grow"),
        (["env.cost_unit_tokens=0"], "env.cost_unit_tokens"),
        (["env.cost_unit_tokens=-10"], "env.cost_unit_tokens"),
        (["seed=-1"], "seed"),
        (["seed=1.5"], "seed"),
        (["lambda=abc"], "lambda"),
        (["policy=agg", "ppo.n_envs=100000"], "ppo.n_envs"),
        (["policy=agg", "policy.hidden=[64,0]"], "policy.hidden[1]"),
        (["policy=seq", "policy.seq.n_heads=3"], "policy.seq.d_model"),
        (["policy=thr", "policy.thresholds=[-0.5]"], "policy.thresholds[0]"),
        (["policy=pomdp", "policy.filter=kalman"], "policy.filter"),
        (["policy=pomdp", "policy.max_strong_steps=-2"], "policy.max_strong_steps"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_key(overrides, key, tiny_dataset_dir, tmp_path):
    given = {override.split("=")[0] for override in overrides}
    defaults = {"policy": "thr", "data.path": str(tiny_dataset_dir), "data.persist_growth": "false", "progress_bar": "false"}
    cfg = compose("config", [*overrides, *(f"{name}={value}" for name, value in defaults.items() if name not in given)])
    if key is None:
        train(cfg, tmp_path)
        return
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        train(cfg, tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["policy=pomdp", "policy.token_evidence=maybe"], "policy.token_evidence"),
        (["policy=thr", "policy.thresholds=[0.1,high]"], "policy.thresholds"),
        (["policy=agg", "ppo.n_epochs=many"], "ppo.n_epochs"),
        (["policy=agg", "ppo.n_epoch=2"], "ppo.n_epoch"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_when_the_config_is_composed(overrides, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as error:
        compose("config", overrides)
    assert key in f"{error.value} {error.value.__cause__}"


@pytest.mark.parametrize(("override", "key"), [("data.n_queries=-5", "data.n_queries"), ("data.n_queries=abc", "data.n_queries"),
                                               ("data.seed=-1", "data.seed")])
def test_a_bad_simulated_selection_is_an_error_naming_its_key(override, key):
    from agents.cli.evaluate import evaluate

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        evaluate(compose("evaluate", ["policy=thr", "data.preset=math500-qwen1.5b-7b", override]))
