"""λ-conditioned routers: the env draws λ per episode and shows it, one trained policy serves the whole frontier.

Covers :class:`trim_env.features.LambdaRange`, the conditioned :class:`~trim_env.vec_env.StepRoutingVecEnv`,
``policy=agg_conditioned`` end to end (one test point per λ of the grid, each equal to the exported
router moved to that λ), the operating point of every router kind, and serving/calibrating at a λ.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import compose_config, train_in_process  # the tiny-run helpers of train.py's tests

from agents.actor import ActorRouter, ActorSettings
from agents.export import load_router
from agents.serve.calibrate import calibrate
from agents.serve.routers import OperatingPoint, ServedRouter
from agents.threshold import ThresholdRouter
from trim_env.data import growth_source, load_trees
from trim_env.evaluation import make_point, reference, run_episodes
from trim_env.features import AGG_FEATURES, LambdaRange, with_lambda
from trim_env.tree import RolloutTrees
from trim_env.vec_env import StepRoutingVecEnv

RANGE = LambdaRange(0.001, 0.1)
GRID = [0.001, 0.01, 0.1]


def test_lambda_range_feature_is_log_scaled_and_checks_its_bounds():
    assert RANGE.feature(0.001) == pytest.approx(0.0) and RANGE.feature(0.1) == pytest.approx(1.0)
    assert RANGE.feature(0.01) == pytest.approx(0.5)
    draws = RANGE.sample(np.random.default_rng(0), 20_000)
    assert draws.min() >= 0.001 and draws.max() <= 0.1
    assert np.mean(draws < 0.01) == pytest.approx(0.5, abs=0.02)  # log-uniform: half the draws below the geometric middle
    with pytest.raises(ValueError, match=r"lambda = 0.5 is outside the λ range \[0.001, 0.1\]"):
        RANGE.check(0.5)
    for low, high in ((0.0, 0.1), (0.1, 0.01), (0.01, float("inf"))):
        with pytest.raises(ValueError, match="0 < low < high"):
            LambdaRange(low, high)
    assert with_lambda(np.zeros((3, len(AGG_FEATURES))), 0.01, RANGE)[:, -1] == pytest.approx([0.5] * 3)


def play(env: StepRoutingVecEnv, n_steps: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, list]]:
    observations = env.reset()
    steps = []
    for _ in range(n_steps):
        actions = rng.integers(0, 2, env.num_envs)
        next_observations, rewards, dones, infos = env.step(actions)
        steps.append((observations, rewards, dones, infos))
        observations = next_observations
    return steps


def test_conditioned_env_draws_lambda_per_episode_and_charges_it(tiny_trees: RolloutTrees):
    env = StepRoutingVecEnv(tiny_trees, 4, "agg", cost_unit_tokens=10.0, seed=3, lambda_range=RANGE)
    assert env.observation_space.shape == (len(AGG_FEATURES) + 1,)
    returns = np.zeros(4)
    seen = []
    for observations, rewards, dones, infos in play(env, 200, np.random.default_rng(0)):
        returns += rewards
        for index in np.flatnonzero(dones):
            info = infos[index]
            lam = info["lambda"]
            assert RANGE.low <= lam <= RANGE.high
            # The episode's own λ was shown at every decision and charged for every strong token.
            assert observations[index, -1] == pytest.approx(RANGE.feature(lam))
            assert returns[index] == pytest.approx(info["correct"] - lam * info["strong_tokens"] / 10.0, abs=1e-4)
            returns[index] = 0.0
            seen.append(lam)
    assert len(set(seen)) == len(seen) > 10  # a fresh draw per episode

    again = [infos for _, _, _, infos in play(StepRoutingVecEnv(tiny_trees, 4, "agg", 0.01, 10.0, seed=3, lambda_range=RANGE), 200,
                                               np.random.default_rng(0))]
    assert [info.get("lambda") for infos in again for info in infos if info] == seen  # seeded
    with pytest.raises(ValueError, match="set_lambda does not apply"):
        env.set_lambda(0.02)
    with pytest.raises(ValueError, match="lambda_range is built for the agg observation"):
        StepRoutingVecEnv(tiny_trees, 2, "seq", lambda_range=RANGE)


def test_conditioning_leaves_the_query_order_of_a_seed_unchanged(tiny_trees: RolloutTrees):
    def queries(**kwargs) -> list[int]:
        env = StepRoutingVecEnv(tiny_trees, 2, "agg", 0.01, 10.0, seed=5, **kwargs)
        return [info["query_index"] for _, _, _, infos in play(env, 100, np.random.default_rng(1)) for info in infos if info]

    assert queries(lambda_range=RANGE) == queries()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lambda_range", [0.02, 0.01], "policy.lambda_range = \\[0.02, 0.01\\] must be two finite numbers"),
    ("lambda_range", [0.01], "policy.lambda_range = \\[0.01\\] must be two numbers"),
    ("sweep_lambdas", [0.0001, 0.01], "policy.sweep_lambdas\\[0\\] = 0.0001 is outside the λ range"),
    ("observation", "seq", "policy.lambda_range is built for policy.observation = 'agg'"),
])
def test_conditioned_settings_are_checked(field, value, message):
    settings = ActorSettings(name="agg_conditioned", router="agents.actor:ActorRouter", lambda_range=[0.001, 0.1])
    setattr(settings, field, value)
    with pytest.raises(ValueError, match=message):
        settings.check()


@pytest.fixture(scope="module")
def conditioned_run(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conditioned")
    train_in_process("agg_conditioned", tiny_dataset_dir, out, "policy.lambda_range=[0.001,0.1]",
                     f"policy.sweep_lambdas=[{','.join(map(str, GRID))}]", "lambda=0.01")
    return out


def test_one_run_gives_a_test_point_per_lambda_of_the_grid(conditioned_run: Path, tiny_dataset_dir: Path):
    results = json.loads((conditioned_run / "results.json").read_text())
    points = [point for point in results["points"] if point["policy"] == "agg_conditioned"]
    assert [point["lambda"] for point in points] == GRID
    router = load_router(conditioned_run / "router")
    assert isinstance(router, ActorRouter) and router.operating_point_parameter() == "lambda"
    assert router.operating_point_range() == (0.001, 0.1) and router.lam == 0.01  # the run's λ is the default point
    assert router.config["lambda_conditioning"] == {"feature": "log_lambda", "low": 0.001, "high": 0.1}
    # As train.py evaluates: the test split growing from the simulator (nothing persisted).
    test = load_trees(path=str(tiny_dataset_dir), split="test", grow=True, persist=False, source=growth_source(tiny_dataset_dir, None))
    for point in points:  # each point is the exported router moved to that λ
        expected = make_point("agg_conditioned", point["lambda"], run_episodes(test, router.at_operating_point(point["lambda"])),
                              reference(test))
        assert {key: point[key] for key in expected} == expected
    assert router.lam == 0.01  # at_operating_point copies
    history = json.loads((conditioned_run / "training_history.json").read_text())
    for record in history:  # the checkpoint is chosen on the mean validation return over the grid
        per_lambda = [record[f"validation/lambda={lam:g}/objective"] for lam in GRID]
        assert record["validation/objective"] == pytest.approx(np.mean(per_lambda))


def test_the_policy_reads_its_operating_point(conditioned_run: Path, tiny_trees: RolloutTrees):
    router = load_router(conditioned_run / "router")
    observations = np.random.default_rng(0).uniform(0, 1, (256, len(AGG_FEATURES))).astype(np.float32)
    logits_input = {lam: with_lambda(observations, lam, RANGE) for lam in GRID}
    for lam in GRID:
        router.set_operating_point(lam)
        expected = router.network(torch.as_tensor(logits_input[lam])).argmax(-1).numpy()
        assert (router.predict(observations) == expected).all()
    with pytest.raises(ValueError, match=r"lambda = 0.5 is outside the λ range \[0.001, 0.1\]"):
        router.set_operating_point(0.5)


def test_routers_trained_for_one_setting_have_no_operating_point(tiny_dataset_dir: Path, tmp_path: Path):
    train_in_process("agg", tiny_dataset_dir, tmp_path / "agg")
    router = load_router(tmp_path / "agg" / "router")
    assert router.operating_point_parameter() is None
    with pytest.raises(ValueError, match="has no operating point"):
        router.set_operating_point(0.01)
    threshold = ThresholdRouter(0.5)
    moved = threshold.at_operating_point(0.7)
    assert (threshold.threshold, moved.threshold, moved.operating_point_parameter()) == (0.5, 0.7, "threshold")


def test_the_server_and_calibration_move_a_conditioned_router_along_lambda(conditioned_run: Path, tiny_trees: RolloutTrees):
    served = ServedRouter.from_directory("trim", conditioned_run / "router")
    assert served.describe()["operating_point_parameter"] == "lambda"
    router, point = asyncio.run(served.at(OperatingPoint("lambda", 0.05)))
    assert point == OperatingPoint("lambda", 0.05) and router.lam == 0.05 and served.router.lam == 0.01
    with pytest.raises(ValueError, match=r"lambda = 0.5 is outside the range \[0.001, 0.1\] it was trained for"):
        asyncio.run(served.at(OperatingPoint("lambda", 0.5)))
    best, evaluated = calibrate(served.router, tiny_trees, "normalized_cost", 0.3, grid_points=5, refine_steps=2)
    assert all(0.001 <= candidate.value <= 0.1 for candidate in evaluated)
    assert best.figures["normalized_cost"] <= 0.3


def test_frontier_reads_a_conditioned_runs_whole_curve(conditioned_run: Path, tmp_path: Path):
    from agents.cli.frontier import write_report

    write_report([str(conditioned_run)], tmp_path / "report", baseline="agg_conditioned")
    report = json.loads((tmp_path / "report" / "frontier.json").read_text())
    method = report["methods"]["agg_conditioned"]
    assert method["n_points"] == len(GRID) and method["seeds"] == [0]
    assert 0.0 < method["apgr"]["value"] < 2.0


def test_conditioned_policy_composes_from_the_registry():
    cfg = compose_config("policy=agg_conditioned")
    assert list(cfg.policy.lambda_range) == [0.0005, 0.03] and cfg.policy.router == "agents.actor:ActorRouter"
    assert (cfg.ppo.n_epochs, cfg.ppo.batch_size) == (10, 1024)  # its own ppo option (agents.actor.PPO_OPTIONS)
    assert compose_config("policy=agg_conditioned", "ppo.n_epochs=3").ppo.n_epochs == 3  # still overridable
    assert compose_config("policy=agg").ppo.n_epochs == 5


def test_evaluate_takes_an_exported_router_to_several_operating_points(conditioned_run: Path, tiny_dataset_dir: Path, tmp_path: Path):
    from test_train import run_script

    result = run_script("scripts/evaluate.py", "policy=router", f"policy.path={conditioned_run / 'router'}", f"data.path={tiny_dataset_dir}",
                        "data.persist_growth=false", "policy.operating_points=[0.001,0.1]", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr
    points = {point["parameter"]: point for point in json.loads((tmp_path / "eval" / "results.json").read_text())["points"]
              if point["policy"] == "router:agg_conditioned"}
    trained = {point["lambda"]: point for point in json.loads((conditioned_run / "results.json").read_text())["points"]
               if point["policy"] == "agg_conditioned"}
    for lam in (0.001, 0.1):  # the same router at the same λ on the same split: the training run's test point
        assert points[lam]["accuracy"] == trained[lam]["accuracy"]
        assert points[lam]["strong_tokens_per_query"] == trained[lam]["strong_tokens_per_query"]
    result = run_script("scripts/evaluate.py", "policy=router", f"policy.path={conditioned_run / 'router'}", f"data.path={tiny_dataset_dir}",
                        "data.persist_growth=false", "policy.operating_points=[0.5]", f"hydra.run.dir={tmp_path / 'bad'}")
    assert result.returncode != 0 and "policy.operating_points[0] = 0.5" in result.stderr and "outside the λ range" in result.stderr


def test_live_routing_refuses_an_operating_point_outside_the_range_before_calling_any_model(conditioned_run: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from agents.cli.route import RouteConfig, route
    from trim_env.paths import config_dir

    ConfigStore.instance().store(name="route_schema", node=RouteConfig)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="test_route"):
        cfg = compose(config_name="route", overrides=[f"router={conditioned_run / 'router'}", "problem=1+1", "operating_point=0.5"])
    with pytest.raises(ValueError, match=r"operating_point = 0.5: lambda = 0.5 is outside the λ range"):
        route(cfg)
