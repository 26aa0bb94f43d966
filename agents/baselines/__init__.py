"""Baselines for step-level routing: random step routing, query-level routers and the hindsight oracle."""
