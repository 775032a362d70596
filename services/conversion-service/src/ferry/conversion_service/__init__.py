"""Ferry conversion-service: virt-v2v workers."""
