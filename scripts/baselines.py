"""Evaluate the baselines on a split: the same as ``trim-baselines`` (:mod:`agents.cli.baselines`)."""

from agents.cli.baselines import main

if __name__ == "__main__":
    main()
