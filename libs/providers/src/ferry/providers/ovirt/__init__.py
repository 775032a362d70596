"""The oVirt provider: the engine SDK for inventory and power, imageio for the data."""
