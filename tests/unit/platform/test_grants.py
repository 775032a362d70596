"""A pod's throttle: asks with its token, retries a lost connection a few times then
gives up as OSError (a transient pod failure), and stops at once when refused."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from ferry.platform.kubernetes import grants

TICKET = grants.Ticket(url="http://10.0.0.7:8080/", token="s3cret-token")


class Opener:
    """Answers each request with the next outcome: an exception or a 200."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.seen: list[tuple[str, dict[str, str], dict[str, Any], float]] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> io.BytesIO:
        headers = dict(request.header_items())
        body = json.loads(request.data)  # type: ignore[arg-type]
        self.seen.append((request.full_url, headers, body, timeout))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return io.BytesIO(b'{"granted": 1}')


def refused(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError(TICKET.url, code, "no", None, None)  # type: ignore[arg-type]


def test_each_chunk_is_asked_for_with_the_token_and_a_large_one_in_pieces() -> None:
    # Given a throttle on a ticket
    opener = Opener()
    throttle = grants.Throttle(TICKET, opener=opener, timeout=123)
    # When the engine asks for a 4 MiB chunk and a slice larger than one ask may be
    throttle(4 << 20)
    throttle(grants.MAX_BYTES + 5)
    # Then each ask went to the broker's route with the bearer token and a long time-out
    assert [s[2]["bytes"] for s in opener.seen] == [4 << 20, grants.MAX_BYTES, 5]
    url, headers, _, timeout = opener.seen[0]
    assert url == "http://10.0.0.7:8080/pace/grants" and timeout == 123
    assert headers["Authorization"] == "Bearer s3cret-token"
    assert throttle.granted == (4 << 20) + grants.MAX_BYTES + 5


def test_a_lost_connection_is_tried_again_then_raised_as_oserror() -> None:
    # Given a broker that is unreachable twice, then answers
    lost = urllib.error.URLError(ConnectionRefusedError("refused"))
    opener = Opener(lost, refused(503), None)
    throttle = grants.Throttle(TICKET, opener=opener, attempts=3, backoff=0)
    # When a chunk is asked for, it is granted on the third attempt
    throttle(4096)
    assert len(opener.seen) == 3 and throttle.granted == 4096
    # Given one that never answers
    never = Opener(*[lost] * 10)
    throttle = grants.Throttle(TICKET, opener=never, attempts=3, backoff=0)
    # Then the ask fails as an OSError after three attempts (the pod exits TRANSIENT)
    with pytest.raises(OSError, match="after 3 attempts") as failed:
        throttle(4096)
    assert len(never.seen) == 3 and throttle.granted == 0
    assert "s3cret" not in str(failed.value)


@pytest.mark.parametrize("code", [400, 403])
def test_a_refusal_is_not_asked_again(code: int) -> None:
    # Given a broker that refuses the ticket (the copy that opened it ended)
    opener = Opener(refused(code), None)
    throttle = grants.Throttle(TICKET, opener=opener, attempts=5, backoff=0)
    # Then the ask fails at once, without the token in the reason
    with pytest.raises(OSError, match=f"HTTP {code}") as failed:
        throttle(4096)
    assert len(opener.seen) == 1
    assert "s3cret" not in str(failed.value)
