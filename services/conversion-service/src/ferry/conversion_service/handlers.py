"""The conversion-service's one command: ``conversion.ConvertGuest``.

The handler turns the command into a :class:`~ferry.conversion_service.v2v.Job`,
holds the VM's lease (:mod:`ferry.conversion_service.lease`) while virt-v2v runs,
publishes ``ConversionProgress`` as virt-v2v moves on (each publish also keeps
the command alive, on top of the router's own in-progress acks), and returns
``GuestConverted`` with the inspection. What cannot work (bad volumes, a guest
virt-v2v cannot convert, a time limit exceeded) is a :class:`PermanentError`
whose detail holds the few log lines that explain it and where the full log is.
Cancellation arrives as task cancellation: virt-v2v and its helpers are killed
before the handler lets it through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ferry.bus import BusError, Context, PermanentError, Router, TemporaryError
from ferry.conversion_service import lease as leases
from ferry.conversion_service import v2v
from ferry.conversion_service import volumes as owned
from ferry.conversion_service.progress import Progress
from ferry.conversion_service.settings import ConversionSettings
from ferry.proto.conversion import ConversionMode, ConversionProgress, ConvertGuest, GuestConverted
from ferry.proto.inventory import Volume
from ferry.proto.volume import SourceRef
from ferry.providers.base import ProviderError, ProviderNotSupported
from ferry.runtime.progress import Throttle

ProviderLookup = Callable[[SourceRef], Awaitable[v2v.V2vSource]]
"""How the handler opens the source of a full conversion: in the service,
:class:`ferry.runtime.providers.Providers` (Provider object and its secret)."""


def job_of(
    cmd: ConvertGuest, source: v2v.V2vSource | None, volumes: list[Volume] | None = None
) -> v2v.Job:
    """The job of ``cmd``; ``volumes`` are the platform's records of the ones it names."""
    return v2v.Job(
        migration=cmd.migration,
        vm_key=cmd.vm,
        mode=cmd.mode,
        inventory=cmd.inventory,
        volumes=cmd.volumes if volumes is None else volumes,
        timeout_seconds=cmd.timeout_seconds,
        source=source,
    )


class ConversionHandlers:
    """The conversion-service's handler, and what it needs: the converter (virt-v2v as a
    workload of the platform), the way to open providers, the platform's volume records
    (where a volume's path comes from), the service's settings."""

    def __init__(
        self,
        settings: ConversionSettings,
        converter: v2v.Converter,
        providers: ProviderLookup,
        records: owned.VolumeRecords,
    ) -> None:
        self.settings = settings
        self.converter = converter
        self.providers = providers
        self.records = records

    def register(self, router: Router) -> None:
        """One handler per command on ``router``."""
        router.handler(ConvertGuest)(self.convert_guest)

    async def convert_guest(self, cmd: ConvertGuest, ctx: Context) -> GuestConverted:
        if not cmd.volumes:
            raise PermanentError(f"no bound volumes to convert VM {cmd.inventory.name!r} into")
        lease = leases.Lease(
            ctx.bus,
            cmd.migration,
            cmd.vm,
            cmd.step,
            cmd.attempt,
            self.settings.lease_seconds,
        )
        earlier = await lease.done_before()
        if earlier is not None:
            ctx.log.info("conversion already completed; reporting its result again")
            return earlier
        source = await self._source(cmd)
        throttle = Throttle(self.settings.progress_interval_seconds)

        async def progress(update: Progress) -> None:
            if not throttle.admit(
                cmd.vm, update.percent or 0.0, 100.0, (update.stage, update.disk)
            ):
                return
            event = ConversionProgress(
                **cmd.reply(),
                stage=update.stage,
                disk=update.disk,
                disks=update.disks,
                percent=update.percent,
                # A run restarted after a crash reports the same stages again; its
                # delivery number keeps those facts distinct in the audit stream.
                run=ctx.deliveries,
            )
            try:
                await ctx.emit(event)
            except BusError as error:  # progress is best effort; the conversion goes on
                ctx.log.warning("progress event not published: %s", error)

        try:
            async with lease.held():
                volumes = await owned.resolve(self.records, cmd)
                ctx.log.info("converting %s (%s)", cmd.inventory.name, cmd.mode.value)
                result = await self.converter.convert(job_of(cmd, source, volumes), progress)
                event = GuestConverted(
                    **cmd.reply(),
                    mode=cmd.mode,
                    inspection=result.inspection,
                    volumes=volumes,
                    seconds=round(result.seconds, 1),
                    log=str(result.log),
                )
                await lease.complete(event)
                return event
        except v2v.ConversionError as error:
            await lease.release()
            where = [f"full log: {error.log}"] if error.log else []
            raise PermanentError(error.reason, [*error.detail, *where]) from None
        except leases.LeaseLost as error:
            raise TemporaryError(str(error), delay=5.0) from None
        except BaseException:
            await lease.release()
            raise

    async def _source(self, cmd: ConvertGuest) -> v2v.V2vSource | None:
        if cmd.mode is not ConversionMode.FULL:
            return None
        try:
            return await self.providers(cmd.provider)
        except ProviderNotSupported as error:
            raise PermanentError(str(error)) from None
        except ProviderError as error:
            raise TemporaryError(
                f"provider {cmd.provider.provider!r}: {error}", delay=30.0
            ) from None
