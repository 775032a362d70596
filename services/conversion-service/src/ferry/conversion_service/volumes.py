"""The volumes a ``ConvertGuest`` names, resolved from the platform's own records.

A command says *which* volumes virt-v2v writes (by name and disk id), never *where*:
virt-v2v opens its outputs with ``O_CREAT|O_TRUNC``, so a path taken from a message
would let anyone able to publish a command overwrite any file this service can
write. Each named volume must be one the platform holds for the command's
migration and VM (found by its ownership labels, not its name alone), and its path
is the platform's. A command that names a path the volume does not have is refused
outright: it is either stale beyond repair or an attempt to aim virt-v2v elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from ferry.conversion_service.v2v import ConversionError
from ferry.platform.volumes import VolumeState, labels_for
from ferry.proto.conversion import ConvertGuest
from ferry.proto.inventory import Volume
from ferry.proto.names import is_dns1123_label


class VolumeRecords(Protocol):
    """The part of the platform that knows which volumes exist."""

    async def list_volumes(
        self, namespace: str, labels: Mapping[str, str]
    ) -> list[VolumeState]: ...


def _same_path(asked: str, known: str) -> bool:
    return Path(asked).resolve() == Path(known).resolve()


async def resolve(records: VolumeRecords, cmd: ConvertGuest) -> list[Volume]:
    """The command's volumes as the platform records them, in the command's order."""
    if not is_dns1123_label(cmd.namespace):
        raise ConversionError(f"namespace {cmd.namespace!r} is not a DNS-1123 label")
    owned = {
        state.name: state
        for state in await records.list_volumes(cmd.namespace, labels_for(cmd.migration, cmd.vm))
        if not state.temporary
    }
    resolved: list[Volume] = []
    for asked in cmd.volumes:
        state = owned.get(asked.name)
        if state is None:
            raise ConversionError(
                f"volume {asked.name!r} does not exist in namespace {cmd.namespace!r} "
                f"for VM {cmd.vm!r} of migration {cmd.migration!r}"
            )
        if state.disk_id != asked.disk_id:
            raise ConversionError(
                f"volume {asked.name!r} holds disk {state.disk_id!r}, not {asked.disk_id!r}"
            )
        if asked.path and not _same_path(asked.path, state.path):
            raise ConversionError(
                f"volume {asked.name!r}: the command names a path that is not the volume's; "
                "refused (paths come from the platform, never from a message)"
            )
        resolved.append(state.to_proto())
    return resolved
