"""Ferry's web console: what an operator leaves open on a screen during a wave."""
