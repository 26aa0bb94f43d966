"""A dataset directory is a 🤗 datasets repository: its card, ``load_dataset``, the way back to trees and ``hf://`` paths."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY_MAX_STRONG_STEPS, TINY_PRESET, TINY_SEED

from agents.cli.common import compose
from agents.cli.train import train
from trim_env.data import load_trees, resolve_dataset_dir
from trim_env.hf import HubDataset, trees_from_datasets
from trim_env.tree import (
    DATASET_CARD,
    MANIFEST,
    NODE_SCHEMA,
    QUERY_SCHEMA,
    RolloutTrees,
    TreeFormatError,
    dataset_card,
    load_split,
    read_manifest,
    save_dataset,
    write_dataset_card,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a local directory must not need the Hub."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


def load_configs(directory: Path, cache: Path) -> tuple[datasets.DatasetDict, datasets.DatasetDict]:
    return (datasets.load_dataset(str(directory), "queries", cache_dir=str(cache)),
            datasets.load_dataset(str(directory), "nodes", cache_dir=str(cache)))


def assert_same_trees(actual: RolloutTrees, expected: RolloutTrees) -> None:
    """Every stored column equal, node for node and query for query."""
    assert (actual.num_nodes, actual.num_queries) == (expected.num_nodes, expected.num_queries)
    for column in NODE_SCHEMA + QUERY_SCHEMA:
        got, want = getattr(actual, column.name), getattr(expected, column.name)
        if isinstance(want, list) or want is None:
            assert got == want, column.name
        else:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=column.name)


@pytest.fixture
def saved(tmp_path: Path, tiny_trees: RolloutTrees) -> tuple[Path, dict[str, RolloutTrees]]:
    """Trees saved by trim: ``test`` is the tiny test split, ``train`` a subset of it."""
    splits = {"train": tiny_trees.subset(np.arange(0, tiny_trees.num_queries, 2)), "test": tiny_trees}
    directory = tmp_path / "trees"
    save_dataset(directory, splits, {"kind": "simulator", "preset": TINY_PRESET, "seed": TINY_SEED}, TINY_MAX_STRONG_STEPS, None)
    return directory, splits


def test_card_declares_both_configs_with_train_and_test_files(tiny_dataset_dir: Path) -> None:
    text = (tiny_dataset_dir / DATASET_CARD).read_text()
    front_matter = yaml.safe_load(text.split("---")[1])
    configs = {config["config_name"]: config["data_files"] for config in front_matter["configs"]}
    assert set(configs) == {"queries", "nodes"}
    for name, files in configs.items():
        assert {entry["split"]: entry["path"] for entry in files} == {split: f"{split}/{name}.parquet" for split in ("train", "test")}
    assert "synthetic" in front_matter["tags"]
    assert f"preset `{TINY_PRESET}` with seed {TINY_SEED}" in text and "NOT real model output" in text


def test_card_of_a_collection_names_its_models_and_is_not_marked_simulated(tiny_dataset_dir: Path) -> None:
    manifest = read_manifest(tiny_dataset_dir)
    manifest["source"] = {"kind": "collected", "weak": {"name": "Qwen2.5-Math-1.5B"}, "strong": {"name": "Qwen2.5-Math-7B"},
                          "prm": {"name": "Math-Shepherd"}}
    text = dataset_card(manifest)
    assert "weak: `Qwen2.5-Math-1.5B`; strong: `Qwen2.5-Math-7B`; prm: `Math-Shepherd`" in text
    assert "synthetic" not in text and "Simulated" not in text


def test_load_dataset_gives_both_splits_of_both_configs(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    queries, nodes = load_configs(tiny_dataset_dir, tmp_path / "cache")
    manifest = read_manifest(tiny_dataset_dir)
    for config, count in ((queries, "n_queries"), (nodes, "n_nodes")):
        assert isinstance(config, datasets.DatasetDict)
        assert {split: config[split].num_rows for split in config} == {
            split: manifest["splits"][split][count] for split in ("train", "test")}


def test_round_trip_through_datasets_gives_the_same_trees_node_for_node(saved, tmp_path: Path) -> None:
    directory, splits = saved
    queries, nodes = load_configs(directory, tmp_path / "cache")
    rebuilt = trees_from_datasets(queries, nodes, max_strong_steps=TINY_MAX_STRONG_STEPS)
    assert set(rebuilt) == set(splits)
    for split, trees in splits.items():
        assert_same_trees(rebuilt[split], trees)
        assert rebuilt[split].max_strong_steps == TINY_MAX_STRONG_STEPS


def test_growth_shards_are_not_read_as_nodes(saved, tmp_path: Path) -> None:
    directory, splits = saved
    growth = directory / "train" / "growth"
    growth.mkdir()
    pq.write_table(pa.table({"parent_key": pa.array([1, 2], type=pa.uint64())}), growth / "shard.parquet")
    queries, nodes = load_configs(directory, tmp_path / "cache")
    assert nodes["train"].num_rows == splits["train"].num_nodes
    assert_same_trees(trees_from_datasets(queries, nodes)["train"], splits["train"])


@pytest.mark.parametrize("config", ["nodes", "queries"])
def test_shuffled_rows_are_refused_as_reordered(saved, tmp_path: Path, config: str) -> None:
    directory, _ = saved
    queries, nodes = load_configs(directory, tmp_path / "cache")
    shuffled = datasets.DatasetDict({split: dataset.shuffle(seed=0) for split, dataset in (nodes if config == "nodes" else queries).items()})
    pair = (queries, shuffled) if config == "nodes" else (shuffled, nodes)
    with pytest.raises(TreeFormatError, match=f"datasets config '{config}'.*reordered or filtered"):
        trees_from_datasets(*pair)


def test_filtered_nodes_are_refused_as_filtered(saved, tmp_path: Path) -> None:
    directory, _ = saved
    queries, nodes = load_configs(directory, tmp_path / "cache")
    without_strong_steps = nodes.filter(lambda row: not row["step_is_strong"])
    with pytest.raises(TreeFormatError, match="reordered or filtered"):
        trees_from_datasets(queries, without_strong_steps)


def test_configs_with_different_splits_are_refused(saved, tmp_path: Path) -> None:
    directory, _ = saved
    queries, nodes = load_configs(directory, tmp_path / "cache")
    with pytest.raises(TreeFormatError, match=r"splits \['test', 'train'\].*\['test'\]"):
        trees_from_datasets(queries, datasets.DatasetDict({"test": nodes["test"]}))


def test_card_written_for_an_existing_dataset_changes_no_hash(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "old"
    shutil.copytree(tiny_dataset_dir, directory)
    (directory / DATASET_CARD).unlink()  # as written before datasets had cards
    manifest_bytes = (directory / MANIFEST).read_bytes()
    assert write_dataset_card(directory) == directory / DATASET_CARD
    assert (directory / DATASET_CARD).read_text() == (tiny_dataset_dir / DATASET_CARD).read_text()
    assert (directory / MANIFEST).read_bytes() == manifest_bytes
    assert_same_trees(load_split(directory, "test", verify_hash=True), load_split(tiny_dataset_dir, "test"))


# ------------------------------------------------------------------------------------------------
# hf:// paths: a dataset directory in a Hub dataset repository, read through the Hugging Face cache

HUB_REPO = "trim-org/tiny-trees"
MAIN_COMMIT = "a" * 40
TAGGED_COMMIT = "b" * 40


def fill_hub_cache(cache: Path, revision: str, commit: str, dataset_dir: Path, subdir: str = "") -> Path:
    """What ``snapshot_download`` leaves in the cache after fetching ``revision`` of :data:`HUB_REPO`:
    ``refs/<revision>`` naming the commit and the repository's files under ``snapshots/<commit>/``."""
    storage = cache / f"datasets--{HUB_REPO.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    target = storage / "snapshots" / commit / subdir
    shutil.copytree(dataset_dir, target)
    return target


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, and no Hub (HF_HUB_OFFLINE): only cached revisions resolve."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_path_loads_the_cached_snapshot_like_the_directory(hub_cache: Path, tiny_dataset_dir: Path) -> None:
    snapshot = fill_hub_cache(hub_cache, "main", MAIN_COMMIT, tiny_dataset_dir)
    assert resolve_dataset_dir(f"hf://datasets/{HUB_REPO}") == snapshot
    trees = load_trees(path=f"hf://datasets/{HUB_REPO}", split="test", grow=False)
    assert_same_trees(trees, load_split(tiny_dataset_dir, "test"))


