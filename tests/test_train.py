"""train.py end to end: outputs, exported routers, evaluation CLI, seeds, config, errors, W&B, sweep.

Tiny budgets throughout (512 env steps). Most runs call ``train.train`` with a config composed by
Hydra's compose API; one agg run goes through ``python train.py`` as a real subprocess.

Torch runs single-threaded here (``torch.set_num_threads(1)`` in-process, ``OMP_NUM_THREADS=1``
for subprocesses): the routers' networks are tiny, and with two OpenMP threads on a 2-core machine
whose other core is busy each small matmul waits on a thread barrier (measured: 16 ms instead of
1 µs), which makes a 512-step run take 30-90 s instead of 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file
from wandb_offline import item_key, wandb_records

from agents.actor import ActorRouter
from agents.cli.common import register_schemas
from agents.cli.train import train
from agents.export import load_router
from trim_env.env import StepRoutingEnv
from trim_env.evaluation import run_episodes
from trim_env.tree import RolloutTrees, load_split, save_dataset

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TINY_BUDGET = {
    "policy.total_timesteps": 512,
    "ppo.n_envs": 2,
    "ppo.n_steps": 128,
    "ppo.batch_size": 64,
    "ppo.n_epochs": 2,
    "ppo.eval_every": 256,
}
#: Per-run figures that legitimately differ between identical runs.
TIMING_KEYS = {"train_wall_time_s", "env_steps_per_s"}
POINT_METRICS = ("accuracy", "strong_tokens_per_query", "normalized_cost", "pgr", "escalations_per_query", "cap_binding_rate")


def overrides(policy: str, data_dir: Path, *extra: str) -> list[str]:
    """Command-line overrides of a tiny run (thr has no ``policy.total_timesteps``)."""
    budget = [f"{key}={value}" for key, value in TINY_BUDGET.items() if policy != "thr" or not key.startswith("policy.")]
    return [f"policy={policy}", *budget, "progress_bar=false", f"data.path={data_dir}", "data.persist_growth=false", *extra]


def compose_config(*arguments: str):
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="test_train"):
        return compose(config_name="config", overrides=list(arguments))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_script(script: str, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *arguments], cwd=ROOT, capture_output=True, text=True, env=env or subprocess_env(), timeout=300
    )


def train_in_process(policy: str, data_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    """What ``python train.py`` does, through the compose API: train, then write results.json."""
    cfg = compose_config(*overrides(policy, data_dir, *extra))
    out.mkdir(parents=True, exist_ok=True)
    results = train(cfg, out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def without_timing(point: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in point.items() if key not in TIMING_KEYS}


@pytest.fixture(scope="module")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def runs(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory, single_thread) -> dict[str, Path]:
    """Output directories of tiny agg (real subprocess), seq and thr runs, all seed 0."""
    base = tmp_path_factory.mktemp("train_runs")
    result = run_script("train.py", *overrides("agg", tiny_dataset_dir, f"hydra.run.dir={base / 'agg'}"))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "results.json" in result.stdout
    train_in_process("seq", tiny_dataset_dir, base / "seq")
    train_in_process("thr", tiny_dataset_dir, base / "thr")
    return {policy: base / policy for policy in ("agg", "seq", "thr")}


def last_point(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())["points"][-1]


# ------------------------------------------------------------------------------------------------
# Outputs


@pytest.mark.parametrize("policy", ["agg", "seq", "thr"])
def test_training_writes_results_and_an_exported_router(runs, policy):
    out = runs[policy]
    results = json.loads((out / "results.json").read_text())
    points = results["points"]
    assert [p["policy"] for p in points[:2]] == ["weak-only", "strong-only"]
    point = points[-1]
    for key in ("policy", "lambda", "accuracy", "strong_tokens_per_query", "normalized_cost", "pgr", "train_wall_time_s", "env_steps"):
        assert key in point, key
    assert point["policy"] == policy and point["lambda"] == 0.01 and point["seed"] == 0
    assert 0.0 <= point["accuracy"] <= 1.0 and point["strong_tokens_per_query"] >= 0
    assert np.isfinite([point[k] for k in ("normalized_cost", "pgr", "train_wall_time_s")]).all()

    router = out / "router"
    config = json.loads((router / "config.json").read_text())
    assert config["policy"] == policy and config["lambda"] == 0.01
    if policy == "thr":
        assert config["kind"] == "threshold" and config["threshold"] == point["threshold"]
        assert point["env_steps"] == 0
        assert not (router / "sb3_model.zip").exists()
    else:
        assert config["kind"] == "actor" and config["observation"] == policy
        assert (router / "model.safetensors").is_file() and (router / "sb3_model.zip").is_file()
        assert point["env_steps"] == TINY_BUDGET["policy.total_timesteps"]
        assert point["train_wall_time_s"] > 0
        history = json.loads((out / "training_history.json").read_text())
        assert history and history[-1]["timesteps"] == TINY_BUDGET["policy.total_timesteps"]


@pytest.mark.parametrize("policy", ["agg", "seq", "thr"])
def test_evaluate_script_reproduces_the_training_point(runs, policy, tiny_dataset_dir, tmp_path):
    out = runs[policy]
    result = run_script(
        "scripts/evaluate.py", "policy=router", f"policy.path={out / 'router'}", f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "results.json").read_text())["points"]
    trained = json.loads((out / "results.json").read_text())["points"]
    assert evaluated[:2] == trained[:2]  # same split, same anchors
    assert evaluated[-1]["policy"] == f"router:{policy}" and evaluated[-1]["parameter"] == 0.01
    assert "seed" not in evaluated[-1]
    for key in POINT_METRICS:
        assert evaluated[-1][key] == pytest.approx(trained[-1][key], rel=1e-12, abs=1e-12), key


def test_an_evaluated_router_records_the_training_seed_it_is_given(runs, tiny_dataset_dir, tmp_path):
    result = run_script("scripts/evaluate.py", "policy=router", f"policy.path={runs['thr'] / 'router'}", "policy.seed=2",
                        f"data.path={tiny_dataset_dir}", "data.persist_growth=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "results.json").read_text())["points"][-1]["seed"] == 2


def test_evaluation_refuses_a_router_on_its_own_training_queries_unless_told(runs, tiny_dataset_dir, tmp_path):
    router = runs["thr"] / "router"
    trained_on = json.loads((router / "training_queries.json").read_text())["query_ids"]
    assert trained_on == sorted(load_split(tiny_dataset_dir, "train").query_id)
    common = ["scripts/evaluate.py", "policy=router", f"policy.path={router}", f"data.path={tiny_dataset_dir}",
              "data.persist_growth=false", "data.split=train"]
    refused = run_script(*common, f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode != 0
    assert "was trained on 48 of the 48 evaluated queries" in refused.stderr and "allow_training_queries" in refused.stderr
    allowed = run_script(*common, "policy.allow_training_queries=true", f"hydra.run.dir={tmp_path / 'allowed'}")
    assert allowed.returncode == 0, allowed.stderr


# ------------------------------------------------------------------------------------------------
# Exported routers


def _env_observations(trees: RolloutTrees, observation: str, n: int, seed: int) -> np.ndarray:
    """Observations of real decisions, reached by playing the env with random actions."""
    env = StepRoutingEnv(trees, observation=observation, lam=0.01, seed=seed)
    rng = np.random.default_rng(seed)
    collected = []
    obs, _ = env.reset()
    while len(collected) < n:
        collected.append(obs)
        obs, _, terminated, _, _ = env.step(int(rng.integers(2)))
        if terminated:
            obs, _ = env.reset()
    return np.stack(collected)


@pytest.mark.parametrize("policy", ["agg", "seq"])
def test_exported_router_decides_like_the_sb3_policy(runs, policy, tiny_dataset_dir, single_thread):
    from stable_baselines3 import PPO

    router_dir = runs[policy] / "router"
    router = load_router(router_dir)
    assert isinstance(router, ActorRouter) and router.observation_kind == policy
    model = PPO.load(router_dir / "sb3_model.zip", device="cpu")
    space = model.observation_space
    space.seed(0)
    observations = {
        "env": np.concatenate(
            [_env_observations(load_split(tiny_dataset_dir, split), policy, 600, seed) for seed, split in enumerate(("train", "test"))]
        ),
        "random": np.stack([space.sample() for _ in range(1000)]),
    }
    for source, obs in observations.items():
        assert len(obs) >= 1000 and obs.shape[1:] == space.shape
        expected, _ = model.predict(obs, deterministic=True)
        np.testing.assert_array_equal(router.predict(obs), expected, err_msg=f"{policy} router on {source} observations")
        # Stronger than equal argmaxes: the same action distribution.
        with torch.no_grad():
            sb3_logits = model.policy.get_distribution(torch.as_tensor(obs)).distribution.logits
            ours = torch.log_softmax(router.network(torch.as_tensor(obs)), dim=-1)
        np.testing.assert_allclose(ours.numpy(), sb3_logits.numpy(), rtol=0, atol=1e-5)


def test_loading_a_router_needs_neither_stable_baselines3_nor_hydra(runs):
    paths = [str(runs[policy] / "router") for policy in ("agg", "seq", "thr")]
    code = (
        "import sys, numpy as np, agents\n"
        f"for path in {paths!r}:\n"
        "    router = agents.load_router(path)\n"
        "    shape = (2, 30, 4) if router.observation_kind == 'seq' else (2, 7)\n"
        "    router.predict(np.zeros(shape, dtype=np.float32))\n"
        "print('stable_baselines3' in sys.modules, 'hydra' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_load_router_errors_name_the_file_and_field(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json") as error:
        load_router(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_router(tmp_path / "empty")

    def broken(name: str, policy: str = "thr", edit=None, raw: str | None = None) -> Path:
        directory = shutil.copytree(runs[policy] / "router", tmp_path / name)
        path = directory / "config.json"
        if raw is not None:
            path.write_text(raw)
        else:
            config = json.loads(path.read_text())
            edit(config)
            path.write_text(json.dumps(config))
        return directory

    cases = [
        (broken("version", edit=lambda c: c.update(format_version=99)), "version 99"),
        (broken("format", edit=lambda c: c.update(format="other")), "'other'"),
        (broken("spec", edit=lambda c: c["feature_spec"].update(token_scale=1.0)), "feature_spec"),
        (broken("spec_agg", "agg", edit=lambda c: c["feature_spec"]["agg_features"].pop()), "feature_spec"),
        (broken("kind", edit=lambda c: c.update(kind="lookup-table")), "kind = 'lookup-table'"),
        (broken("json", raw="{not json"), "not valid JSON"),
    ]
    for directory, expected in cases:
        with pytest.raises(ValueError) as error:
            load_router(directory)
        message = str(error.value)
        assert str(directory / "config.json") in message and expected in message, message

    no_weights = shutil.copytree(runs["agg"] / "router", tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_router(no_weights)


# ------------------------------------------------------------------------------------------------
# Seeds


def test_seeds_are_honoured(runs, tiny_dataset_dir, tmp_path, single_thread):
    same = train_in_process("agg", tiny_dataset_dir, tmp_path / "seed0")  # in-process; runs["agg"] was a subprocess
    other = train_in_process("agg", tiny_dataset_dir, tmp_path / "seed1", "seed=1")
    reference = json.loads((runs["agg"] / "results.json").read_text())["points"]
    assert [without_timing(p) for p in same["points"]] == [without_timing(p) for p in reference]

    weights = {name: load_file(str(out / "router" / "model.safetensors")) for name, out in
               (("reference", runs["agg"]), ("same", tmp_path / "seed0"), ("other", tmp_path / "seed1"))}
    assert weights["same"].keys() == weights["reference"].keys()
    assert all(torch.equal(weights["same"][k], weights["reference"][k]) for k in weights["reference"])
    assert not all(torch.equal(weights["other"][k], weights["reference"][k]) for k in weights["reference"])
    history = [json.loads((out / "training_history.json").read_text()) for out in (runs["agg"], tmp_path / "seed0")]
    assert [without_timing(r) for r in history[0]] == [without_timing(r) for r in history[1]]
    assert other["points"][-1]["seed"] == 1


# ------------------------------------------------------------------------------------------------
# Configuration and errors


def test_every_policy_and_logger_option_composes():
    policies = sorted(path.stem for path in (CONF / "policy").glob("*.yaml"))
    loggers = sorted(path.stem for path in (CONF / "logger").glob("*.yaml"))
    assert {"agg", "seq", "thr"} <= set(policies) and {"none", "wandb", "tensorboard"} <= set(loggers)
    for policy in policies:
        for logger in loggers:
            cfg = compose_config(f"policy={policy}", f"logger={logger}", "lambda=0.02")
            assert cfg.policy.name == policy and cfg.logger.name == logger
            assert float(cfg["lambda"]) == 0.02 and "lambda" not in cfg.policy  # a top-level key
            if policy != "router":  # router needs policy.path (it is for scripts/evaluate.py)
                OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    for policy in ("thr", "router"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            assert compose(config_name="evaluate", overrides=[f"policy={policy}"]).policy.name == policy


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["policy=nope"], "nope"),
        (["lambda=-0.1"], "lambda"),
        (["data.path={missing}"], "{missing}"),
    ],
    ids=["unknown-policy", "negative-lambda", "missing-data-dir"],
)
def test_bad_input_fails_with_a_clear_message(arguments, expected, tiny_dataset_dir, tmp_path):
    missing = str(tmp_path / "no_such_dataset")
    arguments = [a.format(missing=missing) for a in arguments]
    if not any(a.startswith("data.path") for a in arguments):
        arguments.append(f"data.path={tiny_dataset_dir}")
    result = run_script("train.py", *arguments, "progress_bar=false", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode != 0
    assert expected.format(missing=missing) in result.stderr, result.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_unknown_policy_for_train_is_a_clear_error(tiny_dataset_dir, tmp_path):
    cfg = compose_config("policy=router", "policy.path=x", f"data.path={tiny_dataset_dir}")
    with pytest.raises(ValueError, match="policy.name 'router'"):
        train(cfg, tmp_path)


# ------------------------------------------------------------------------------------------------
# Weights & Biases


def test_wandb_offline_run(tiny_dataset_dir, tmp_path):
    out = tmp_path / "run"
    home = tmp_path / "wandb_home"
    dead = "http://127.0.0.1:9"  # the discard port: any network attempt fails at once
    env = subprocess_env(
        WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(out), WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"), WANDB_DATA_DIR=str(home / "data"), WANDB_ARTIFACT_DIR=str(home / "artifacts"),
        WANDB_BASE_URL=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead, NO_PROXY="", no_proxy="",
        WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true",
    )
    env.pop("WANDB_API_KEY", None)
    started = time.perf_counter()
    result = run_script("train.py", *overrides("agg", tiny_dataset_dir, "logger=wandb", f"hydra.run.dir={out}"), env=env)
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 120
    accuracy = last_point(out)["accuracy"]

    logs = list(out.glob("**/*.wandb"))
    assert len(logs) == 1 and logs[0].parent.name.startswith("offline-run-"), logs
    records = wandb_records(logs[0])
    summary_files = list(out.glob("**/wandb-summary.json"))
    if summary_files:  # written by older W&B versions for offline runs too
        summary = json.loads(summary_files[0].read_text())
    else:  # wandb-core (0.31) keeps an offline run's summary only in the transaction log
        summary = {
            item_key(item): json.loads(item.value_json)
            for record in records if record.WhichOneof("record_type") == "summary"
            for item in record.summary.update
        }
    assert summary["test/accuracy"] == pytest.approx(accuracy, abs=1e-12)
    history = [
        {item_key(item): json.loads(item.value_json) for item in record.history.item}
        for record in records if record.WhichOneof("record_type") == "history"
    ]
    assert history and all("validation/accuracy" in row for row in history)
    assert records[-1].WhichOneof("record_type") == "exit" and records[-1].exit.exit_code == 0
    for debug_log in out.glob("**/debug*.log"):
        assert "127.0.0.1:9" not in debug_log.read_text(errors="replace"), f"{debug_log} records a network attempt"


# ------------------------------------------------------------------------------------------------
# TensorBoard and the training log


def test_tensorboard_logger_writes_sb3_and_validation_scalars(tiny_dataset_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = run_script("train.py", *overrides("agg", tiny_dataset_dir, "logger=tensorboard", f"hydra.run.dir={out}"))
    assert result.returncode == 0, result.stderr
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # SB3's own log (VecMonitor's episodes, PPO's losses), the validation records, the test metrics.
    assert {"rollout/ep_rew_mean", "rollout/ep_len_mean", "train/value_loss", "train/entropy_loss", "time/fps"} <= tags, tags
    assert {"validation/objective", "validation/accuracy", "validation/strong_tokens_per_query", "test/accuracy"} <= tags, tags
    history = json.loads((out / "training_history.json").read_text())
    objective = events.Scalars("validation/objective")
    assert [event.step for event in objective] == [int(record["timesteps"]) for record in history]
    assert [event.value for event in objective] == pytest.approx([record["validation/objective"] for record in history], abs=1e-6)
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(last_point(out)["accuracy"], abs=1e-6)


def test_the_run_directory_holds_the_training_log(runs):
    """Hydra's job log (``train.log``) holds one progress line per validation of the training history."""
    out = runs["agg"]
    lines = [line for line in (out / "train.log").read_text().splitlines() if "validation objective" in line]
    history = json.loads((out / "training_history.json").read_text())
    assert len(lines) == len(history)
    for line, record in zip(lines, history):
        assert f"{int(record['timesteps'])} env steps: validation objective {record['validation/objective']:.4f}" in line
        assert f"accuracy {record['validation/accuracy']:.4f}" in line


