"""Experiment tracking: Weights & Biases (offline by default), TensorBoard event files, or nothing.

A :class:`Tracker` receives a run's training metrics, its final metrics, its exported router (a
versioned artifact) and report figures and tables. The base class ignores them all (``logger=none``).

Runs of one sweep share a W&B ``group`` (:func:`sweep_group`): the W&B sweep id under a sweep agent,
else the Hydra multirun's sweep directory name; ``logger.group`` set explicitly wins.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Characters W&B allows in an artifact name; anything else becomes ``-``.
_ARTIFACT_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def artifact_name(name: str) -> str:
    """``name`` with the characters W&B refuses in artifact names replaced by ``-`` (``agg-lambda-0.01-seed-0``)."""
    safe = _ARTIFACT_NAME_UNSAFE.sub("-", name).strip("-")
    if not safe:
        raise ValueError(f"artifact name {name!r} has no letter, digit, '.', '_' or '-' left")
    return safe


def sweep_group(settings: Mapping[str, Any], environ: Mapping[str, str], hydra_sweep_dir: str | None) -> str | None:
    """The W&B group of a run: ``logger.group`` if set, else the sweep the run belongs to, else ``None``.

    :param settings: the ``logger`` config (its ``group`` field).
    :param environ: the process environment; a W&B sweep agent sets ``WANDB_SWEEP_ID``.
    :param hydra_sweep_dir: the Hydra multirun's ``hydra.sweep.dir`` if this run is a multirun job, else ``None``.
    :returns: ``group``, or ``sweep-<WANDB_SWEEP_ID>``, or the sweep directory's name (e.g. the
        ``multirun/train/<date>`` timestamp, or ``run1`` for ``hydra.sweep.dir=/shared/sweeps/run1``).
    """
    if settings.get("group"):
        return str(settings["group"])
    if environ.get("WANDB_SWEEP_ID"):
        return f"sweep-{environ['WANDB_SWEEP_ID']}"
    if hydra_sweep_dir:
        return Path(hydra_sweep_dir).name
    return None


def hydra_multirun_sweep_dir() -> str | None:
    """``hydra.sweep.dir`` when called from a Hydra multirun job, else ``None`` (single runs, no Hydra)."""
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415  (Hydra only when a tracker is made)
    from hydra.types import RunMode  # noqa: PLC0415

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return str(hydra.sweep.dir) if hydra.mode == RunMode.MULTIRUN else None


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` and tuples as lists (W&B metadata is strict JSON)."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    """Does nothing: the ``logger=none`` choice."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record training metrics at ``step``."""

    def summary(self, metrics: dict[str, Any]) -> None:
        """Record final metrics."""

    def log_router(self, directory: Path, name: str, metadata: dict[str, Any]) -> None:
        """Record an exported router directory as a new version of the artifact ``name``.

        :param directory: the exported router (``OUT/router``), every file of it.
        :param name: the artifact's name; versions of one name are one lineage (policy, λ, seed).
        :param metadata: what describes the router (its config, the run's config, its test metrics).
        """

    def log_image(self, key: str, path: Path) -> None:
        """Record the image file ``path`` (e.g. a PNG figure) under ``key``."""

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Record a table (one list of cells per row, in ``columns`` order) under ``key``."""

    def finish(self) -> None:
        """Close the run."""


class WandbTracker(Tracker):
    """A W&B run; ``mode: offline`` writes everything under the run dir for a later ``wandb sync``."""

    def __init__(self, settings: dict[str, Any], config: dict[str, Any], run_dir: Path, name: str) -> None:
        import wandb  # noqa: PLC0415  (only this logger needs it)

        self._wandb = wandb
        self.artifact_name = settings.get("artifact_name")
        self.run = wandb.init(
            project=settings.get("project", "trim"),
            entity=settings.get("entity"),
            mode=settings.get("mode", "offline"),
            group=sweep_group(settings, os.environ, hydra_multirun_sweep_dir()),
            job_type=settings.get("job_type"),
            tags=list(settings.get("tags") or []),
            config=config,
            dir=str(run_dir),
            name=name,
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self.run.summary[key] = value

    def log_router(self, directory: Path, name: str, metadata: dict[str, Any]) -> None:
        """Log ``directory`` as an artifact of type ``router``, named ``logger.artifact_name`` if set, else ``name``."""
        artifact = self._wandb.Artifact(
            artifact_name(str(self.artifact_name or name)), type="router", metadata=_json_safe(metadata),
            description="A trim step-level router exported by trim-train (load it with agents.export.load_router).",
        )
        artifact.add_dir(str(directory))
        self.run.log_artifact(artifact)

    def log_image(self, key: str, path: Path) -> None:
        self.run.log({key: self._wandb.Image(str(path))})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        header: list[str | int] = list(columns)  # wandb.Table's annotation
        self.run.log({key: self._wandb.Table(columns=header, data=_json_safe(rows))})

    def finish(self) -> None:
        self.run.finish()


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``<run dir>/tensorboard``: the validation records at their step and the final
    test metrics; a PPO trainer writes SB3's own log (``train/*``, ``rollout/*``) into :attr:`directory` too.

    View with ``tensorboard --logdir <run dir>/tensorboard`` (``pip install trim[tensorboard]``).
    """

    #: Subdirectory of the run directory holding the event files.
    SUBDIR = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (only this logger needs tensorboard)

        self.directory = run_dir / self.SUBDIR
        self.writer = SummaryWriter(log_dir=str(self.directory))
        self.last_step = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = step
        self.writer.flush()

    def summary(self, metrics: dict[str, Any]) -> None:
        """Numbers as scalars at the last logged step (TensorBoard has no summary table)."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, self.last_step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


def make_tracker(settings: dict[str, Any], config: dict[str, Any], run_dir: Path, name: str) -> Tracker:
    """The tracker chosen by the ``logger`` config group (``none``, ``wandb`` or ``tensorboard``)."""
    kind = settings.get("name", "none")
    if kind == "none":
        return Tracker()
    if kind == "wandb":
        return WandbTracker(settings, config, run_dir, name)
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir)
    raise ValueError(f"logger.name = {kind!r} must be 'none', 'wandb' or 'tensorboard'")
