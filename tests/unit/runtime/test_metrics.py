"""Metrics: the router's observer hooks become ferry_… Prometheus series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ferry.runtime.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.exposition().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_observer_hooks_count_by_service_and_type() -> None:
    # Given the volume-service's metrics
    metrics = Metrics("volume-service")
    copy = "volume.copy_disks.v1"

    # When the router reports two successes, one failure, one redelivery, and 3 in flight
    metrics.handled(copy, 0.2)
    metrics.handled(copy, 40.0)
    metrics.failed(copy, "permanent")
    metrics.redelivered(copy)
    metrics.in_flight(3)

    # Then the series carry the numbers
    s = _samples(metrics)
    svc = {"service": "volume-service", "type": copy}
    assert s[("ferry_messages_handled_total", _labels(**svc))] == 2
    assert s[("ferry_messages_failed_total", _labels(**svc, reason="permanent"))] == 1
    assert s[("ferry_messages_redelivered_total", _labels(**svc))] == 1
    assert s[("ferry_in_flight", _labels(service="volume-service"))] == 3
    assert s[("ferry_handler_duration_seconds_count", _labels(**svc))] == 2
    assert s[("ferry_handler_duration_seconds_sum", _labels(**svc))] == 40.2
    assert s[("ferry_handler_duration_seconds_bucket", _labels(**svc, le="0.5"))] == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    # Given two runtimes in one process
    a, b = Metrics("vm-service"), Metrics("vm-service")

    # When only one handles a message
    a.handled("vm.create_vm.v1", 1.0)

    # Then the other's counters are untouched (no duplicate-registration error either)
    key = ("ferry_messages_handled_total", _labels(service="vm-service", type="vm.create_vm.v1"))
    assert _samples(a)[key] == 1
    assert key not in _samples(b)


def test_in_flight_starts_at_zero() -> None:
    # Given fresh metrics, Then the gauge is exported at 0 before any message
    assert (
        _samples(Metrics("migration-controller"))[
            ("ferry_in_flight", _labels(service="migration-controller"))
        ]
        == 0
    )