# ------------------------------------------------------------------------------------------------
# The W&B sweep file


def test_sweep_file_renders_a_runnable_command():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep = yaml.safe_load((CONF / "sweep" / "lambda.yaml").read_text())
    assert sweep["program"] == "train.py" and sweep["method"] == "grid"
    assert sweep["command"] == ["${env}", "python", "${program}", "${args_no_hyphens}"]
    parameters = sweep["parameters"]
    assert parameters["lambda"]["values"] == [0.002, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025]
    assert parameters["seed"]["values"] == [0, 1, 2] and parameters["policy"]["values"] == ["agg", "seq"]

    chosen = {"lambda": 0.01, "policy": "agg", "seed": 1}
    args = {name: {"value": chosen.get(name, spec.get("value"))} for name, spec in sorted(parameters.items())}
    variables = create_sweep_command_args({"args": args})
    assert {"lambda=0.01", "policy=agg", "seed=1"} <= set(variables["args_no_hyphens"])
    # The agent's substitution (wandb_agent.Agent._command_run); `python` is this interpreter here.
    variables.update(env=["/usr/bin/env"], program=[sweep["program"]], interpreter=["python"])
    command: list[str] = []
    for chunk in sweep["command"]:
        if chunk.startswith("${") and chunk.endswith("}"):
            command += variables[chunk[2:-1]]
        else:
            command.append(sys.executable if chunk == "python" else chunk)
    assert command[:3] == ["/usr/bin/env", sys.executable, "train.py"]
    result = subprocess.run([*command[1:], "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["lambda"] == 0.01 and printed["seed"] == 1 and printed["policy"]["name"] == "agg"
    assert printed["logger"]["name"] == "wandb" and printed["logger"]["mode"] == "online"


# ------------------------------------------------------------------------------------------------
# Only the sequence observation can solve this task


def _history_task(n: int, rng: np.random.Generator, tokens: int = 50) -> RolloutTrees:
    """Queries of 3 steps with one decision, at step 3, whose right answer depends on step 1 only.

    Steps 1 and 2 are weak without a strong alternative (the env plays them); step 1 scores 0.3 or
    0.9 (half the queries each), step 2 always 0.1. At step 3 continue is correct iff step 1 scored
    0.3, regenerate iff it scored 0.9. The Agg features at the decision are the same for both
    kinds (min previous = previous = 0.1); the Seq features hold step 1.
    """
    first = rng.permutation(np.repeat(np.array([0.3, 0.9], dtype=np.float32), n // 2))
    weak_wins = first < 0.5
    columns: dict[str, list] = {name: [] for name in (
        "query", "parent", "weak_child", "strong_child", "depth", "strong_steps", "step_tokens", "step_prm",
        "step_is_strong", "terminal", "correct")}
    for query, (prm, weak_right) in enumerate(zip(first, weak_wins)):
        b = 5 * query  # root, step 1, step 2, step 3 weak, step 3 strong (breadth-first)
        rows = [
            # parent, weak, strong, depth, strong steps, tokens, prm, strong, terminal, correct
            (-1, b + 1, -1, 0, 0, 0, 1.0, False, False, -1),
            (b, b + 2, -1, 1, 0, tokens, prm, False, False, -1),
            (b + 1, b + 3, b + 4, 2, 0, tokens, 0.1, False, False, -1),
            (b + 2, -1, -1, 3, 0, tokens, 0.5, False, True, int(weak_right)),
            (b + 2, -1, -1, 3, 1, tokens, 0.5, True, True, int(not weak_right)),
        ]
        for row in rows:
            for name, value in zip(list(columns)[1:], row):
                columns[name].append(value)
            columns["query"].append(query)
    dtypes = {"query": np.int32, "parent": np.int32, "weak_child": np.int32, "strong_child": np.int32, "depth": np.int16,
              "strong_steps": np.int16, "step_tokens": np.int32, "step_prm": np.float32, "step_is_strong": bool,
              "terminal": bool, "correct": np.int8}
    return RolloutTrees(
        **{name: np.array(values, dtype=dtypes[name]) for name, values in columns.items()},
        hidden_state=np.full(5 * n, -1, dtype=np.int8),
        query_id=[f"history-{query}" for query in range(n)],
        root=np.arange(n, dtype=np.int32) * 5,
        level=np.zeros(n, dtype=np.int8),
        features=np.zeros((n, 1), dtype=np.float32),
        weak_only_correct=weak_wins.astype(np.int8),
        weak_only_tokens=np.full(n, 3 * tokens, dtype=np.int32),
        weak_only_steps=np.full(n, 3, dtype=np.int16),
        # The only strong step available is step 3: "strong-only" is the regenerate path.
        strong_only_correct=(~weak_wins).astype(np.int8),
        strong_only_tokens=np.full(n, tokens, dtype=np.int32),
        strong_only_steps=np.full(n, 3, dtype=np.int16),
        # Steps 1 and 2 have no strong rewrite: routers regenerating proposals >= 0.1 meet that.
        strong_branch_cutoff=np.full(n, 0.1, dtype=np.float32),
        max_strong_steps=1,
        node_budget=5,
    )


def test_only_sequence_history_can_solve_the_history_task(tmp_path, single_thread):
    from agents.ppo import PolicySpec, PPOSettings, train_router

    rng = np.random.default_rng(0)
    # Through the on-disk format, whose validator checks the hand-built trees.
    save_dataset(tmp_path / "history", {"train": _history_task(64, rng), "validation": _history_task(32, rng)},
                 source={"test": "history task"}, max_strong_steps=1, node_budget=5)
    train, validation = (load_split(tmp_path / "history", split) for split in ("train", "validation"))

    decisions = {}
    for kind in ("agg", "seq"):
        env = StepRoutingEnv(validation, observation=kind, lam=0.0, seed=0)
        decisions[kind] = []
        for query in range(validation.num_queries):
            obs, _ = env.reset(options={"query_index": query})
            decisions[kind].append(obs)
            assert env.current_node == validation.root[query] + 2  # steps 1 and 2 were auto-played
            _, reward, terminated, _, info = env.step(0)
            assert terminated and reward == validation.weak_only_correct[query] and info["cap_reached"]
    assert len({obs.tobytes() for obs in decisions["agg"]}) == 1  # Agg cannot tell the queries apart
    assert len({obs.tobytes() for obs in decisions["seq"]}) == 2

    settings = PPOSettings(n_envs=4, n_steps=64, batch_size=64, n_epochs=4, eval_every=512)
    specs = {"seq": PolicySpec(observation="seq", hidden=[64], seq={"d_model": 32, "n_layers": 2, "n_heads": 4, "ff_dim": 64}),
             "agg": PolicySpec(observation="agg", hidden=[64, 64])}
    accuracy = {}
    for kind, spec in specs.items():
        result = train_router(train, np.arange(train.num_queries), validation, spec, settings, 4096, 0.0, 10.0, seed=0,
                              progress_bar=False)
        exported = run_episodes(validation, ActorRouter(result.actor, kind)).correct.mean()
        assert exported == result.best["validation/accuracy"]  # the exported actor is the best checkpoint
        accuracy[kind] = exported
    assert accuracy["seq"] >= 0.9, accuracy
    assert accuracy["agg"] <= 0.7, accuracy


# ------------------------------------------------------------------------------------------------
# The config is the truth


@pytest.mark.parametrize("policy", ["agg", "seq"])
def test_the_trained_model_has_the_hyper_parameters_the_config_records(policy, tiny_dataset_dir, tmp_path):
    """``python train.py policy=seq ppo.n_epochs=1 ppo.batch_size=128`` trains with 1 / 128, as recorded."""
    from stable_baselines3 import PPO

    out = tmp_path / "run"
    result = run_script(
        "train.py", f"policy={policy}", "policy.total_timesteps=256", "ppo.n_envs=4", "ppo.n_steps=32", "ppo.batch_size=16",
        "ppo.n_epochs=1", "ppo.learning_rate=0.001", "ppo.gamma=0.99", "ppo.gae_lambda=0.9", "ppo.clip_range=0.3", "ppo.vf_coef=0.25",
        "ppo.max_grad_norm=0.7", "ppo.eval_every=128", "policy.hidden=[16,8]", "progress_bar=false", f"data.path={tiny_dataset_dir}",
        "data.persist_growth=false", f"hydra.run.dir={out}",
    )
    assert result.returncode == 0, result.stderr
    recorded = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    ppo, policy_config = recorded["ppo"], recorded["policy"]
    assert (ppo["n_epochs"], ppo["batch_size"], ppo["learning_rate"]) == (1, 16, 0.001)  # the overrides were recorded
    model = PPO.load(out / "router" / "sb3_model.zip", device="cpu")
    assert model.n_envs == ppo["n_envs"] and model.n_steps == ppo["n_steps"] and model.batch_size == ppo["batch_size"]
    assert model.n_epochs == ppo["n_epochs"] and model.learning_rate == ppo["learning_rate"]
    assert model.gamma == ppo["gamma"] and model.gae_lambda == ppo["gae_lambda"] and model.clip_range(1.0) == ppo["clip_range"]
    assert model.vf_coef == ppo["vf_coef"] and model.max_grad_norm == ppo["max_grad_norm"]
    assert model.ent_coef == pytest.approx(ppo["ent_coef_end"], abs=ppo["ent_coef_start"])  # decayed from start towards end
    assert model.num_timesteps == policy_config["total_timesteps"]
    assert model.policy.net_arch == {"pi": policy_config["hidden"], "vf": policy_config["hidden"]}
    if policy == "seq":
        assert model.policy.features_extractor_kwargs == policy_config["seq"]
    exported = json.loads((out / "router" / "config.json").read_text())
    assert exported["ppo"] == ppo and exported["settings"] == policy_config  # the export records the same settings
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["ppo"] == ppo and results["config"]["policy"] == policy_config
