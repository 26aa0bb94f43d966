"""TRIM-POMDP: a fitted 3-state POMDP of the prefix, solved by belief-space dynamic programming, routing by belief.

- :mod:`agents.pomdp.model` — fitting (observation model, transitions, hazard, rewrite cost), save/load;
- :mod:`agents.pomdp.solver` — finite-horizon DP on a grid of the clean-prefix probability, with a proven error bound;
- :mod:`agents.pomdp.belief` — the recursive Bayes filter and the authors' per-step belief over `seq` observations;
- :mod:`agents.pomdp.router` — :class:`PomdpRouter` (``policy=pomdp``): settings, fit-or-load, solve, export/load (kind ``"pomdp"``).
"""

from agents.pomdp.model import PomdpModel, fit_model
from agents.pomdp.router import PomdpRouter, solve_router
from agents.pomdp.solver import SolvedPolicy, solve

__all__ = ["PomdpModel", "PomdpRouter", "SolvedPolicy", "fit_model", "solve", "solve_router"]
