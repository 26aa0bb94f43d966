"""agents: routing policies (threshold, PPO, POMDP, baselines), one plugin shape, one registry.

Router kinds are found through :mod:`agents.registry` (read from ``conf/policy/*.yaml``); nothing
registers itself on import. The PPO trainer (:mod:`agents.ppo`) imports stable-baselines3 and is
not imported here, so that loading an exported router (:func:`load_router`) needs torch alone.
"""

from agents.base import Router
from agents.export import load_router

__all__ = ["Router", "load_router"]
