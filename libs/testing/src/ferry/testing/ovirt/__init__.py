"""oVirt for tests: the real ovirt-imageio daemon and a stand-in for the engine's REST API."""
