"""Gather runs into one Pareto-frontier report: the same as ``trim-frontier`` (:mod:`agents.cli.frontier`)."""

from agents.cli.frontier import main

if __name__ == "__main__":
    main()
