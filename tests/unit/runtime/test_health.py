"""Readiness is the conjunction of named checks; a failing check reads as not ready."""

from __future__ import annotations

from ferry.proto.subjects import Service
from ferry.runtime.health import Readiness
from ferry.runtime.lifecycle import process_name


def test_ready_only_when_every_check_holds() -> None:
    # Given two checks, one of them false
    state = {"bus": True, "router": False}
    readiness = Readiness()
    readiness.add("bus_connected", lambda: state["bus"])
    readiness.add("router_running", lambda: state["router"])

    # Then it is not ready, and the report names the failing check
    assert readiness.ready() is False
    assert readiness.report() == {"bus_connected": True, "router_running": False}

    # When the router starts
    state["router"] = True

    # Then it is ready
    assert readiness.ready() is True


def test_a_check_that_raises_counts_as_not_ready() -> None:
    # Given a check that fails with an exception (e.g. the bus is not there yet)
    readiness = Readiness()

    def broken() -> bool:
        raise RuntimeError("not connected yet")

    readiness.add("bus_connected", broken)

    # Then the probe answers "not ready" instead of failing
    assert readiness.report() == {"bus_connected": False}
    assert readiness.ready() is False


def test_no_checks_is_not_ready() -> None:
    # A service that registered nothing has not proven anything
    assert Readiness().ready() is False


def test_process_names_match_the_deployments() -> None:
    # The names used in logs, metrics and `ferry up` are the services' folder names
    assert [process_name(s) for s in Service] == [
        "migration-controller",
        "volume-service",
        "conversion-service",
        "vm-service",
    ]
