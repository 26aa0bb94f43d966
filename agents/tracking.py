"""Experiment tracking: Weights & Biases (offline by default) or nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """Does nothing: the ``logger=none`` choice."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record training metrics at ``step``."""

    def summary(self, metrics: dict[str, Any]) -> None:
        """Record final metrics."""

    def finish(self) -> None:
        """Close the run."""


class WandbTracker(Tracker):
    """A W&B run; ``mode: offline`` writes everything under the run dir for a later ``wandb sync``."""

    def __init__(self, settings: dict[str, Any], config: dict[str, Any], run_dir: Path, name: str) -> None:
        import wandb  # noqa: PLC0415  (only this logger needs it)

        self._wandb = wandb
        self.run = wandb.init(
            project=settings.get("project", "trim"),
            entity=settings.get("entity"),
            mode=settings.get("mode", "offline"),
            group=settings.get("group"),
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

    def finish(self) -> None:
        self.run.finish()


def make_tracker(settings: dict[str, Any], config: dict[str, Any], run_dir: Path, name: str) -> Tracker:
    """The tracker chosen by the ``logger`` config group (``none`` or ``wandb``)."""
    kind = settings.get("name", "none")
    if kind == "none":
        return Tracker()
    if kind == "wandb":
        return WandbTracker(settings, config, run_dir, name)
    raise ValueError(f"logger.name = {kind!r} must be 'none' or 'wandb'")
