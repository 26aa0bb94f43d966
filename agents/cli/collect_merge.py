"""trim-collect-merge: write the dataset of a sharded collection from its shards.

    trim-collect -m out=DIR problems.shard=0/2,1/2 [settings ...]   # the shards (a Hydra multirun)
    trim-collect-merge out=DIR                                      # DIR/manifest.json, DIR/train, DIR/test

Each shard ``problems.shard=i/n`` collects into ``DIR/shards/i-of-n/``; the merge checks that every
shard of the split is there once, finished, and collected with the same settings and problems,
then writes the dataset an unsharded ``trim-collect out=DIR`` would have written (same content
hash). Settings: :class:`CollectMergeConfig` and ``conf/collect_merge.yaml``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from agents.cli.strict import check_boolean_overrides, require_settings
from trim_env.atomic import DirectoryLockedError
from trim_env.paths import config_dir
from trim_env.sources.collect import SUMMARY_FILE, merge_shards
from trim_env.tree import MANIFEST, read_manifest


@dataclass
class CollectMergeConfig:
    """Settings of ``trim-collect-merge``."""

    #: The out= the shards were collected with: shards are read from OUT/shards/, the dataset is written to OUT.
    out: str = MISSING


def _run(cfg: DictConfig) -> None:
    check_boolean_overrides(cfg)
    try:
        summary = merge_shards(cfg.out)
    except (ValueError, FileNotFoundError, FileExistsError, DirectoryLockedError) as error:
        raise SystemExit(f"error: {error}") from None
    manifest = read_manifest(cfg.out)
    print(f"merged shards {', '.join(summary['shards'])}: {summary['queries']} queries, {summary['nodes']} nodes")
    for split, entry in sorted(manifest["splits"].items()):
        print(f"  {split}: {entry['n_queries']} queries, {entry['n_nodes']} nodes")
    print(f"  content hash {manifest['content_hash']}")
    print(f"\nwrote the dataset to {cfg.out} ({Path(cfg.out) / MANIFEST}, summary: {Path(cfg.out) / SUMMARY_FILE})")


def register_configs() -> None:
    """Register :class:`CollectMergeConfig` as ``collect_merge_schema``, the schema ``conf/collect_merge.yaml`` extends."""
    ConfigStore.instance().store(name="collect_merge_schema", node=CollectMergeConfig)


def main() -> None:
    """Console script ``trim-collect-merge``."""
    require_settings(sys.argv[1:], ("out",), "trim-collect-merge out=DIR")
    register_configs()
    hydra.main(config_path=str(config_dir()), config_name="collect_merge", version_base="1.3")(_run)()


if __name__ == "__main__":
    main()
