"""The model card (README.md) of an exported router: front matter, what it says, and loading ignoring it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_PRESET, TINY_SEED

from agents.cli.common import compose
from agents.cli.train import train
from agents.export import CARD_METRICS, MODEL_CARD_FILE, SavedRouter, SavedRouterSettings, load_router, model_card, read_router_config
from trim_env.data import load_trees
from trim_env.evaluation import make_point, reference
from trim_env.tree import read_manifest


@pytest.fixture(scope="module")
def trained(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A TRIM-Thr run on the tiny dataset (no env steps): its directory and its results."""
    out = tmp_path_factory.mktemp("card_run")
    cfg = compose("config", ["policy=thr", "lambda=0.02", "seed=3", f"data.path={tiny_dataset_dir}",
                             "data.persist_growth=false", "progress_bar=false"])
    return out, train(cfg, out)


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n")[1])


def test_card_front_matter_parses_and_its_numbers_are_the_results_point(trained) -> None:
    out, results = trained
    point = results["points"][-1]
    card = front_matter((out / "router" / MODEL_CARD_FILE).read_text())
    assert card["library_name"] == "trim" and "synthetic-data" in card["tags"]
    trim = card["trim"]
    assert (trim["policy"], trim["kind"], trim["lambda"], trim["seed"]) == ("thr", "threshold", 0.02, 3)
    assert trim["test_metrics"] == {key: point[key] for key in CARD_METRICS}
    assert trim["training"]["threshold"] == point["threshold"]
    config = read_router_config(out / "router")
    assert trim["dataset"] == {"path": results["config"]["data"]["path"], "source": "simulator", "simulated": True,
                               "content_hash": config["dataset_content_hash"], "train_split": "train"}
    assert trim["test_split"] == "test"


def test_card_body_says_simulated_lambda_metrics_and_how_to_load(trained, tiny_dataset_dir: Path) -> None:
    out, results = trained
    point = results["points"][-1]
    text = (out / "router" / MODEL_CARD_FILE).read_text()
    assert f"preset `{TINY_PRESET}` with seed {TINY_SEED}" in text and "NOT real model output" in text
    assert "simulated figures, not real model results" in text and "λ = 0.02" in text
    assert f"| {CARD_METRICS['accuracy']} | {point['accuracy']:.4f} |" in text
    assert "from agents.export import load_router" in text and "trim-evaluate policy=router policy.path=DIR" in text


def test_router_with_its_card_loads_and_scores_as_in_the_results(trained, tiny_dataset_dir: Path) -> None:
    out, results = trained
    router_dir = out / "router"
    assert (router_dir / MODEL_CARD_FILE).exists()
    assert load_router(router_dir).config == json.loads((router_dir / "config.json").read_text())
    test = load_trees(path=str(tiny_dataset_dir), split="test", persist=False)  # as train.py evaluated it
    [swept] = SavedRouter.sweep(SavedRouterSettings(name="router", path=str(router_dir)), test)
    rescored = make_point("thr", 0.02, swept.outcomes, reference(test))
    assert rescored["accuracy"] == results["points"][-1]["accuracy"]


def test_card_of_a_collected_dataset_names_its_models_and_not_simulation(tiny_dataset_dir: Path) -> None:
    manifest = read_manifest(tiny_dataset_dir)
    manifest["source"] = {"kind": "collected", "weak": {"name": "Qwen2.5-Math-1.5B"}, "strong": {"name": "Qwen2.5-Math-7B"}}
    config = {"policy": "agg", "kind": "actor", "lambda": 0.01, "cost_unit_tokens": 10.0,
              "dataset_content_hash": manifest["content_hash"], "train_split": "train"}
    point = {"accuracy": 0.5, "strong_tokens_per_query": 10.0, "normalized_cost": 0.1, "pgr": 0.4, "lambda": 0.01, "seed": 0}
    anchors = [{"accuracy": 0.3}, {"accuracy": 0.8}]
    text = model_card(config, [point], anchors, manifest, "hf://datasets/me/trees@v1", "test", 100)
    card = front_matter(text)
    assert card["datasets"] == ["me/trees"] and "synthetic-data" not in card["tags"]
    assert card["trim"]["dataset"]["simulated"] is False
    assert "weak: `Qwen2.5-Math-1.5B`; strong: `Qwen2.5-Math-7B`" in text
    assert "imulated" not in text.split("---\n", 2)[2]
