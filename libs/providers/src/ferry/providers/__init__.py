"""Ferry source providers (OVA, vSphere, oVirt, OpenStack, KubeVirt)."""
