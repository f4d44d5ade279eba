"""The training loop, the train step, logging, preemption and config validation."""
