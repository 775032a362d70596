"""The libvirt/KVM provider (``type: libvirt``)."""
