"""Ferry's events read by the official CloudEvents Python SDK, through a real nats-server.

The Python SDK has no NATS binding, so the reader is its HTTP binary-mode
``from_binary``: the HTTP binding's rules for ``ce-`` header values (section
3.1.3.2: percent-encode space, double quote, percent and everything outside
printable ASCII; decode one round) are word for word the NATS binding's, and the
SDK follows them (``cloudevents.core.bindings.http``). The Go SDK's JetStream
binding copies values raw in both directions, so it reads ``100%20ok`` as it was
written raw and this SDK reads it as ``100 ok``: only percent-encoding on the
wire gives both the same subject, which is the behaviour matched here.
"""

from __future__ import annotations

import json

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from ferry.bus import Bus
from ferry.proto import envelope, subjects, vm

HOSTILE = [
    "Win Server 100%20ok.ova",
    'quoted "name" here',
    "100%",
    "%zz and %41",
    "naïve Ünïcödé € 😀",
    "slash/inside/a/name",
    "tab-free; semi: colon, comma=eq+plus&amp?q#h~",
]


@pytest.mark.parametrize("name", HOSTILE)
async def test_the_official_sdk_reads_back_the_subject_we_wrote(bus: Bus, name: str) -> None:
    # Given an event about a VM and a migration with a hostile name
    event = vm.VmStopped(plan=f"plan {name}", migration=name, vm=name, step="PowerOff", name="t")
    ack = await bus.publish(event)

    # When the stored message is read back raw from the stream by the official SDK
    raw = await bus.js.get_msg(subjects.EVENTS_STREAM, ack.sequence)
    headers = dict(raw.headers or {})
    read = from_binary(HTTPMessage(headers=headers, body=raw.data or b""), JSONFormat())

    # Then every context attribute is the one Ferry meant, the subject unchanged
    assert read.get_subject() == envelope.ce_subject(event) == f"plan {name}/{name}/{name}"
    assert read.get_id() == ack.id and read.get_type() == "vm.vm_stopped.v1"
    assert read.get_source() == "ferry/test" and read.get_specversion() == "1.0"
    assert read.get_datacontenttype() == envelope.CONTENT_TYPE
    assert read.get_data() == json.loads(raw.data or b"")
    # and the header values on the wire are printable ASCII without space or quote
    for key, value in headers.items():
        if key.startswith("ce-"):
            assert all(0x21 <= ord(c) <= 0x7E and c != '"' for c in value), (key, value)
    # and Ferry's own reader agrees with the SDK
    env, decoded = envelope.unwrap(headers, raw.data or b"")
    assert env.subject == read.get_subject() and decoded == event
