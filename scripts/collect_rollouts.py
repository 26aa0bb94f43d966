"""Collect rollout trees with real models into a dataset that ``train.py data.path=OUT`` trains on.

    python scripts/collect_rollouts.py out=DIR                                  # offline SmolLM2 defaults
    python scripts/collect_rollouts.py out=DIR problems.limit=20 max_strong_steps=1 max_tokens_per_step=64
    python scripts/collect_rollouts.py out=DIR collect/problems@problems=math500 \
        collect/generator@weak=openai weak.model=Qwen/Qwen2.5-1.5B-Instruct \
        collect/generator@strong=openai strong.model=Qwen/Qwen2.5-7B-Instruct strong.base_url=http://127.0.0.1:8002/v1 \
        collect/prm@prm=vllm_pooling

Settings: ``conf/collect.yaml`` (backends in ``conf/collect/``). A killed run restarted with the
same command resumes: finished queries are kept, the rest are collected, and the dataset is
written at the end (``OUT/manifest.json``, ``OUT/train``, ``OUT/test``) with a summary of calls
and tokens per model in ``OUT/collection_summary.json``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from trim_env.sources.collect import CollectionConfig, run_collection  # noqa: E402


def resolve_path(path: str | None) -> str | None:
    """A relative path as given from the working directory, else from the checkout."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(ROOT / path)


async def run(cfg: DictConfig) -> dict[str, Any]:
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


@hydra.main(config_path="../conf", config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = asyncio.run(run(cfg))
    print(format_summary(summary))
    print(f"\nwrote the dataset to {cfg.out} (summary: {Path(cfg.out) / 'collection_summary.json'})")


if __name__ == "__main__":
    main()
