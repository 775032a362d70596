"""Ferry vm-service: KubeVirt VirtualMachines."""
