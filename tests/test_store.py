"""The rollout store that grows: determinism, persistence, concurrency, crashes, frozen use, and the batched VecEnv."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_PRESET, TINY_SEED
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from trim_env.data import open_split
from trim_env.env import StepRoutingEnv
from trim_env.evaluation import DecisionBatch, run_episodes
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.store import GROWTH_DIR, GrowingTrees
from trim_env.tree import RolloutTrees, TreeFormatError, load_split
from trim_env.vec_env import StepRoutingVecEnv

ROOT = Path(__file__).resolve().parents[1]
CONTENT = ("step_tokens", "step_prm", "step_is_strong", "terminal", "correct", "hidden_state", "depth", "strong_steps", "path_min_prm")


class RandomRouting:
    """Regenerates each proposed step with probability ``p`` (seeded): wanders into unstored branches."""

    def __init__(self, p: float, seed: int) -> None:
        self.p = p
        self.rng = np.random.default_rng(seed)

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        return self.rng.random(len(batch.nodes)) < self.p


@pytest.fixture()
def dataset(tiny_dataset_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset (K = 2, no node budget), free to grow."""
    return Path(shutil.copytree(tiny_dataset_dir, tmp_path / "dataset"))


def by_key(trees: RolloutTrees) -> dict[int, int]:
    return {int(key): node for node, key in enumerate(trees.key)}  # type: ignore[attr-defined]


def assert_same_nodes(grown: GrowingTrees, reference: GrowingTrees) -> None:
    """Every node of ``grown`` exists in ``reference`` under the same key, with the same content and parent."""
    index = by_key(reference)
    missing = [int(key) for key in grown.key if int(key) not in index]
    assert not missing, f"{len(missing)} grown node(s) have no counterpart"
    mapping = np.array([index[int(key)] for key in grown.key])
    for name in CONTENT:
        np.testing.assert_array_equal(getattr(grown, name), getattr(reference, name)[mapping], err_msg=name)
    has_parent = grown.parent >= 0
    np.testing.assert_array_equal(grown.key[grown.parent[has_parent]], reference.key[reference.parent[mapping[has_parent]]])


def grow_one_by_one(trees: GrowingTrees, reference: GrowingTrees) -> None:
    """Grow in ``reference``, one node per call, every node ``trees`` holds (parents first)."""
    index = by_key(reference)
    for node in np.argsort(trees.depth, kind="stable"):
        if trees.parent[node] < 0 or int(trees.key[node]) in index:
            continue
        parent = index[int(trees.key[trees.parent[node]])]
        (reference.grow_strong if trees.step_is_strong[node] else reference.grow_weak)(np.array([parent]))
        index = by_key(reference)


# ----------------------------------------------------------------------------------------------
# Determinism: content keyed on the path


def test_grown_nodes_equal_the_simulator_whatever_the_order_or_batch(dataset: Path) -> None:
    trees = open_split(dataset, "train", persist=False)
    assert isinstance(trees, GrowingTrees) and trees.can_grow
    stored = trees.num_nodes
    for seed in range(3):
        run_episodes(trees, RandomRouting(0.5, seed))
    assert trees.num_nodes > stored and trees.strong_steps.max() > 2  # grew past the stored cap K = 2
    lazy = SimulatedTrees(SimulatorParams.preset(TINY_PRESET), TINY_SEED, np.arange(trees.num_queries), namespace=f"{TINY_PRESET}/train")
    grow_one_by_one(trees, lazy)  # single-node batches, in another order
    assert_same_nodes(trees, lazy)


def test_a_rerun_replays_persisted_nodes_instead_of_growing_them(dataset: Path) -> None:
    first = open_split(dataset, "train")
    outcomes = run_episodes(first, RandomRouting(0.5, 7))
    first.flush()
    assert list((dataset / "train" / GROWTH_DIR).glob("*.parquet"))
    again = open_split(dataset, "train")
    assert again.num_nodes == first.num_nodes
    assert_same_nodes(again, first)
    replayed = run_episodes(again, RandomRouting(0.5, 7))
    assert again.num_nodes == first.num_nodes  # nothing new was drawn
    np.testing.assert_array_equal(replayed.correct, outcomes.correct)
    np.testing.assert_array_equal(replayed.strong_tokens, outcomes.strong_tokens)


def test_existing_files_are_never_rewritten(dataset: Path) -> None:
    before = {path: path.read_bytes() for path in dataset.rglob("*") if path.is_file()}
    trees = open_split(dataset, "train")
    run_episodes(trees, RandomRouting(0.5, 1))
    trees.flush()
    trees = open_split(dataset, "train")
    run_episodes(trees, RandomRouting(0.5, 2))
    trees.flush()
    for path, content in before.items():
        assert path.read_bytes() == content, path
    assert len(list((dataset / "train" / GROWTH_DIR).glob("*.parquet"))) == 2


# ----------------------------------------------------------------------------------------------
# Concurrency and crashes

