"""Training: sharding rules, optimizer, step, loop, checkpoints, metrics."""
