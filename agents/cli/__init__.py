"""Command-line entry points (Hydra apps): ``trim-train``, ``trim-evaluate``, ``trim-baselines``, ``trim-frontier``.

Each module has a ``main()`` (the console script) and a function doing the work on a composed
config, which tests call directly. :func:`config_dir` is the one place that knows where the
configs live; this package imports nothing heavy, so :mod:`agents.registry` can ask it too.
"""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The ``conf/`` directory of this checkout."""
    return Path(__file__).resolve().parents[2] / "conf"
