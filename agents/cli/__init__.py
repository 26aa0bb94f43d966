"""Command-line entry points (Hydra apps), one module per console script declared in pyproject.toml.

Each module has a ``main()`` (the console script) and a function doing the work on a composed
config, which tests call directly. Configs are found by :func:`trim_env.paths.config_dir` (the
checkout's ``conf/``, else the installed package data); this package imports nothing heavy, so
:mod:`agents.registry` can use it too.
"""

from trim_env.paths import config_dir

__all__ = ["config_dir"]
