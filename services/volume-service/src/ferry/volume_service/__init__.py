"""Ferry volume-service: target disks and transfers."""
