"""Operator metrics of migrations in flight, exported by the console from the KV views.

The console already reads every VM state and is one replica, so it is where the
per-VM view of a wave becomes Prometheus series without each worker replica
exporting (and double counting) what the controller stores. The collector holds
the last reading; :func:`refresh` renews it on a timer and at each page snapshot.

``ferry_vm_last_change_timestamp_seconds`` is when this console last saw a
running VM's step or bytes move: the stalled-migration alert compares it with
the time, so it fires on "no progress", not on "slow".
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ferry.proto.phases import StepStatus, VmStatus
from ferry.proto.state import VmView, parse_iso

NAMES = (
    "ferry_vms",
    "ferry_disk_bytes",  # exported as ferry_disk_bytes_total
    "ferry_disk_size_bytes",
    "ferry_step_duration_seconds",
    "ferry_vm_last_change_timestamp_seconds",
)


class Views(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._states: list[VmView] = []
        self._moved: dict[tuple[str, str], tuple[tuple[str, int], float]] = {}
        if registry is not None:
            registry.register(self)

    def update(self, states: Iterable[VmView], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._states = list(states)
        for s in self._states:
            key, mark = (s.migration, s.vm), (s.phase, s.done_bytes)
            seen = self._moved.get(key)
            if seen is None or seen[0] != mark:
                self._moved[key] = (mark, now)

    def collect(self) -> Iterator[Metric]:
        vms = GaugeMetricFamily(
            "ferry_vms",
            "VMs by migration, status and phase.",
            labels=["migration", "status", "phase"],
        )
        for (mig, status, phase), n in sorted(
            Counter((s.migration, str(s.status), s.phase) for s in self._states).items()
        ):
            vms.add_metric([mig, status, phase], n)
        copied = CounterMetricFamily(
            "ferry_disk_bytes", "Bytes written per disk.", labels=["migration", "vm", "disk"]
        )
        size = GaugeMetricFamily(
            "ferry_disk_size_bytes", "Bytes to write per disk.", labels=["migration", "vm", "disk"]
        )
        steps = GaugeMetricFamily(
            "ferry_step_duration_seconds",
            "Seconds a VM's step took, or has run so far.",
            labels=["migration", "vm", "step", "status"],
        )
        moved = GaugeMetricFamily(
            "ferry_vm_last_change_timestamp_seconds",
            "When a running VM's step or bytes last changed.",
            labels=["migration", "vm"],
        )
        now = time.time()
        for s in self._states:
            for d in s.disks:
                copied.add_metric([s.migration, s.name, d.name], d.done)
                size.add_metric([s.migration, s.name, d.name], d.total)
            for step in s.steps:
                if step.started and step.status is not StepStatus.PENDING:
                    end = parse_iso(step.ended) if step.ended else now
                    took = max(0.0, end - parse_iso(step.started))
                    steps.add_metric([s.migration, s.name, step.name, str(step.status)], took)
            if s.status is VmStatus.RUNNING and (s.migration, s.vm) in self._moved:
                moved.add_metric([s.migration, s.name], self._moved[(s.migration, s.vm)][1])
        yield from (vms, copied, size, steps, moved)
