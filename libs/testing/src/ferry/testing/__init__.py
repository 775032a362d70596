"""Ferry test helpers: private nats-server, process control."""
