"""Pure parts of the bus: retry policy, error messages, redaction, topology shapes."""

from __future__ import annotations

import pytest

from ferry.bus import (
    Conflict,
    InvalidKey,
    PermanentError,
    TemporaryError,
    TopologySettings,
    cancellation,
    topology,
)
from ferry.bus.dial import redact
from ferry.bus.router import Intake, Router, backoff, scrub
from ferry.proto import conversion, volume
from ferry.proto.subjects import Bucket, Service


def test_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    # Given successive failed deliveries
    # Then the delay doubles from 1 s and is capped at 60 s
    assert [backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(10_000) == 60


def test_conflict_names_bucket_key_and_revisions() -> None:
    # Given a lost compare-and-set
    err = Conflict("ferry-vms", "m1.vm1", expected_revision=4, current_revision=7)

    # Then the message says where and what to do
    assert str(err) == (
        "compare-and-set conflict on ferry-vms/m1.vm1: expected revision 4, "
        "found revision 7; re-read and retry"
    )
    assert "expected no entry" in str(Conflict("b", "k", 0, 3))


def test_handler_errors_carry_their_policy() -> None:
    assert TemporaryError("later", delay=-3).delay == 0.0
    assert PermanentError("no", ["a"]).detail == ["a"]
    assert isinstance(InvalidKey("b", "x y"), ValueError)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:s3cret@nats.example:4222", "nats://nats.example:4222"),
        ("tls://tok3n@10.0.0.1:4443", "tls://10.0.0.1:4443"),
        ("localhost:4222", "nats://localhost:4222"),
        (
            "nats://u:s3cret@a:4222, nats://u:s3cret@b:4223",
            "nats://a:4222,nats://b:4223",
        ),
    ],
)
def test_urls_are_redacted_before_logging(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "s3cret" not in redact(url) and "tok3n" not in redact(url)


def test_topology_shapes() -> None:
    # Given the default settings
    s = TopologySettings()

    # Then the audit stream keeps by limits on file for 30 days, queues are work queues
    events = topology.events_stream(s)
    assert events.subjects == ["ferry.evt.>"] and events.retention == "limits"
    assert events.storage == "file" and events.max_age == 30 * 24 * 3600
    queue = topology.command_stream(s, Service.VOLUME)
    assert queue.name == "FERRY_CMD_VOLUME" and queue.retention == "workqueue"
    consumer = topology.command_consumer(s, Service.VOLUME)
    assert consumer.durable_name == "volume-workers" and consumer.ack_policy == "explicit"
    # (no server-side delivery cap: the router itself gives up after s.max_deliver)
    assert consumer.max_deliver == -1 and s.max_deliver == 5 and consumer.ack_wait == 30.0
    assert topology.dead_letter_stream(s).subjects == ["ferry.dlq.>"]


def test_cancel_keys() -> None:
    assert cancellation.key("m1", "web01.example").startswith("m1.web01_example-")
    assert cancellation.key("m1") == cancellation.key("m1", "*") == "m1._all"
    assert Bucket.CANCEL.value == "ferry-cancel"


def test_router_refuses_other_services_commands_and_duplicates() -> None:
    # Given a volume router
    router = Router(Service.VOLUME)

    @router.handler(volume.CopyDisks)
    async def copy(cmd: volume.CopyDisks, ctx: object) -> None:
        return None

    # Then a second handler for the same type, or another service's command, is refused
    with pytest.raises(ValueError, match="already exists"):
        router.handler(volume.CopyDisks)(copy)
    with pytest.raises(ValueError, match="conversion service"):
        router.handler(conversion.ConvertGuest)(copy)  # type: ignore[arg-type]
    # but an events intake may take any event
    events = Router(Service.CONTROLLER, intake=Intake.events(filter_subjects=["ferry.evt.>"]))
    events.handler(volume.DisksCopied)(copy)  # type: ignore[arg-type]
    assert events.types == ["volume.disks_copied.v1"]


def test_failure_reasons_lose_url_credentials() -> None:
    # Given an exception text that quotes a URL with a password
    text = "login to https://admin:s3cr3t@vcenter.example/sdk failed"

    # When it is scrubbed for the audit stream
    # Then the host stays, the secret goes
    assert scrub(text) == "login to https://***@vcenter.example/sdk failed"
    assert scrub("http://host/path@x") == "http://host/path@x"
