"""agents: routing policies (threshold, PPO, POMDP, baselines) behind one registry.

The PPO trainer (:mod:`agents.ppo`) imports stable-baselines3 and is not imported here, so that
loading an exported router (:func:`load_router`) needs torch alone.
"""

from agents import baselines, threshold  # noqa: F401  (register "random" and "thr")
from agents.base import ROUTERS, Router, make_router, register_router
from agents.export import load_router
from agents import pomdp  # noqa: F401, E402  (registers "pomdp" and its exported-router loader)

__all__ = ["ROUTERS", "Router", "load_router", "make_router", "register_router"]
