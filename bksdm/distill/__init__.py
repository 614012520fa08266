"""The method: the Lightning module, one step in plain torch, losses, feature taps, EMA, per-sample
randomness, the step guard, speed settings, the start-up summary."""
