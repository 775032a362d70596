"""The conversion-service's one command: ``conversion.ConvertGuest``.

The handler turns the command into a :class:`~ferry.conversion_service.v2v.Job`,
holds the VM's lease (:mod:`ferry.conversion_service.lease`) while virt-v2v runs,
publishes ``ConversionProgress`` as virt-v2v moves on (each publish also keeps
the command alive, on top of the router's own in-progress acks), repeats the
current stage with the elapsed time when virt-v2v has said nothing new for
``heartbeat_seconds`` (its inspection and conversion stages print nothing for
minutes: a watcher must tell slow from stuck), and returns
``GuestConverted`` with the inspection. What cannot work (bad volumes, a guest
virt-v2v cannot convert, a time limit exceeded) is a :class:`PermanentError`
whose detail holds the few log lines that explain it and where the full log is;
a virt-v2v run that failed for the machine's sake (killed, its appliance dead, the
source gone quiet: :func:`ferry.conversion_service.reasons.transient`) is a
:class:`TemporaryError`, run again after a pause.
Cancellation arrives as task cancellation: virt-v2v and its helpers are killed
before the handler lets it through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ferry.bus import BusError, Context, PermanentError, Router, TemporaryError
from ferry.conversion_service import lease as leases
from ferry.conversion_service import pacing, reasons, v2v
from ferry.conversion_service import volumes as owned
from ferry.conversion_service.progress import Progress
from ferry.conversion_service.settings import ConversionSettings
from ferry.proto.conversion import ConversionMode, ConversionProgress, ConvertGuest, GuestConverted
from ferry.proto.inventory import Volume
from ferry.proto.volume import SourceRef
from ferry.providers.base import ProviderError, ProviderNotSupported
from ferry.runtime.bandwidth import Rates
from ferry.runtime.progress import Throttle

ProviderLookup = Callable[[SourceRef], Awaitable[v2v.V2vSource]]
"""How the handler opens the source of a full conversion: in the service,
:class:`ferry.runtime.providers.Providers` (Provider object and its secret)."""


def job_of(
    cmd: ConvertGuest,
    source: v2v.V2vSource | None,
    volumes: list[Volume] | None = None,
    rates: Rates | None = None,
) -> v2v.Job:
    """The job of ``cmd``; ``volumes`` are the platform's records of the ones it names;
    ``rates`` the budgets' shared rates its reads are paced by (None: unpaced)."""
    rate = rates.pace(cmd.bandwidth) if rates is not None else None
    slowest = min((bw.bytes_per_second for bw in cmd.bandwidth), default=0.0)
    return v2v.Job(
        migration=cmd.migration,
        vm_key=cmd.vm,
        mode=cmd.mode,
        inventory=cmd.inventory,
        volumes=cmd.volumes if volumes is None else volumes,
        timeout_seconds=cmd.timeout_seconds,
        source=source,
        namespace=cmd.namespace,
        rate=rate,
        # at most about 8 grants a second, at least the importer's chunk
        rate_step=max(4 * pacing.STEP, int(slowest / 8)),
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
        rates: Rates | None = None,
    ) -> None:
        self.settings = settings
        self.converter = converter
        self.providers = providers
        self.records = records
        self.rates = rates  # the bandwidth budgets' shared rates (None in tests: unpaced)

    def register(self, router: Router) -> None:
        """One handler per command on ``router``."""
        router.handler(ConvertGuest)(self.convert_guest)

    async def convert_guest(self, cmd: ConvertGuest, ctx: Context) -> GuestConverted | None:
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
        reporter = _Reporter(cmd, ctx, self.settings)
        try:
            async with lease.held(), reporter.beating():
                volumes = await owned.resolve(self.records, cmd)
                ctx.log.info("converting %s (%s)", cmd.inventory.name, cmd.mode.value)
                result = await self.converter.convert(
                    job_of(cmd, source, volumes, self.rates), reporter.progress
                )
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
        except leases.AlreadyDone as done:
            ctx.log.info("conversion completed by another run meanwhile; reporting its result")
            return done.result
        except leases.Stale as stale:
            ctx.log.warning("not converting: %s", stale)
            return None
        except v2v.ConversionLost as error:  # the platform ended it: worth another attempt
            await lease.release()
            raise TemporaryError(error.reason, delay=10.0) from None
        except v2v.ConversionError as error:
            await lease.release()
            where = [f"full log: {error.log}"] if error.log else []
            if error.transient:  # the machine's fault, not the guest's: run it again later
                raise TemporaryError(
                    f"{error.reason} ({'; '.join([*error.detail[:2], *where])})",
                    delay=reasons.RETRY_SECONDS,
                ) from None
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


class _Reporter:
    """One conversion's progress events: virt-v2v's updates thinned by the throttle, and a
    heartbeat repeating the current stage whenever nothing was published for a while."""

    def __init__(self, cmd: ConvertGuest, ctx: Context, settings: ConversionSettings) -> None:
        self.cmd, self.ctx = cmd, ctx
        self.heartbeat = settings.heartbeat_seconds
        self.throttle = Throttle(settings.progress_interval_seconds)
        self.started = self.sent = time.monotonic()
        self.current = Progress(stage="Starting virt-v2v")

    async def progress(self, update: Progress) -> None:
        self.current = update
        key = (update.stage, update.disk)
        if self.throttle.admit(self.cmd.vm, update.percent or 0.0, 100.0, key):
            await self._publish(update)

    async def _publish(self, update: Progress) -> None:
        now = time.monotonic()
        self.sent = now
        event = ConversionProgress(
            **self.cmd.reply(),
            stage=update.stage,
            disk=update.disk,
            disks=update.disks,
            percent=update.percent,
            # A run restarted after a crash reports the same stages again; its
            # delivery number keeps those facts distinct in the audit stream.
            run=self.ctx.deliveries,
            # Each heartbeat is a new fact (a new message id): its elapsed time differs.
            elapsed=round(now - self.started, 1),
        )
        try:
            await self.ctx.emit(event)
        except BusError as error:  # progress is best effort; the conversion goes on
            self.ctx.log.warning("progress event not published: %s", error)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.sent + self.heartbeat - time.monotonic()))
            if time.monotonic() - self.sent >= self.heartbeat:
                await self._publish(self.current)

    @contextlib.asynccontextmanager
    async def beating(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
