"""trim_env: rollout trees, the calibrated simulator, the routing environment and its metrics."""

from trim_env.tree import RolloutTrees, TreeFormatError, load_split, save_dataset

__all__ = ["RolloutTrees", "TreeFormatError", "load_split", "save_dataset"]
__version__ = "0.1.0"
