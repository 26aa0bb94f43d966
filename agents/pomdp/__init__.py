"""TRIM-POMDP: a fitted 3-state POMDP of the prefix, solved by belief-space dynamic programming, routing by belief.

- :mod:`agents.pomdp.model` — the fitted parameters (hidden states, score bins, observation model,
  transitions, hazards, rewrite cost): validation and JSON save/load;
- :mod:`agents.pomdp.observation` — fitting the observation model (reflected KDE) from trees or ProcessBench-format records;
- :mod:`agents.pomdp.fit` — fitting the whole model from cached trees (:func:`fit_model`);
- :mod:`agents.pomdp.cache` — fitted models cached across λ, keyed by data and fit settings (:func:`~agents.pomdp.cache.fit_or_load`);
- :mod:`agents.pomdp.solver` — finite-horizon DP on a grid of the clean-prefix probability, with a proven error bound;
- :mod:`agents.pomdp.belief` — the recursive Bayes filter and the authors' per-step belief over `seq` observations;
- :mod:`agents.pomdp.router` — :class:`PomdpRouter` (``policy=pomdp``): settings, fit, solve for λ, export/load (kind ``"pomdp"``).
"""

from agents.pomdp.fit import fit_model
from agents.pomdp.model import PomdpModel
from agents.pomdp.router import PomdpRouter, solve_router
from agents.pomdp.solver import SolvedPolicy, solve

__all__ = ["PomdpModel", "PomdpRouter", "SolvedPolicy", "fit_model", "solve", "solve_router"]
