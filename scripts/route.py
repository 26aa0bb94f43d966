"""``python scripts/route.py router=DIR problem=TEXT [overrides ...]``: the console script ``trim-route`` (agents/cli/route.py)."""

from agents.cli.route import main

if __name__ == "__main__":
    main()
