"""A migration's per-VM pipeline as a Migration's ``status.vms`` shows it.

The controller keeps each VM's whole state in ``ferry-vms`` (:mod:`ferry.proto.state`);
``ferry describe migration`` reads it there. In a cluster the same view is written
into the Migration's status by the operator (``kubectl get migration -o yaml``, and
``ferry describe migration --context``), so it is one pydantic model, made from a
:class:`~ferry.proto.state.VmView` by :func:`summary` and nowhere else.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ferry.proto.state import VmView


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class StepSummary(_Model):
    """One step of a VM's itinerary: where it is, which attempt, when."""

    name: str
    service: str = ""
    status: str = "Pending"
    attempt: int = 0
    started: str = ""
    ended: str = ""


class DiskSummary(_Model):
    """One disk: bytes copied of its total, and the verified copy's checksum."""

    id: str
    name: str = ""
    total: int = 0
    done: int = 0
    checksum: str = ""


class RoundSummary(_Model):
    """One warm copy round: what changed at the source, what was written, how long."""

    precopy: int
    final: bool = False
    changed: int = 0
    copied: int = 0
    seconds: float = 0.0


class VmSummary(_Model):
    """One VM of a migration as ``describe`` shows it (derived from ferry-vms)."""

    id: str
    name: str
    phase: str = ""
    status: str = "Pending"
    error: str = ""
    step: str = ""  # the step it is in (or ended in)
    flow: str = ""
    targetName: str = ""
    namespace: str = ""
    bytesDone: int = 0
    bytesTotal: int = 0
    steps: list[StepSummary] = Field(default_factory=list)
    disks: list[DiskSummary] = Field(default_factory=list)
    rounds: list[RoundSummary] = Field(default_factory=list)


def brief(vm: VmSummary) -> VmSummary:
    """``vm`` without its steps, disks and rounds: where it is, in a few hundred bytes."""
    return vm.model_copy(update={"steps": [], "disks": [], "rounds": []})


def current_step(view: VmView) -> str:
    """The step running, else the last one that failed or was canceled, else the last done."""
    steps = view.steps
    for wanted in ("Running", "Failed", "Canceled"):
        found = [s.name for s in steps if s.status == wanted]
        if found:
            return found[-1]
    done = [s.name for s in steps if s.status == "Completed"]
    return done[-1] if done else ""


def summary(view: VmView) -> VmSummary:
    return VmSummary(
        id=view.vm,
        name=view.name,
        phase=view.phase,
        status=str(view.status),
        error=view.last_error,
        step=current_step(view),
        flow=str(view.flow),
        targetName=view.target_name,
        namespace=view.namespace,
        bytesDone=view.done_bytes,
        bytesTotal=view.total_bytes,
        steps=[
            StepSummary(
                name=s.name,
                service=s.service,
                status=str(s.status),
                attempt=s.attempt,
                started=s.started,
                ended=s.ended,
            )
            for s in view.steps
        ],
        disks=[
            DiskSummary(id=d.id, name=d.name, total=d.total, done=d.done, checksum=d.checksum)
            for d in view.disks
        ],
        rounds=[
            RoundSummary(
                precopy=r.precopy,
                final=r.final,
                changed=r.changed,
                copied=r.copied,
                seconds=r.seconds,
            )
            for r in view.rounds
        ],
    )