def test_hub_path_with_revision_and_subdirectory_reads_that_directory_of_that_revision(hub_cache: Path, tiny_dataset_dir: Path) -> None:
    fill_hub_cache(hub_cache, "main", MAIN_COMMIT, tiny_dataset_dir)
    tagged = fill_hub_cache(hub_cache, "v1", TAGGED_COMMIT, tiny_dataset_dir, subdir="trees/tiny")
    assert resolve_dataset_dir(f"hf://datasets/{HUB_REPO}@v1/trees/tiny") == tagged
    assert HubDataset.parse(f"hf://datasets/{HUB_REPO}@refs%2Fpr%2F3/x/") == HubDataset(HUB_REPO, "refs/pr/3", "x")


def test_hub_path_not_cached_while_offline_is_a_clear_error_naming_it(hub_cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"hf://datasets/{HUB_REPO}@v2: revision v2 .* not in the local Hugging Face cache .*HF_HUB_OFFLINE"):
        load_trees(path=f"hf://datasets/{HUB_REPO}@v2", split="test")


def test_hub_repository_without_a_manifest_is_not_a_dataset(hub_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not trees\n")
    fill_hub_cache(hub_cache, "main", MAIN_COMMIT, tmp_path / "notes")
    with pytest.raises(TreeFormatError, match=rf"hf://datasets/{HUB_REPO}: manifest.json missing"):
        resolve_dataset_dir(f"hf://datasets/{HUB_REPO}")


@pytest.mark.parametrize("path", ["hf://models/trim-org/router", "hf://datasets/tiny-trees", "hf:/datasets/trim-org/tiny-trees",
                                  "hf://datasets/trim-org/tiny-trees/../../etc"])
def test_malformed_hub_paths_are_refused_with_the_expected_form(path: str) -> None:
    with pytest.raises(ValueError, match="expected hf://datasets/OWNER/NAME|leaves the repository"):
        resolve_dataset_dir(path)


def test_train_reads_a_hub_path_and_its_model_card_names_the_hub_dataset(
    hub_cache: Path, tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    fill_hub_cache(hub_cache, "main", MAIN_COMMIT, tiny_dataset_dir)
    cfg = compose("config", ["policy=thr", f"data.path=hf://datasets/{HUB_REPO}", "data.persist_growth=false", "progress_bar=false"])
    local = train(compose("config", ["policy=thr", f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
                                     "progress_bar=false"]), tmp_path / "local")
    hub = train(cfg, tmp_path / "hub")
    assert hub["points"] == local["points"]
    card = yaml.safe_load((tmp_path / "hub" / "router" / "README.md").read_text().split("---")[1])
    assert card["datasets"] == [HUB_REPO] and card["trim"]["dataset"]["path"] == f"hf://datasets/{HUB_REPO}"


def test_entry_point_reports_an_uncached_hub_path_offline_by_name(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf_cache"), "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "scripts/evaluate.py", "policy=thr", f"data.path=hf://datasets/{HUB_REPO}@v9", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode != 0
    assert f"data path hf://datasets/{HUB_REPO}@v9: revision v9" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert not (tmp_path / "out" / "results.json").exists()
