"""Ferry migration-controller: plans, itineraries, per-VM state."""
