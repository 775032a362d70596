"""The embedded platform: volumes as files, workloads as child processes, VMs under QEMU.

Services reach it only through :mod:`ferry.platform.factory` (an import-linter
contract holds them to that).
"""
