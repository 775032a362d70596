"""The grant broker checks the ticket first, then the body, and takes from the rate only
for an open ticket and a well-formed ask; a ticket is closed however its copy ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web

from ferry.platform.copy import engine
from ferry.platform.grantsteps import Allowance
from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, grants, pacing
from ferry.platform.kubernetes.grants import MAX_BYTES


class Asked:
    """A rate that records what it was asked for."""

    def __init__(self) -> None:
        self.taken: list[int] = []

    async def __call__(self, nbytes: int) -> None:
        self.taken.append(nbytes)


class Request:
    """What the handler reads of a request: its headers and its body."""

    def __init__(self, authorization: str | None, body: bytes) -> None:
        self.headers = {} if authorization is None else {"Authorization": authorization}
        self.body = body

    async def read(self) -> bytes:
        return self.body


async def answer(broker: pacing.Broker, authorization: str | None, body: bytes) -> web.Response:
    return await broker.grant(cast("web.Request", Request(authorization, body)))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1]",
        b"{}",
        b'{"bytes": 0}',
        b'{"bytes": -4096}',
        b'{"bytes": 4096.0}',
        b'{"bytes": "4096"}',
        b'{"bytes": true}',
        b'{"bytes": null}',
        json.dumps({"bytes": MAX_BYTES + 1}).encode(),
    ],
)
async def test_a_malformed_ask_on_an_open_ticket_is_400_and_takes_nothing(body: bytes) -> None:
    # Given an open ticket
    broker, rate = pacing.Broker(), Asked()
    with broker.ticket(rate) as token:
        # When its holder asks with a body that is not {"bytes": n}, 0 < n <= 1 GiB
        response = await answer(broker, f"Bearer {token}", body)
    # Then it is refused as a bad request and the rate was not asked
    assert response.status == 400
    assert rate.taken == [] and broker.granted == 0


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer wrong"])
async def test_an_unknown_token_is_403_before_the_body_is_read(header: str | None) -> None:
    # Given an open ticket
    broker, rate = pacing.Broker(), Asked()
    with broker.ticket(rate) as token:
        # When someone asks without its token (or with another), even with a bad body
        good = await answer(broker, header, b'{"bytes": 4096}')
        bad = await answer(broker, header, b"garbage")
    # Then both are forbidden, nothing is taken, and the answers do not echo the token
    assert good.status == bad.status == 403
    assert rate.taken == []
    assert token not in (good.text or "") + (bad.text or "")


async def test_a_good_ask_waits_for_the_rate_and_a_closed_ticket_is_refused() -> None:
    # Given a ticket
    broker, rate = pacing.Broker(), Asked()
    with broker.ticket(rate) as token:
        # When its holder asks for one chunk and for the largest slice allowed
        first = await answer(broker, f"Bearer {token}", b'{"bytes": 4194304}')
        largest = await answer(
            broker, f"bearer  {token} ", json.dumps({"bytes": MAX_BYTES}).encode()
        )
        assert broker.open == 1
    # Then both were granted from its rate
    assert first.status == largest.status == 200
    assert rate.taken == [4 << 20, MAX_BYTES] and broker.granted == (4 << 20) + MAX_BYTES
    # And once the copy ended its token is refused
    late = await answer(broker, f"Bearer {token}", b'{"bytes": 4096}')
    assert late.status == 403 and broker.open == 0 and len(rate.taken) == 2


async def test_a_ticket_is_closed_when_its_copy_fails() -> None:
    # Given a copy that holds a ticket and fails
    broker, rate = pacing.Broker(), Asked()
    with pytest.raises(RuntimeError), broker.ticket(rate) as token:
        raise RuntimeError("the pod failed")
    # Then its token is closed
    assert broker.open == 0
    assert (await answer(broker, f"Bearer {token}", b'{"bytes": 1}')).status == 403


def test_tickets_are_random_and_never_shown_in_a_job_or_ticket_repr() -> None:
    # Given two tickets
    broker = pacing.Broker()
    with broker.ticket(Asked()) as one, broker.ticket(Asked()) as two:
        # Then their tokens differ and are long
        assert one != two and len(one) >= 40
        # And a job or ticket carrying one never shows it in its repr (log lines, tracebacks)
        ticket = grants.Ticket(url="http://10.0.0.7:8080", token=one)
        job = fill.Job(
            source=ImageRef(path="/d"),
            target="/t",
            block=True,
            capacity=1,
            state_dir="/s",
            pace_url=ticket.url,
            pace_token=one,
        )
        assert one not in repr(ticket) and one not in repr(job)
        assert "10.0.0.7" in repr(job)


def test_a_paced_job_gives_the_engine_a_throttle_and_an_unpaced_one_none() -> None:
    # Given a job with a ticket and one without
    def job(url: str = "", token: str = "") -> fill.Job:
        source = ImageRef(path="/d")
        return fill.Job(
            source=source, target="/t", block=True, capacity=1, state_dir="/s",
            pace_url=url, pace_token=token,
        )  # fmt: skip

    paced, unpaced = job("http://h:8080", "t"), job()
    # Then only the paced one asks for grants (the broker's, in steps)
    throttle = paced.options().throttle
    assert isinstance(throttle, Allowance) and isinstance(throttle.ask, grants.Throttle)
    assert unpaced.options().throttle is None
    # And a pace URL that is not http(s) is refused before any copy
    with pytest.raises(ValueError, match="http"):
        job("file:///etc/x", "t").options()


def test_a_paced_delta_round_hands_the_throttle_to_the_delta_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a delta job with a ticket, over a filled volume
    (tmp_path / fill.FILESYSTEM_IMAGE).write_bytes(b"")
    job = fill.Job(
        source=ImageRef(path="/d"),
        target=str(tmp_path),
        block=False,
        capacity=1,
        state_dir=str(tmp_path),
        delta=True,
        pace_url="http://h:8080",
        pace_token="t",
    )
    seen: list[engine.Options | None] = []

    class Closed:
        def close(self) -> None:
            pass

    def apply(*args: object, options: engine.Options | None = None, **kw: object) -> object:
        seen.append(options)
        raise RuntimeError("enough")

    monkeypatch.setattr(fill, "open_source", lambda ref: Closed())
    monkeypatch.setattr(fill, "open_sink", lambda *a: None)
    monkeypatch.setattr(fill.delta, "apply", apply)
    # When the pod runs it
    with pytest.raises(RuntimeError, match="enough"):
        fill.run(job)
    # Then the delta copy got the broker's throttle, as a full copy does
    assert len(seen) == 1 and seen[0] is not None
    throttle = seen[0].throttle
    assert isinstance(throttle, Allowance) and isinstance(throttle.ask, grants.Throttle)
