"""Operator metrics of migrations in flight, exported by the console from the KV views.

The console already reads every VM state and is one replica, so it is where the
per-VM view of a wave becomes Prometheus series without each worker replica
exporting (and double counting) what the controller stores. The collector holds
the last reading; :func:`refresh` renews it on a timer and at each page snapshot.

``ferry_vm_last_change_timestamp_seconds`` is when this console last saw a
running VM's step or bytes move: the stalled-migration alert compares it with
the time, so it fires on "no progress", not on "slow". ``ferry_vm_estimate_seconds``
is what the controller predicted for the VM when it admitted its migration: the
over-estimate alert compares a running VM's elapsed time with it,
``ferry_step_expected_seconds`` is its current step's share of that estimate (the
stuck-step alert compares the step's running time with it), and
``ferry_estimate_error_ratio`` says how far off each finished VM's estimate was.

The duration histograms are built from the stored states of every VM (and
Migration) that ended, so they are the same whichever console replica is
scraped and survive a console restart.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ferry.proto.estimate import PlanEstimate
from ferry.proto.objects import Migration
from ferry.proto.phases import StepStatus, VmStatus
from ferry.proto.state import VmState, VmView, parse_iso
from ferry.runtime import estimates

NAMES = (
    "ferry_vms",
    "ferry_disk_bytes",  # exported as ferry_disk_bytes_total
    "ferry_disk_size_bytes",
    "ferry_step_duration_seconds",
    "ferry_vm_last_change_timestamp_seconds",
    "ferry_migrations",
    "ferry_vm_running_seconds",
    "ferry_vm_estimate_seconds",
    "ferry_step_expected_seconds",
    "ferry_estimate_error_ratio",
    "ferry_precopy_rounds",
    "ferry_precopy_bytes",  # exported as ferry_precopy_bytes_total
    "ferry_vm_duration_seconds",
    "ferry_migration_duration_seconds",
)
# From a minute (a small disk on a LAN) to a day (a wave's largest VM).
BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0)


def _histogram(
    name: str, text: str, labels: list[str], values: dict[tuple[str, ...], list[float]]
) -> Metric:
    family = HistogramMetricFamily(name, text, labels=labels)
    for key, seen in sorted(values.items()):
        cumulative = [(str(b), float(sum(1 for v in seen if v <= b))) for b in BUCKETS]
        family.add_metric(list(key), [*cumulative, ("+Inf", float(len(seen)))], sum(seen))
    return family


def pair(s: VmView) -> tuple[str, str]:
    """The VM's source (provider@host, as the estimates key their history) and target
    (namespace); a bare view, which does not name its provider, gives its host alone."""
    provider = s.provider if isinstance(s, VmState | estimates.Stored) else None
    source = estimates.source_of(provider.provider, s.host) if provider is not None else s.host
    return source, s.namespace


class Views(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._states: list[VmView] = []
        self._estimates: dict[str, PlanEstimate] = {}
        self._migrations: dict[str, float] = {}  # ended migration -> seconds it took
        self._phases: Counter[tuple[str, str]] = Counter()  # (plan, phase) -> migrations
        self._moved: dict[tuple[str, str], tuple[tuple[str, int], float]] = {}
        if registry is not None:
            registry.register(self)

    def update(
        self,
        states: Iterable[VmView],
        now: float | None = None,
        *,
        migrations: Iterable[Migration] | None = None,
    ) -> None:
        """The VM states, and (when given) the Migrations with their recorded estimates."""
        now = time.time() if now is None else now
        self._states = list(states)
        if migrations is not None:
            mine = list(migrations)
            self._estimates = {m.name: e for m in mine if (e := estimates.recorded(m)) is not None}
            self._phases = Counter((m.spec.plan.name, m.status.phase.shown) for m in mine)
            self._migrations = {
                m.name: (m.status.completed - m.status.started).total_seconds()
                for m in mine
                if m.status.started and m.status.completed
            }
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
        per_disk = ["migration", "vm", "disk", "source", "target"]
        copied = CounterMetricFamily(
            "ferry_disk_bytes", "Bytes written per disk, by source and target.", labels=per_disk
        )
        size = GaugeMetricFamily(
            "ferry_disk_size_bytes",
            "Bytes to write per disk, by source and target.",
            labels=per_disk,
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
            source, target = pair(s)
            for d in s.disks:
                copied.add_metric([s.migration, s.name, d.name, source, target], d.done)
                size.add_metric([s.migration, s.name, d.name, source, target], d.total)
            for step in s.steps:
                if step.started and step.status is not StepStatus.PENDING:
                    end = parse_iso(step.ended) if step.ended else now
                    took = max(0.0, end - parse_iso(step.started))
                    steps.add_metric([s.migration, s.name, step.name, str(step.status)], took)
            if s.status is VmStatus.RUNNING and (s.migration, s.vm) in self._moved:
                moved.add_metric([s.migration, s.name], self._moved[(s.migration, s.vm)][1])
        yield from (vms, copied, size, steps, moved)
        plans = GaugeMetricFamily(
            "ferry_migrations", "Migrations by plan and phase.", labels=["plan", "phase"]
        )
        for (plan, phase), n in sorted(self._phases.items()):
            plans.add_metric([plan, phase], n)
        yield plans
        yield from self._rounds()
        yield from self._against_estimates(now)
        ended: dict[tuple[str, ...], list[float]] = {}
        for s in self._states:
            if s.status.ended and s.started and s.ended:
                took = max(0.0, parse_iso(s.ended) - parse_iso(s.started))
                ended.setdefault((str(s.status),), []).append(took)
        yield _histogram(
            "ferry_vm_duration_seconds", "Seconds each ended VM took, by status.", ["status"], ended
        )
        yield _histogram(
            "ferry_migration_duration_seconds",
            "Seconds each ended migration took.",
            [],
            {(): list(self._migrations.values())},
        )

    def _rounds(self) -> Iterator[Metric]:
        rounds = GaugeMetricFamily(
            "ferry_precopy_rounds",
            "Warm copy rounds done per VM (the first full copy, precopies, the final delta).",
            labels=["migration", "vm"],
        )
        copied = CounterMetricFamily(
            "ferry_precopy_bytes",
            "Bytes written by a VM's warm copy rounds, by kind of round.",
            labels=["migration", "vm", "round"],
        )
        for s in self._states:
            if not s.rounds:
                continue
            rounds.add_metric([s.migration, s.name], len(s.rounds))
            by_kind = {"full": 0, "precopy": 0, "final": 0}
            for r in s.rounds:
                kind = "final" if r.final else ("full" if r.precopy == 0 else "precopy")
                by_kind[kind] += r.copied
            for kind, n in by_kind.items():
                copied.add_metric([s.migration, s.name, kind], n)
        yield from (rounds, copied)

    def _against_estimates(self, now: float) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "ferry_vm_running_seconds",
            "Seconds a running VM has been migrating.",
            labels=["migration", "vm"],
        )
        predicted = GaugeMetricFamily(
            "ferry_vm_estimate_seconds",
            "The VM's duration the controller estimated when it admitted the migration.",
            labels=["migration", "vm"],
        )
        expected = GaugeMetricFamily(
            "ferry_step_expected_seconds",
            "What a running VM's current step should take: its share of the VM's estimate.",
            labels=["migration", "vm", "step"],
        )
        error = GaugeMetricFamily(
            "ferry_estimate_error_ratio",
            "A finished VM's (actual - estimated) / actual duration.",
            labels=["migration", "vm"],
        )
        for s in self._states:
            if s.status is VmStatus.RUNNING and s.started:
                running.add_metric([s.migration, s.name], max(0.0, now - parse_iso(s.started)))
            est = self._estimates.get(s.migration)
            guess = est.vm(s.vm) if est is not None else None
            if est is None or guess is None:
                continue
            predicted.add_metric(
                [s.migration, s.name], guess.warm_duration if est.warm else guess.cold_duration
            )
            if s.status is VmStatus.RUNNING:
                shares = estimates.expected_steps(est, guess, s.flow)
                for step in s.steps:
                    if step.status is StepStatus.RUNNING and step.name in shares:
                        expected.add_metric([s.migration, s.name, step.name], shares[step.name])
            for a in estimates.accuracy(est, [s]):
                error.add_metric([s.migration, s.name], a.error)
        yield from (running, predicted, expected, error)
