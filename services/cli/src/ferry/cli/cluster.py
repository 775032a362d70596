"""``ferry --context NAME`` / ``--kubeconfig PATH``: the same commands, against a cluster.

With either option ``apply``, ``get`` and ``describe`` write and read the cluster's
ferry.dev objects through its API server (the kubeconfig's server, credentials and
CA, loaded by kubernetes-asyncio: :func:`ferry.platform.factory.cluster_objects`)
instead of the local stack's bus; the controller's operator mode takes them from
there. ``apply`` checks what it does locally (every document valid, every
reference naming an object that exists in the cluster or comes in the same apply:
:func:`ferry.runtime.objectbucket.check_refs`) before it writes anything, and
prints the same lines; ``get`` the same table; ``describe migration`` the per-VM
pipeline the operator wrote into the Migration's status. Every other command
works on the bus only, and says so when given a cluster.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ferry.platform import factory
from ferry.platform.clusterobjects import ClusterObjects, ClusterObjectsError, Conflict
from ferry.platform.settings import KubernetesSettings
from ferry.proto import objects
from ferry.proto.budget import Budget
from ferry.proto.pipeline import VmSummary
from ferry.runtime import objectbucket

WORKS = ("apply", "get", "describe")
MARK = {"Completed": "✓", "Running": "▶", "Failed": "✗", "Canceled": "⊘", "Pending": "·"}
Document = dict[str, Any]


class Selected:
    """The cluster the command line named (None: the local stack), and a namespace."""

    settings: KubernetesSettings | None = None
    namespace: str = ""


def select(
    command: str | None, context: str | None, kubeconfig: Path | None, namespace: str
) -> None:
    """Remember ``--context`` / ``--kubeconfig``; refuse them for a command of the bus."""
    Selected.namespace = namespace
    if not context and kubeconfig is None:
        Selected.settings = None
        return
    if command not in WORKS:
        typer.echo(
            f"error: `ferry {command}` works on the local stack's bus only; with --context "
            "or --kubeconfig, `ferry apply`, `get` and `describe` work on the cluster's "
            "ferry.dev objects (the controller's operator mode takes them from there)",
            err=True,
        )
        raise typer.Exit(2)
    if kubeconfig is not None and not kubeconfig.is_file():
        typer.echo(f"error: --kubeconfig {kubeconfig}: no such file", err=True)
        raise typer.Exit(2)
    # KUBECONFIG is read now, as kubectl reads it (the client library reads it at import).
    files = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG", "")
    Selected.settings = KubernetesSettings(context=context or "", kubeconfig=files)


def forget() -> None:
    """Back to the local stack (at the end of the invocation that chose a cluster)."""
    Selected.settings, Selected.namespace = None, ""


def selected() -> bool:
    return Selected.settings is not None


class ClusterCliError(Exception):
    """One line for the user; the command exits 1."""


@asynccontextmanager
async def connect() -> AsyncIterator[ClusterObjects]:
    assert Selected.settings is not None
    made = factory.cluster_objects(Selected.settings)
    try:
        yield made
    except ClusterObjectsError as error:
        raise ClusterCliError(str(error)) from None
    except Exception as error:  # the kubeconfig loader's errors: no context, no file…
        if type(error).__name__ != "ConfigException":
            raise
        raise ClusterCliError(f"kubeconfig: {error}") from None
    finally:
        await made.aclose()


# -- apply ---------------------------------------------------------------------------


def _wanted(obj: objects.FerryObjectBase) -> Document:
    """The object as sent: spec and the metadata a user sets; status is the controller's."""
    doc = objects.to_document(obj)
    doc.pop("status", None)
    meta = obj.metadata
    doc["metadata"] = {"name": meta.name, "namespace": meta.namespace}
    if meta.labels:
        doc["metadata"]["labels"] = dict(meta.labels)
    if meta.annotations:
        doc["metadata"]["annotations"] = dict(meta.annotations)
    return doc


async def apply(batch: objectbucket.Batch) -> list[str]:
    async with connect() as api:

        async def exists(obj: objects.FerryObjectBase, kind: str, name: str) -> bool:
            return await api.get(kind, obj.metadata.namespace, name) is not None

        await objectbucket.check_refs(batch, exists)
        return [await _put(api, obj) for _, _, obj in batch]


