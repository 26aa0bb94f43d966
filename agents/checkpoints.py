"""Training checkpoints on disk: where they live, which one a ``resume=PATH`` means, and whether it fits the run.

A PPO run (:mod:`agents.ppo`) with ``ppo.checkpoint_every > 0`` writes, at rollout boundaries,
``<run dir>/checkpoints/checkpoint_<N>_steps.zip`` (stable-baselines3's own save of the model at
``N`` env steps) and beside it ``checkpoint_<N>_steps.state.pt`` (what SB3 does not save: random
states, the envs' episodes, the callbacks' state and the run's config). The state file is written
first and the zip last, each atomically, so a zip means a complete checkpoint. This module needs
neither stable-baselines3 nor Hydra: ``train.py`` resolves ``resume=PATH`` before anything trains.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: Subdirectory of a run directory holding its checkpoints.
CHECKPOINT_DIR = "checkpoints"
#: SB3 ``CheckpointCallback`` name prefix of the model zips.
CHECKPOINT_PREFIX = "checkpoint"
#: Extension of the state file beside each zip (``checkpoint_<N>_steps.state.pt``).
STATE_EXTENSION = "state.pt"
_ZIP_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d+)_steps\.zip$")


def state_file(checkpoint: Path) -> Path:
    """The state file beside the model zip ``checkpoint``."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".zip") + "." + STATE_EXTENSION)


def checkpoints_in(directory: Path) -> list[Path]:
    """The complete checkpoints (model zips) in ``directory``, oldest (fewest steps) first."""
    found = [(int(match.group(1)), path) for path in directory.glob("*.zip") if (match := _ZIP_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint ``resume=PATH`` means: a checkpoint zip, or the latest one of a run (or checkpoints) directory.

    :raises FileNotFoundError: naming the path and what was looked for.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if not _ZIP_NAME.match(path.name):
            raise FileNotFoundError(f"resume = {path}: not a checkpoint (expected {CHECKPOINT_PREFIX}_<steps>_steps.zip)")
        checkpoint = path
    elif path.is_dir():
        directory = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
        found = checkpoints_in(directory)
        if not found:
            raise FileNotFoundError(
                f"resume = {path}: no checkpoint in {directory} (a run writes them every ppo.checkpoint_every steps)"
            )
        checkpoint = found[-1]
    else:
        raise FileNotFoundError(f"resume = {path}: no such file or directory")
    if not state_file(checkpoint).is_file():
        raise FileNotFoundError(f"resume = {path}: {state_file(checkpoint)} (the checkpoint's state) is missing")
    return checkpoint


def run_dir_of(path: str | Path) -> Path:
    """The run directory a ``resume=PATH`` continues in (the directory holding ``checkpoints/``).

    :raises FileNotFoundError: ``path`` does not name a checkpoint (see :func:`find_checkpoint`).
    """
    checkpoint = find_checkpoint(path)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else checkpoint.parent


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        flat: dict[str, Any] = {}
        for key, value in config.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.removesuffix("."): config}


def check_same_run(recorded: dict[str, Any], current: dict[str, Any], source: Path, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run of another config.

    :param recorded: the killed run's config (nested dicts).
    :param current: this run's.
    :param source: where ``recorded`` comes from (named in the error).
    :param ignore: dotted keys (and key prefixes ending in ``.``) that may differ.
    :raises ValueError: naming ``source`` and the first differing key with both values.
    """
    old, new = _flatten(recorded), _flatten(current)
    for key in sorted(old.keys() | new.keys()):
        if key in ignore or any(key.startswith(prefix) for prefix in ignore if prefix.endswith(".")):
            continue
        if old.get(key, "<absent>") != new.get(key, "<absent>"):
            raise ValueError(
                f"resume: {source} records a run with {key} = {old.get(key, '<absent>')!r}, this run has "
                f"{key} = {new.get(key, '<absent>')!r}; resume with the killed run's config"
            )
