"""One registry of router kinds, read from conf/policy/*.yaml; every kind has the same plugin shape.

Also the worked example of the README: the ``first_step`` kind is one module and one config file,
and trains, exports, loads and evaluates through the registry like every other kind.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.actor import PPO_OPTIONS, PPOSettings
from agents.base import Router
from agents.cli.common import compose
from agents.cli.evaluate import evaluate
from agents.cli.train import train
from agents.export import load_router
from agents.first_step import FirstStepRouter
from agents.registry import RegistryError, read_registry, registry
from trim_env.evaluation import run_episodes

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "conf" / "policy"


def test_every_policy_config_names_a_class_with_the_plugin_shape():
    names = sorted(path.stem for path in POLICY_DIR.glob("*.yaml"))
    assert registry().names == names
    assert {"thr", "agg", "seq", "pomdp", "random", "first_step", "router"} <= set(names)
    assert {"automix-min", "automix-last", "classifier", "knn", "oracle"} <= set(names)  # the baselines of trim-baselines
    for name in names:
        kind = registry().policy(name)
        assert dataclasses.is_dataclass(kind.Settings), name
        assert callable(kind.fit) and callable(kind.sweep) and isinstance(kind.sweep_trains, bool), name
    kinds = {router_class.kind for router_class in registry().router_classes()}
    assert {"threshold", "actor", "pomdp", "random", "first_step"} <= kinds
    for router_class in registry().router_classes():
        assert issubclass(router_class, Router) and registry().loader(router_class.kind) is router_class


def test_importing_agents_registers_nothing():
    code = "import sys, agents; print(sorted(m for m in sys.modules if m.startswith(('agents.pomdp', 'agents.baselines', 'agents.threshold'))))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_policy_config_that_does_not_resolve_is_an_error_naming_the_file_and_field(tmp_path):
    (tmp_path / "good.yaml").write_text("name: good\nrouter: agents.first_step:FirstStepRouter\n")
    assert read_registry(tmp_path).policy("good") is FirstStepRouter
    cases = {
        "missing": ("name: missing\n", "field router"),
        "module": ("name: module\nrouter: agents.nowhere:Router\n", "cannot import agents.nowhere"),
        "klass": ("name: klass\nrouter: agents.first_step:Nothing\n", "has no class Nothing"),
        "shape": ("name: shape\nrouter: agents.first_step:FirstStepSettings\n", "has no Settings"),
        "named": ("name: other\nrouter: agents.first_step:FirstStepRouter\n", "must be the file's name"),
    }
    for name, (text, message) in cases.items():
        directory = tmp_path / name
        directory.mkdir()
        (directory / f"{name}.yaml").write_text(text)
        with pytest.raises(RegistryError) as error:
            read_registry(directory).policy(name)
        assert str(directory / f"{name}.yaml") in str(error.value) and message in str(error.value), error.value
    with pytest.raises(RegistryError, match="unknown policy.name 'nope'"):
        registry().policy("nope")
    with pytest.raises(RegistryError, match="kind = 'lookup-table'"):
        registry().loader("lookup-table")


def test_the_settings_dataclasses_are_the_only_home_of_the_defaults():
    """A policy YAML sets only what differs from its dataclass; the ppo group has no YAML at all."""
    assert not list((ROOT / "conf" / "ppo").glob("*.yaml"))
    assert dict(compose("config", []).ppo) == dataclasses.asdict(PPOSettings())
    for name, settings in PPO_OPTIONS.items():  # the other ppo options are dataclass instances too
        assert dict(compose("config", [f"ppo={name}"]).ppo) == dataclasses.asdict(settings)
    for path in POLICY_DIR.glob("*.yaml"):
        content = yaml.safe_load(path.read_text())
        defaults = dataclasses.asdict(registry().policy(path.stem).Settings())
        repeated = {key: value for key, value in content.items() if key in defaults and key not in ("name", "router")
                    and defaults[key] == value}
        assert not repeated, f"{path} repeats defaults of its settings dataclass: {repeated}"
        composed = compose("config", [f"policy={path.stem}"]).policy
        assert set(composed) == set(defaults), path


# ------------------------------------------------------------------------------------------------
# The README's worked example: a new kind is one module and one config file


def test_first_step_router_regenerates_the_first_step_only(tiny_trees):
    outcomes = run_episodes(tiny_trees, FirstStepRouter())
    assert outcomes.escalations.max() == 1 and outcomes.escalations.sum() > 0
    strong_steps = tiny_trees.strong_steps[outcomes.final_node]
    assert np.array_equal(strong_steps, outcomes.escalations)


def test_first_step_trains_exports_and_evaluates_through_the_registry(tiny_dataset_dir, tmp_path):
    data = [f"data.path={tiny_dataset_dir}", "data.persist_growth=false", "progress_bar=false"]
    results = train(compose("config", ["policy=first_step", *data]), tmp_path)
    point = results["points"][-1]
    assert point["policy"] == "first_step" and point["env_steps"] == 0
    router = load_router(tmp_path / "router")
    assert isinstance(router, FirstStepRouter) and router.config["policy"] == "first_step"
    assert router.config["settings"] == {"name": "first_step", "router": "agents.first_step:FirstStepRouter"}

    swept = evaluate(compose("evaluate", ["policy=first_step", *data[:2]]))
    assert [p["policy"] for p in swept] == ["weak-only", "strong-only", "first_step"]
    assert swept[-1]["accuracy"] == pytest.approx(point["accuracy"], abs=0)
    exported = evaluate(compose("evaluate", ["policy=router", f"policy.path={tmp_path / 'router'}", *data[:2]]))
    assert exported[-1]["policy"] == "router:first_step" and exported[-1]["accuracy"] == point["accuracy"]
    assert json.loads((tmp_path / "router" / "config.json").read_text())["kind"] == "first_step"
