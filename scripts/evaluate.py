"""Evaluate routing policies on a dataset split: the same as ``trim-evaluate`` (:mod:`agents.cli.evaluate`)."""

from agents.cli.evaluate import main

if __name__ == "__main__":
    main()