GROW_SCRIPT = """
import sys, numpy as np
from trim_env.data import open_split
from trim_env.evaluation import run_episodes
directory, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
class Random:
    def decide(self, batch):
        return rng.random(len(batch.nodes)) < 0.6
for _ in range(rounds):
    trees = open_split(directory, "train")
    run_episodes(trees, Random())
    trees.flush()
print("done", flush=True)
"""


def _grower(dataset: Path, seed: int, rounds: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", GROW_SCRIPT, str(dataset), str(seed), str(rounds)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_growing_one_dataset_do_not_corrupt_it(dataset: Path) -> None:
    growers = [_grower(dataset, seed, 3) for seed in (1, 2)]
    for grower in growers:
        stdout, stderr = grower.communicate(timeout=600)
        assert grower.returncode == 0, stderr
    trees = open_split(dataset, "train", persist=False)
    assert len(np.unique(trees.key)) == trees.num_nodes  # shared nodes were stored once
    assert len(list((dataset / "train" / GROWTH_DIR).glob("*.parquet"))) >= 2
    lazy = SimulatedTrees(SimulatorParams.preset(TINY_PRESET), TINY_SEED, np.arange(trees.num_queries), namespace=f"{TINY_PRESET}/train")
    grow_one_by_one(trees, lazy)
    assert_same_nodes(trees, lazy)


def test_a_process_killed_while_growing_loses_and_corrupts_nothing(dataset: Path) -> None:
    grower = _grower(dataset, 3, 1000)
    growth = dataset / "train" / GROWTH_DIR
    deadline = time.monotonic() + 300
    while len(list(growth.glob("*.parquet"))) < 3 and time.monotonic() < deadline and grower.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # let it be somewhere inside its next round or write
    grower.send_signal(signal.SIGKILL)
    grower.wait()
    shards = list(growth.glob("*.parquet"))
    assert len(shards) >= 3
    trees = open_split(dataset, "train", persist=False)  # loads: every shard is whole (hash = name)
    lazy = SimulatedTrees(SimulatorParams.preset(TINY_PRESET), TINY_SEED, np.arange(trees.num_queries), namespace=f"{TINY_PRESET}/train")
    grow_one_by_one(trees, lazy)
    assert_same_nodes(trees, lazy)


def test_a_corrupt_shard_is_named(dataset: Path) -> None:
    trees = open_split(dataset, "train")
    run_episodes(trees, RandomRouting(0.5, 1))
    shard = trees.flush()
    assert shard is not None
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 0xFF
    shard.write_bytes(bytes(content))
    with pytest.raises(TreeFormatError, match=shard.name):
        open_split(dataset, "train")


def test_rows_whose_parent_is_gone_are_skipped_with_a_warning(dataset: Path) -> None:
    trees = open_split(dataset, "train")
    run_episodes(trees, RandomRouting(0.6, 1))
    first = trees.flush()
    run_episodes(trees, RandomRouting(0.6, 2))
    trees.flush()
    assert first is not None
    first.unlink()  # the second shard holds children of nodes that only the first one had
    with pytest.warns(UserWarning, match="parent is not stored"):
        open_split(dataset, "train")


def test_a_read_only_dataset_grows_in_memory_with_a_warning(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trees = open_split(dataset, "train")
    run_episodes(trees, RandomRouting(0.5, 1))

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.warns(UserWarning, match="stay in memory"):
        assert trees.flush() is None


# ----------------------------------------------------------------------------------------------
# Frozen use


def test_frozen_without_growth_is_the_stored_split(dataset: Path) -> None:
    frozen = open_split(dataset, "train", grow=False)
    assert type(frozen) is RolloutTrees
    stored = load_split(dataset, "train")
    np.testing.assert_array_equal(frozen.strong_child, stored.strong_child)
    capped = run_episodes(frozen, RandomRouting(1.0, 0))
    assert (capped.cap_overrides > 0).any()  # the cap K = 2 binds


def test_frozen_with_growth_uses_grown_nodes_and_keeps_cap_semantics(dataset: Path) -> None:
    trees = open_split(dataset, "train")
    run_episodes(trees, RandomRouting(0.7, 1))
    trees.flush()
    frozen = open_split(dataset, "train", grow=False)
    assert isinstance(frozen, GrowingTrees) and not frozen.can_grow
    assert frozen.num_nodes == trees.num_nodes
    assert frozen.max_strong_steps == 2  # the manifest's K, for planners that need the cap
    outcomes = run_episodes(frozen, RandomRouting(1.0, 0))
    assert frozen.num_nodes == trees.num_nodes and (outcomes.cap_overrides > 0).any()


def test_a_frozen_store_unlinks_nodes_it_could_not_complete(dataset: Path) -> None:
    trees = open_split(dataset, "train")
    past_cap = np.flatnonzero(~trees.terminal & (trees.strong_child < 0))[:50]  # K = 2 reached
    trees.grow_strong(past_cap)  # strong rewrites whose continuation never grew
    dangling = trees.strong_child[past_cap]
    assert ((trees.weak_child[dangling] < 0) & ~trees.terminal[dangling]).any()
    trees.flush()
    frozen = open_split(dataset, "train", grow=False)
    assert isinstance(frozen, GrowingTrees)
    reachable_open = ~frozen.terminal & (frozen.weak_child < 0) & (frozen.parent >= 0)
    parents = frozen.parent[reachable_open]
    linked = (frozen.weak_child[parents] == np.flatnonzero(reachable_open)) | (frozen.strong_child[parents] == np.flatnonzero(reachable_open))
    assert not linked.any()
    run_episodes(frozen, RandomRouting(1.0, 0))  # never reaches a dead end


# ----------------------------------------------------------------------------------------------
# The batched VecEnv is the same environment


def play_side_by_side(batched: VecEnv, single: VecEnv, steps: int, regenerate_probability: float,
                      assert_rewards: Callable[[np.ndarray, np.ndarray], None]) -> tuple[int, np.ndarray]:
    """Reset both envs and step them with the same seeded random actions, asserting equal observations,
    rewards (by ``assert_rewards``), dones and finished episodes' infos.

    :returns: (episodes finished, the last step's rewards).
    """
    np.testing.assert_array_equal(batched.reset(), single.reset())
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(steps):
        actions = (rng.random(batched.num_envs) < regenerate_probability).astype(np.int64)
        obs_a, rewards_a, dones_a, infos_a = batched.step(actions)
        obs_b, rewards_b, dones_b, infos_b = single.step(actions)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert_rewards(rewards_a, rewards_b)
        np.testing.assert_array_equal(dones_a, dones_b)
        for env in np.flatnonzero(dones_a):
            finished += 1
            for key, value in infos_a[env].items():
                if key == "terminal_observation":
                    np.testing.assert_array_equal(value, infos_b[env][key])
                else:
                    assert value == infos_b[env][key], key
    return finished, np.asarray(rewards_a)


@pytest.mark.parametrize("observation", ["agg", "seq"])
@pytest.mark.parametrize("kind", ["growing", "frozen", "lazy-uncapped", "lazy-capped"])
def test_vec_env_matches_dummy_vec_env_of_single_envs_step_for_step(dataset: Path, observation: str, kind: str) -> None:
    params = SimulatorParams.preset(TINY_PRESET)

    def make() -> RolloutTrees:
        if kind == "growing":
            return open_split(dataset, "test", persist=False)
        if kind == "frozen":
            return open_split(dataset, "test", grow=False)
        return SimulatedTrees(params, 1, np.arange(12), max_strong_steps=1 if kind == "lazy-capped" else None, namespace="vec")

    n_envs, seed = 4, 3
    batched_trees, single_trees = make(), make()
    batched = StepRoutingVecEnv(batched_trees, n_envs, observation, 0.01, seed=seed)
    single = DummyVecEnv([lambda rank=rank: StepRoutingEnv(single_trees, observation, 0.01, seed=seed + rank) for rank in range(n_envs)])
    finished, _ = play_side_by_side(batched, single, 600, 0.4, lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6))
    assert finished > 50


def test_vec_env_rejects_bad_actions_and_arguments(tiny_trees: RolloutTrees) -> None:
    env = StepRoutingVecEnv(tiny_trees, 2)
    env.reset()
    with pytest.raises(ValueError, match="must be 0 .continue. or 1"):
        env.step(np.array([0, 2]))
    with pytest.raises(ValueError, match="expected 2 actions"):
        env.step(np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="n_envs = 0"):
        StepRoutingVecEnv(tiny_trees, 0)
    with pytest.raises(ValueError, match="lam = -1"):
        StepRoutingVecEnv(tiny_trees, 2, lam=-1)


def test_vec_env_grows_every_missing_child_of_a_step_in_one_batch(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trees = open_split(dataset, "train", persist=False)
    calls: list[int] = []
    draw = trees.source.draw  # type: ignore[union-attr]

    def counting(store: GrowingTrees, parents: np.ndarray, strong: bool, keys: np.ndarray):  # type: ignore[no-untyped-def]
        calls.append(len(parents))
        return draw(store, parents, strong, keys)

    monkeypatch.setattr(trees.source, "draw", counting)
    env = StepRoutingVecEnv(trees, 32, seed=0)
    env.reset()
    for _ in range(50):
        calls.clear()
        env.step(np.ones(32, dtype=np.int64))  # everyone regenerates: rewrites, then their continuations
        assert len(calls) <= 3, calls  # strong rewrites, weak proposals, and the restarted episodes' first proposals


def test_vec_env_lambda_can_be_changed_between_steps(tiny_trees: RolloutTrees) -> None:
    env = StepRoutingVecEnv(tiny_trees, 4, lam=0.02, seed=0)
    env.reset()
    _, rewards, dones, _ = env.step(np.ones(4, dtype=np.int64))
    env.reset()
    env.set_lambda(0.0)
    _, free, free_dones, _ = env.step(np.ones(4, dtype=np.int64))
    assert (rewards[~dones] < 0).all() and (free[~free_dones] == 0).all()  # the same rewrites cost nothing at λ = 0
    with pytest.raises(ValueError, match="lam = -0.5"):
        env.set_lambda(-0.5)
