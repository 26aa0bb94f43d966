"""``python scripts/collect_rollouts.py out=DIR [overrides ...]``: the console script ``trim-collect`` (agents/cli/collect.py)."""

from agents.cli.collect import main

if __name__ == "__main__":
    main()
