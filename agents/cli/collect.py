"""trim-collect: collect rollout trees with real models into a dataset that ``trim-train data.path=OUT`` trains on.

    trim-collect out=DIR                                  # offline SmolLM2 defaults
    trim-collect out=DIR problems.limit=20 max_strong_steps=1 max_tokens_per_step=64
    trim-collect out=DIR collect/problems@problems=math500 \\
        collect/generator@weak=openai weak.model=Qwen/Qwen2.5-1.5B-Instruct \\
        collect/generator@strong=openai strong.model=Qwen/Qwen2.5-7B-Instruct strong.base_url=http://127.0.0.1:8002/v1 \\
        collect/prm@prm=vllm_pooling
    trim-collect -m out=DIR problems.shard=0/2,1/2 [hydra/launcher=ray_cluster]   # in shards, then:
    trim-collect-merge out=DIR

Settings: :class:`CollectConfig` and ``conf/collect.yaml`` (backends in ``conf/collect/``). A
killed run restarted with the same command resumes: finished queries are kept, the rest are
collected, and the dataset is written at the end (``OUT/manifest.json``, ``OUT/train``,
``OUT/test``) with a summary of calls and tokens per model in ``OUT/collection_summary.json``.
With ``problems.shard=i/n`` the run collects shard i of n into ``OUT/shards/i-of-n/`` and
``trim-collect-merge out=OUT`` writes the dataset once every shard is done.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from agents.cli.strict import check_boolean_overrides, require_settings
from trim_env.paths import checkout_root, config_dir
from trim_env.sources.collect import CollectionConfig, run_collection, shard_directory
from trim_env.sources.factory import BackendSettings
from trim_env.sources.problems import Shard


@dataclass
class CollectConfig:
    """Settings of ``trim-collect``; the backends and problems come from the ``conf/collect/`` groups."""

    #: Output directory: per-query records (resumable), then the dataset (train/ and test/ splits).
    out: str = MISSING
    #: K: cap on strong steps per path.
    max_strong_steps: int = CollectionConfig.max_strong_steps
    #: A path ends after this many steps (at most 30, the router's observation length).
    max_steps: int = CollectionConfig.max_steps
    #: Decoded-token limit of one step, for both models.
    max_tokens_per_step: int = BackendSettings.max_tokens_per_step
    #: Share of problems in the test split; the assignment is a permutation seeded by split_seed.
    test_fraction: float = CollectionConfig.test_fraction
    split_seed: int = CollectionConfig.split_seed
    #: Root of the per-request sampling seeds.
    seed: int = CollectionConfig.seed
    #: Queries in flight at once (their calls overlap: useful with HTTP servers).
    concurrent_queries: int = CollectionConfig.concurrent_queries
    #: Torch CPU threads for local models (null: torch's default).
    torch_threads: Optional[int] = None
    progress_bar: bool = CollectionConfig.progress_bar
    #: Problems, weak and strong generators and PRM (config groups of conf/collect/).
    problems: Any = None
    weak: Any = None
    strong: Any = None
    prm: Any = None


def resolve_path(path: str | None) -> str | None:
    """A relative path as given from the working directory, else from the checkout (when there is one)."""
    root = checkout_root()
    if path is None or root is None or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(root / path)


async def run(cfg: DictConfig) -> dict[str, Any]:
    """Collect the dataset ``cfg`` describes; returns the collection summary."""
    config: Any = OmegaConf.to_container(cfg, resolve=True)
    settings = CollectionConfig.from_mapping(config)
    settings.problems.path = resolve_path(settings.problems.path)
    return await run_collection(settings)


def format_summary(summary: dict[str, Any]) -> str:
    """Calls and decoded tokens per model, and this run's throughput, as text."""
    run = summary["this_run"]
    lines = [f"{summary['queries']} queries, {summary['nodes']} nodes"]
    for role in ("weak", "strong"):
        entry = summary[role]
        lines.append(f"  {role:6s} {entry['model']}: {entry['calls']} calls, {entry['decoded_tokens']} decoded tokens")
    lines.append(f"  prm    {summary['prm']['model']}: {summary['prm']['calls']} calls (naive {summary['prm']['naive_calls']})")
    lines.append(
        f"  generator calls per query {summary['generator_calls_per_query']:.1f} "
        f"(naive {summary['naive_generator_calls_per_query']:.1f})"
    )
    lines.append(
        f"  this run: {run['queries']} queries in {run['seconds']:.1f} s, {run['tokens_per_s']:.1f} tokens/s, "
        f"{run['nodes_per_minute']:.1f} nodes/minute"
    )
    return "\n".join(lines)


def _run(cfg: DictConfig) -> None:
    check_boolean_overrides(cfg)
    summary = asyncio.run(run(cfg))
    print(format_summary(summary))
    if "shard" in summary:
        shard = Shard.parse(summary["shard"])
        print(f"\nwrote shard {shard} to {shard_directory(cfg.out, shard)}; once every shard is done: trim-collect-merge out={cfg.out}")
    else:
        print(f"\nwrote the dataset to {cfg.out} (summary: {Path(cfg.out) / 'collection_summary.json'})")


def register_configs() -> None:
    """Register :class:`CollectConfig` as ``collect_schema``, the schema ``conf/collect.yaml`` extends."""
    ConfigStore.instance().store(name="collect_schema", node=CollectConfig)


def main() -> None:
    """Console script ``trim-collect``."""
    require_settings(sys.argv[1:], ("out",), "trim-collect out=DIR [overrides ...]")
    register_configs()
    hydra.main(config_path=str(config_dir()), config_name="collect", version_base="1.3")(_run)()


if __name__ == "__main__":
    main()
