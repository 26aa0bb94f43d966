"""agents: routing policies (threshold, PPO, POMDP, baselines) behind one registry."""
