"""Train a step-level router and evaluate it on the test split: ``python train.py policy=agg lambda=0.01``.

The same as the ``trim-train`` console script; see :mod:`agents.cli.train`.
"""

from agents.cli.train import main

if __name__ == "__main__":
    main()
