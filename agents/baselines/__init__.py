"""Baselines for step-level routing: random step routing, query-level routers and the hindsight oracle.

Importing the package registers the step-level ``random`` router in :data:`agents.ROUTERS`.
"""

from agents.baselines import random_routing  # noqa: F401  (registers "random")
