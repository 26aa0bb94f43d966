"""trim_env: rollout trees, the calibrated simulator, the routing environment and its metrics."""

from trim_env.tree import RolloutTrees, TreeFormatError, load_split, save_dataset

__all__ = ["RolloutTrees", "TreeFormatError", "load_split", "save_dataset"]
__version__ = "0.1.0"

# Gymnasium registration of the routing environment (the entry point is imported lazily by make).
import gymnasium as _gymnasium

if "trim/StepRouting-v0" not in _gymnasium.registry:
    _gymnasium.register(id="trim/StepRouting-v0", entry_point="trim_env.env:StepRoutingEnv")
