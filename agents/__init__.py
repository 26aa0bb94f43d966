"""agents: routing policies (threshold, PPO, POMDP, baselines) behind one registry.

The PPO trainer (:mod:`agents.ppo`) imports stable-baselines3 and is not imported here, so that
loading an exported router (:func:`load_router`) needs torch alone.
"""

from agents import threshold  # noqa: F401  (registers "thr")
from agents.base import ROUTERS, Router, make_router, register_router
from agents.export import load_router

__all__ = ["ROUTERS", "Router", "load_router", "make_router", "register_router"]
