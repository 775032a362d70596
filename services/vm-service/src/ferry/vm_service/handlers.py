"""The vm-service's commands: create, power on (and watch the boot), power off, delete.

Each handler turns one command into one platform call and one outcome event;
the router does the rest (publish-then-ack, retries, dead letters). Every
handler is safe to run twice: the platform finds the VM by its ownership
labels, a second power-on re-attaches to the running guest, deleting a deleted
VM reports it deleted.

What can never work becomes a :class:`PermanentError` whose detail carries
the evidence: the builder's complaint about the inputs, or the last lines of the
guest's console when it did not boot in time.
"""

from __future__ import annotations

from ferry.bus import Context, PermanentError, Router
from ferry.platform import kubevirt
from ferry.platform.vms import BootFailed, VmConflict, VmInfo, VmNotFound, VmPlatform
from ferry.proto import vm
from ferry.proto.base import Command
from ferry.vm_service.settings import VmSettings


def _owner(cmd: Command) -> dict[str, str]:
    return kubevirt.Owner(plan=cmd.plan, migration=cmd.migration, vm_id=cmd.vm).labels()


class VmHandlers:
    """The vm-service's handlers, one method per command, and what they share: the
    platform's VirtualMachines and the service's limits."""

    def __init__(self, platform: VmPlatform, settings: VmSettings | None = None) -> None:
        self.platform = platform
        self.settings = settings or VmSettings()

    def register(self, router: Router) -> None:
        """One handler per command on ``router``."""
        router.handler(vm.CreateVm)(self.create_vm)
        router.handler(vm.PowerOn)(self.power_on)
        router.handler(vm.PowerOff)(self.power_off)
        # Clean-up of a canceled VM sends DeleteVm while the VM's cancel mark is set: it
        # must run anyway, as the volume-service's CleanupVolumes does.
        router.handler(vm.DeleteVm, cancelable=False)(self.delete_vm)

    async def create_vm(self, cmd: vm.CreateVm, ctx: Context) -> vm.VmCreated:
        try:
            manifest = kubevirt.from_create(cmd)
            info = await self.platform.create_vm(manifest, cmd.volumes)
        except (ValueError, VmConflict) as error:  # BuildError, or a spec the platform cannot run
            raise PermanentError(f"cannot create the VirtualMachine: {error}") from None
        ctx.log.info(
            "VirtualMachine %s/%s ready (existed: %s)", cmd.namespace, info.name, info.existed
        )
        return vm.VmCreated(
            **cmd.reply(),
            name=info.name,
            namespace=info.namespace,
            manifest=info.manifest,
            existed=info.existed,
        )

    async def power_on(self, cmd: vm.PowerOn, ctx: Context) -> vm.VmRunning:
        limit = float(cmd.boot_timeout_seconds)
        if self.settings.max_boot_seconds is not None:
            limit = min(limit, self.settings.max_boot_seconds)
        try:
            found = await self._locate(cmd)
            started = await self.platform.start_vm(found.namespace, found.name)
            await ctx.emit(
                vm.VmStarting(
                    **cmd.reply(),
                    name=started.name,
                    console=started.console,
                )
            )
            running = await self.platform.wait_running(found.namespace, found.name, limit)
        except VmNotFound as error:
            raise PermanentError(str(error)) from None
        except BootFailed as error:
            raise PermanentError(
                f"the VM did not boot: {error.reason}", error.console_tail
            ) from None
        ctx.log.info("VM %s running after %.1f s", running.name, running.boot_seconds or 0.0)
        return vm.VmRunning(
            **cmd.reply(),
            name=running.name,
            boot_seconds=running.boot_seconds or 0.0,
            console=running.console,
        )

    async def power_off(self, cmd: vm.PowerOff, ctx: Context) -> vm.VmStopped:
        try:
            found = await self._locate(cmd)
        except VmNotFound as error:
            raise PermanentError(str(error)) from None
        stopped = await self.platform.stop_vm(found.namespace, found.name)
        return vm.VmStopped(**cmd.reply(), name=stopped.name)

    async def delete_vm(self, cmd: vm.DeleteVm, ctx: Context) -> vm.VmDeleted:
        # Deleting what is already gone succeeds: a redelivery must not fail the step.
        try:
            found = await self._locate(cmd)
        except VmNotFound:
            return vm.VmDeleted(
                **cmd.reply(),
                name=kubevirt.dns_label(cmd.target_name) if cmd.target_name else "",
            )
        await self.platform.delete_vm(found.namespace, found.name)
        return vm.VmDeleted(**cmd.reply(), name=found.name)

    async def _locate(self, cmd: vm.PowerOn | vm.PowerOff | vm.DeleteVm) -> VmInfo:
        """The VM a command is about, found by its ownership labels.

        Never by name alone: a VM of that name made by another migration is not
        this command's to power on or delete.
        """
        found = await self.platform.find_vm(cmd.namespace, _owner(cmd))
        if found is None:
            raise VmNotFound(f"no VirtualMachine for VM {cmd.vm} in namespace {cmd.namespace}")
        return found
