"""The vSphere source: vCenter or ESXi through pyVmomi (see ``provider``)."""
