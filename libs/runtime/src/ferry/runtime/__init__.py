"""Ferry service runtime: settings, logging, metrics, health, lifecycle."""
