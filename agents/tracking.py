"""Experiment tracking: Weights & Biases (offline by default), TensorBoard event files, or nothing."""

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
