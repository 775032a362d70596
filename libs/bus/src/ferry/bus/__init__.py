"""Ferry JetStream bus: topology, publish, router, key-value state."""
