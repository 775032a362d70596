"""The labels Ferry stamps on what it creates on the target, one name per concept.

Ferry finds its volumes, pods and VirtualMachines again by these labels, never
by name, so that re-running a step is harmless. Both platforms (local and
kubernetes) and the VirtualMachine builder stamp the same keys: a selector
written once finds a migration's objects on either, and a person can list them
with ``kubectl get pvc,vm -l ferry.io/migration=<id>``.

Values are the ids from the messages (plan, migration, source VM, disk); the
kubernetes side shortens them to valid label values, the local side keeps them.
"""

from __future__ import annotations

PREFIX = "ferry.io/"

PLAN = PREFIX + "plan"
MIGRATION = PREFIX + "migration"
VM = PREFIX + "vm"  # the source VM's id, on its volumes and on its VirtualMachine alike
DISK = PREFIX + "disk"  # the source disk's id, on that disk's volume
TEMPORARY = PREFIX + "temporary"  # "true": removed by clean-up (prime volumes, pvcinit pods)
PRIME_OF = PREFIX + "prime-of"  # on a prime volume: the claim it populates
PVCINIT = PREFIX + "pvcinit"  # "true" on the pod that binds every volume of a VM
