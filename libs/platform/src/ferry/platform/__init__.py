"""Ferry target platforms (local, kubernetes)."""
