"""Ferry test helpers: a private nats-server (``ferry.testing.nats``) and bus helpers
(``ferry.testing.bus``) for tests that run against real components."""
