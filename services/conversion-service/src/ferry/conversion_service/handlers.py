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

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ferry.bus import BusError, Context, PermanentError, Router, TemporaryError
from ferry.conversion_service import lease as leases
from ferry.conversion_service import v2v
from ferry.conversion_service.progress import Progress
from ferry.conversion_service.settings import Settings
from ferry.platform import factory as platforms
from ferry.proto.conversion import ConversionMode, ConversionProgress, ConvertGuest, GuestConverted
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.providers.base import ProviderError, ProviderNotSupported

ProviderLookup = Callable[[SourceRef], Awaitable[v2v.V2vSource]]


async def open_provider(ref: SourceRef) -> v2v.V2vSource:
    """The provider named by ``ref`` (OVA needs no secret; others will read theirs)."""
    return factory.create(ref)


class Throttle:
    """Let a progress event through on a new stage, or when it moved and time passed."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: Progress | None = None
        self._at = 0.0

    def admit(self, update: Progress) -> bool:
        now = time.monotonic()
        last = self._last
        new_stage = last is None or (update.stage, update.disk) != (last.stage, last.disk)
        finished = update.percent == 100.0 and (last is None or last.percent != 100.0)
        if new_stage or finished or now - self._at >= self.interval:
            self._last, self._at = update, now
            return True
        return False


def job_of(cmd: ConvertGuest, source: v2v.V2vSource | None) -> v2v.Job:
    return v2v.Job(
        migration=cmd.migration,
        vm_key=cmd.vm,
        mode=cmd.mode,
        inventory=cmd.inventory,
        volumes=cmd.volumes,
        timeout_seconds=cmd.timeout_seconds,
        source=source,
    )


def register(
    router: Router,
    settings: Settings,
    *,
    providers: ProviderLookup = open_provider,
    converter: v2v.Converter | None = None,
) -> v2v.Converter:
    """Add the ConvertGuest handler to ``router``; returns the converter it uses."""
    if converter is None:
        # virt-v2v runs as a workload of the configured platform: a child process tree
        # locally, a conversion pod in a cluster.
        platform = platforms.create(settings.platform, data_dir=settings.data_dir)
        converter = v2v.Converter(settings.conversion, Path(settings.data_dir), platform)

    @router.handler(ConvertGuest)
    async def convert_guest(cmd: ConvertGuest, ctx: Context) -> GuestConverted:
        if not cmd.volumes:
            raise PermanentError(f"no bound volumes to convert VM {cmd.inventory.name!r} into")
        lease = leases.Lease(
            ctx.bus,
            cmd.migration,
            cmd.vm,
            cmd.step,
            cmd.attempt,
            settings.conversion.lease_seconds,
        )
        earlier = await lease.done_before()
        if earlier is not None:
            ctx.log.info("conversion already completed; reporting its result again")
            return earlier
        source = await _source(cmd, providers)
        throttle = Throttle(settings.conversion.progress_interval_seconds)

        async def progress(update: Progress) -> None:
            if not throttle.admit(update):
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
                ctx.log.info("converting %s (%s)", cmd.inventory.name, cmd.mode.value)
                result = await converter.convert(job_of(cmd, source), progress)
                event = GuestConverted(
                    **cmd.reply(),
                    mode=cmd.mode,
                    inspection=result.inspection,
                    volumes=list(cmd.volumes),
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

    return converter


async def _source(cmd: ConvertGuest, providers: ProviderLookup) -> v2v.V2vSource | None:
    if cmd.mode is not ConversionMode.FULL:
        return None
    try:
        return await providers(cmd.provider)
    except ProviderNotSupported as error:
        raise PermanentError(str(error)) from None
    except ProviderError as error:
        raise TemporaryError(f"provider {cmd.provider.provider!r}: {error}", delay=30.0) from None
