"""agents: routing policies (threshold, PPO, POMDP, baselines) behind one registry."""

from agents import threshold  # noqa: F401  (registers "thr")
from agents.base import ROUTERS, Router, make_router, register_router

__all__ = ["ROUTERS", "Router", "make_router", "register_router"]
