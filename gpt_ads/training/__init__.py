"""Training: the jitted step, the loop, its state, optimizer, sharding, checkpoints, preemption, health, logs."""
