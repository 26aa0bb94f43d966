"""Command-line entry points (Hydra apps), one module per console script declared in pyproject.toml."""
