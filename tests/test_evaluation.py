"""The batch evaluator, the evaluation CLI and the default-data recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.registry import make_router
from trim_env import data as data_module
from trim_env.evaluation import anchor_points, reference, run_episodes, run_thresholds
from trim_env.simulate import SimulatedTrees, SimulatorParams, generate_dataset
from trim_env.tree import TreeFormatError

ROOT = Path(__file__).resolve().parents[1]


def test_vectorised_thresholds_equal_one_router_per_threshold(tiny_trees):
    thresholds = [0.0, 0.2, 0.6, 1.01]
    grid = run_thresholds(tiny_trees, thresholds)
    for threshold, outcomes in zip(thresholds, grid):
        single = run_episodes(tiny_trees, make_router("thr", threshold=threshold))
        np.testing.assert_array_equal(outcomes.correct, single.correct)
        np.testing.assert_array_equal(outcomes.strong_tokens, single.strong_tokens)


def test_threshold_zero_is_weak_only_and_above_one_regenerates_until_the_cap(tiny_trees):
    never, always = run_thresholds(tiny_trees, [0.0, 1.01])
    np.testing.assert_array_equal(never.correct, tiny_trees.weak_only_correct)
    assert never.strong_tokens.sum() == 0 and never.escalations.sum() == 0
    assert (always.escalations <= tiny_trees.max_strong_steps).all()
    assert (always.escalations > 0).all()


def test_regenerate_everywhere_on_uncapped_simulator_equals_strong_only():
    trees = SimulatedTrees(SimulatorParams.preset("math500-qwen1.5b-7b"), 3, np.arange(50))
    (always,) = run_thresholds(trees, [1.01])
    np.testing.assert_array_equal(always.correct, trees.strong_only_correct)
    np.testing.assert_array_equal(always.strong_tokens, trees.strong_only_tokens)
    assert always.cap_overrides.sum() == 0


def test_cap_overrides_are_counted_and_played_as_continue(tiny_trees):
    (always,) = run_thresholds(tiny_trees, [1.01])
    assert always.cap_overrides.sum() > 0  # K = 2 binds for an always-regenerate policy
    assert (always.escalations + always.cap_overrides == always.steps).all()


def test_anchor_points_have_cost_zero_and_one(tiny_trees):
    weak, strong = anchor_points(tiny_trees)
    anchors = reference(tiny_trees)
    assert weak["normalized_cost"] == 0 and weak["accuracy"] == anchors.weak_accuracy
    assert strong["normalized_cost"] == 1 and strong["pgr"] == 1


def _evaluate(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluate.py"), *overrides], capture_output=True, text=True, cwd=ROOT
    )


def test_evaluate_cli_writes_results_json_with_the_point_schema(tiny_dataset_dir, tmp_path):
    result = _evaluate("policy=thr", "policy.thresholds=[0,0.05,1]", f"data.path={tiny_dataset_dir}", "data.persist_growth=false", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    points = json.loads((tmp_path / "results.json").read_text())["points"]
    assert [p["policy"] for p in points] == ["weak-only", "strong-only", "thr", "thr", "thr"]
    assert [p["parameter"] for p in points[2:]] == [0.0, 0.05, 1.0]
    for point in points:
        assert {"policy", "parameter", "accuracy", "strong_tokens_per_query", "normalized_cost", "pgr"} <= set(point)
    assert points[2]["accuracy"] == points[0]["accuracy"] and points[2]["normalized_cost"] == 0
    assert "thr" in result.stdout  # the table is printed


def test_evaluate_cli_runs_the_simulator_directly_with_a_preset(tmp_path):
    result = _evaluate(
        "policy.thresholds=[0.3]", "data.preset=math500-qwen1.5b-7b", "data.seed=4", "data.n_queries=30", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    points = json.loads((tmp_path / "results.json").read_text())["points"]
    assert points[2]["cap_binding_rate"] == 0.0  # the lazy simulator has no cap


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["policy.name=nope"], "unknown policy.name 'nope'"),
        (["policy.thresholds=[-1]"], "policy.thresholds"),
        (["data.path=/nonexistent/dir"], "/nonexistent/dir"),
        (["data.preset=no-such-preset"], "unknown simulator preset 'no-such-preset'"),
    ],
)
def test_evaluate_cli_rejects_bad_input_with_a_clear_error(overrides, message, tmp_path):
    result = _evaluate(*overrides, f"hydra.run.dir={tmp_path}")
    assert result.returncode != 0
    assert message in result.stderr


def _tiny_recipe(directory: Path, digest: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    recipe = {
        "name": "tiny",
        "source": {"kind": "simulator", "preset": "math500-qwen1.5b-7b", "seed": 5},
        "n_queries": 20,
        "test_fraction": 0.5,
        "max_strong_steps": 2,
        "node_budget": 200,
        "content_digest": digest,
    }
    (directory / "default.json").write_text(json.dumps(recipe))


def test_default_data_is_regenerated_on_first_use_and_checked_against_its_digest(tmp_path, monkeypatch):
    from trim_env.tree import content_digest, load_split

    reference_dir = tmp_path / "reference"
    generate_dataset(reference_dir, "math500-qwen1.5b-7b", 20, 5, max_strong_steps=2, node_budget=200, test_fraction=0.5)
    digest = {split: content_digest(load_split(reference_dir, split)) for split in ("train", "test")}
    cache = tmp_path / "cache"
    _tiny_recipe(cache, digest)
    monkeypatch.setattr(data_module, "CACHE_DIR", cache)
    directory = data_module.default_dataset_dir()
    assert directory == cache / "tiny"
    assert content_digest(load_split(directory, "test")) == digest["test"]
    assert data_module.default_dataset_dir() == directory  # second use: no regeneration


def test_default_data_with_a_wrong_digest_is_refused_and_not_installed(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _tiny_recipe(cache, {"train": "0" * 64, "test": "0" * 64})
    monkeypatch.setattr(data_module, "CACHE_DIR", cache)
    with pytest.raises(TreeFormatError, match="digest"):
        data_module.default_dataset_dir()
    assert not (cache / "tiny").exists()