async def _put(api: ClusterObjects, obj: objects.FerryObjectBase) -> str:
    doc = _wanted(obj)
    label = f"{obj.KIND.lower()}/{obj.name}"
    there = await api.get(obj.KIND, obj.metadata.namespace, obj.name)
    if there is None:
        await api.create(doc)
        return f"{label} created"
    before = there.get("metadata") or {}
    mine = ("labels", "annotations")
    if there.get("spec") == doc.get("spec") and all(
        (before.get(k) or {}) == doc["metadata"].get(k, {}) for k in mine
    ):
        return f"{label} unchanged"
    metadata = {k: v for k, v in before.items() if k not in mine}
    metadata.update({k: doc["metadata"][k] for k in mine if k in doc["metadata"]})
    try:
        await api.replace({**there, "spec": doc["spec"], "metadata": metadata})
    except Conflict:
        raise ClusterCliError(f"{label} changed while it was applied; apply again") from None
    return f"{label} configured"


# -- get and describe ------------------------------------------------------------------


async def get(kind: str, name: str | None) -> list[Document]:
    """Objects of ``kind`` (all namespaces unless one was given), as Ferry shows them."""
    async with connect() as api:
        docs, _ = await api.list(kind, Selected.namespace)
    found = [
        objectbucket.from_cluster(d, status=True)
        for d in docs
        if name is None or (d.get("metadata") or {}).get("name") == name
    ]
    if name is not None and not found:
        raise ClusterCliError(f"{kind} {name!r} does not exist{_where()}")
    if name is not None and len(found) > 1:
        spaces = ", ".join(sorted(d["metadata"]["namespace"] for d in found))
        raise ClusterCliError(f"{kind} {name!r} is in namespaces {spaces}: give --namespace")
    return sorted(found, key=lambda d: (d["metadata"]["name"], d["metadata"].get("namespace")))


def _where() -> str:
    return f" in namespace {Selected.namespace}" if Selected.namespace else " in the cluster"


async def one(kind: str, name: str) -> objects.FerryObjectBase:
    [doc] = await get(kind, name)
    return objects.from_document(doc)


async def budgets(namespace: str) -> list[Budget]:
    async with connect() as api:
        docs, _ = await api.list(Budget.KIND, namespace)
    found = [objects.from_document(objectbucket.from_cluster(d, status=True)) for d in docs]
    return [b for b in found if isinstance(b, Budget)]


def render_migration(mig: objects.Migration) -> None:
    """The pipeline per VM, as the operator wrote it into the Migration's status."""
    from ferry.cli.objects import out  # that module imports this one

    status = mig.status
    out.print(
        f"[bold]Migration[/] {mig.name}   plan {mig.spec.plan.name}   "
        f"phase [bold]{status.phase.shown}[/]"
    )
    for who, reasons in status.reasons.items():
        for reason in reasons:
            out.print(f"  [red]rejected[/] {who}: {reason}")
    for condition in status.conditions:
        if condition.status != "True":
            out.print(f"  {condition.type} {condition.status}: {condition.message}")
    counts: dict[str, int] = {}
    for vm in status.vms:
        counts[vm.status.lower()] = counts.get(vm.status.lower(), 0) + 1
    if counts:
        out.print("  VMs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if status.vmsBrief or status.vmsOmitted:
        typer.echo(
            f"  {status.vmsBrief} VM(s) shown in brief and {status.vmsOmitted} left out, to keep "
            "the Migration under the cluster's object size limit; `ferry describe migration` "
            "on the stack's bus shows every VM in full"
        )
    for vm in status.vms:
        _render_vm(vm)


def _render_vm(vm: VmSummary) -> None:
    from ferry.cli import watch
    from ferry.cli.objects import out

    target = f"{vm.namespace}/{vm.targetName}"
    out.print(f"\n[bold]{vm.name}[/] ({vm.id}) → {target}   {vm.status}   flow {vm.flow}")
    table = Table(box=None, show_header=True, header_style="dim")
    for head in ("", "STEP", "SERVICE", "STATUS", "ATTEMPT", "STARTED", "ENDED"):
        table.add_column(head)
    for step in vm.steps:
        table.add_row(
            MARK.get(step.status, "?"),
            step.name,
            step.service,
            step.status,
            str(step.attempt),
            step.started,
            step.ended,
        )
    out.print(table)
    for disk in vm.disks:
        typer.echo(watch.disk_line(disk))
    if vm.bytesTotal and not vm.disks:  # in brief: the total only
        pct = 100 * vm.bytesDone / vm.bytesTotal
        done, total = watch.size(vm.bytesDone), watch.size(vm.bytesTotal)
        typer.echo(f"  disks: {done} / {total} ({pct:.0f}%)")
    for r in vm.rounds:
        typer.echo(watch.round_line(r))
    if vm.error:
        out.print(f"  error {vm.step}: {vm.error}", markup=False)
