"""What a JetStream cluster answers while it elects, and how the bus takes it.

Waiting for replicated streams to settle right after a create, and any request made
while a stream's leader is being replaced (:meth:`Bus.patiently`).

A stream just created through the meta leader is unknown (404) to a node that has not
applied its assignment yet, and a group without a leader finds no responder (503): both
mean "not yet", never a failed start-up. Seen in a 3-node run: a service exited on the
404 of a stream it had created a moment before.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from ferry.bus import Bus, TopologySettings, Unavailable, topology


class _Js:
    """stream_info answers from a script, one answer per call (the last one repeats)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    async def stream_info(self, name: str) -> Any:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


def _info(leader: str | None, current: list[bool]) -> Any:
    replicas = [SimpleNamespace(name=f"n{i}", current=c) for i, c in enumerate(current)]
    return SimpleNamespace(cluster=SimpleNamespace(leader=leader, replicas=replicas))


async def test_an_unknown_or_leaderless_stream_is_waited_for_not_a_failure() -> None:
    # Given a stream the answering node does not know yet, then one with no leader
    js = _Js(
        [
            NotFoundError(code=404, err_code=10059, description="stream not found"),
            ServiceUnavailableError(code=503, description="temporarily unavailable"),
            NoRespondersError(),
            _info(None, [False, False]),
            _info("n0", [True, False]),
        ]
    )
    # When the start-up waits for it to settle
    await topology.settled(SimpleNamespace(js=js), ["S"], within=10)  # type: ignore[arg-type]
    # Then it returned once a leader with a current majority answered
    assert js.calls == 5


async def test_a_stream_that_never_settles_times_out_saying_what_it_saw() -> None:
    # Given a stream that stays unknown
    js = _Js([NotFoundError(code=404, err_code=10059, description="stream not found")])
    # Then the wait ends, naming the stream and the last answer
    with pytest.raises(TimeoutError, match=r"stream S .*NotFoundError"):
        await topology.settled(SimpleNamespace(js=js), ["S"], within=0.3)  # type: ignore[arg-type]


def _bus(publish_timeout: float) -> Bus:
    nc = SimpleNamespace(jetstream=lambda **options: SimpleNamespace())
    return Bus(nc, name="t", settings=TopologySettings(), publish_timeout=publish_timeout)  # type: ignore[arg-type]


async def test_a_request_during_an_election_is_tried_again_until_answered() -> None:
    # Given a request the cluster first cannot answer (its stream leader was just lost)
    answers: list[Any] = [NatsTimeout(), NoRespondersError(), ServiceUnavailableError(code=503)]

    async def call() -> str:
        if answers:
            raise answers.pop(0)
        return "info"

    # Then it is tried again, and its answer returned
    assert await _bus(10).patiently("reading", call) == "info"


async def test_a_request_never_answered_fails_in_one_line_and_a_refusal_at_once() -> None:
    async def silent() -> str:
        raise NatsTimeout()

    # Given a cluster that never answers: a clear error naming what was asked
    with pytest.raises(Unavailable, match=r"reading: JetStream did not answer for 0s"):
        await _bus(0.3).patiently("reading", silent)

    calls = 0

    async def refused() -> str:
        nonlocal calls
        calls += 1
        raise NotFoundError(code=404, err_code=10059, description="stream not found")

    # And a refusal is no election: it is raised at the first answer
    with pytest.raises(NotFoundError):
        await _bus(10).patiently("reading", refused)
    assert calls == 1


async def test_a_declaration_waits_for_a_cluster_whose_peers_are_still_starting() -> None:
    # Given a cluster that cannot place a replicated stream yet (a node still starting),
    # then can
    refusals = [
        BadRequestError(
            code=400, err_code=10005, description="no suitable peers for placement, peer offline"
        )
        for _ in range(2)
    ]
    created: list[str] = []

    class Js:
        async def add_stream(self, config: Any) -> Any:
            if refusals:
                raise refusals.pop(0)
            created.append(config.name)
            return SimpleNamespace(config=config)

        async def add_consumer(self, stream: str, config: Any) -> None:
            return None

        async def create_key_value(self, **kwargs: Any) -> None:
            return None

    bus = _bus(1)
    bus.js = Js()  # type: ignore[assignment]
    # When the services declare their streams / Then it waits, and declares them all
    await topology.declare(bus, TopologySettings(), [], within=10)
    assert created == ["FERRY_EVENTS", "FERRY_DLQ"]
    # And a placement refusal outside a declaration is no "not yet"
    refusals.append(BadRequestError(code=400, err_code=10005, description="no peers"))
    with pytest.raises(BadRequestError):
        await bus.patiently("publishing", lambda: Js().add_stream(SimpleNamespace(name="X")))
