"""A failed transfer pod's reason is the kubelet's or the program's words, never its progress."""

from __future__ import annotations

from typing import Any

import pytest

from ferry.platform.kubernetes import fillpod


def failed(terminated: dict[str, Any], **status: str) -> dict[str, Any]:
    container = {"name": "populate", "state": {"terminated": terminated}}
    return {"status": {"phase": "Failed", "containerStatuses": [container], **status}}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        # the program's last words (its termination message)
        (
            failed({"exitCode": 2, "message": "SourceGoneError: imageio answered 404\n"}),
            "SourceGoneError: imageio answered 404",
        ),
        # killed: the log's tail (FallbackToLogsOnError) is only progress lines
        (
            failed(
                {
                    "exitCode": 137,
                    "reason": "Error",
                    "message": '{"event":"progress","done":4194304,"total":12582912}\n',
                }
            ),
            "exit code 137 (Error)",
        ),
        # words before a progress line still count
        (
            failed(
                {
                    "exitCode": 1,
                    "message": 'OSError: [Errno 5] EIO\n{"event":"progress","done":1,"total":2}',
                }
            ),
            "OSError: [Errno 5] EIO",
        ),
        # evicted: the pod's own reason, whatever the log said
        (
            failed(
                {"exitCode": 137, "message": '{"event":"progress","done":1,"total":2}'},
                reason="Evicted",
                message="The node was low on resource: memory.",
            ),
            "Evicted: The node was low on resource: memory.",
        ),
        ({"status": {"phase": "Failed"}}, "no reason"),
    ],
)
def test_a_failed_pods_reason(pod: dict[str, Any], expected: str) -> None:
    assert fillpod.reason(pod) == expected
