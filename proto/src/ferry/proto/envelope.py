"""CloudEvents 1.0 envelopes in the NATS protocol binding's binary content mode.

Context attributes travel as NATS headers named ``ce-<attribute>``; the data is
the message's JSON and ``Content-Type`` carries ``datacontenttype``. The event id
doubles as the JetStream ``Nats-Msg-Id``: it is derived from the type and the
encoded data, so the same message published twice has the same id and the
stream's duplicate window drops the second copy.

A result published in answer to a command also mixes in the command's id (its
*cause*): a redelivery of the same command yields the same result id (dropped
as a duplicate), while a retry — a new attempt, so a new command id — that
happens to produce an identical result still gets a new id and is stored.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import msgspec

from ferry.proto import registry
from ferry.proto.base import Message

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
MSG_ID_HEADER = "Nats-Msg-Id"

_encoder = msgspec.json.Encoder()


class UnknownMessageType(ValueError):
    pass


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """The CloudEvents context attributes of one message."""

    id: str
    source: str
    type: str
    subject: str
    time: str
    specversion: str = SPECVERSION
    datacontenttype: str = CONTENT_TYPE

    def headers(self) -> dict[str, str]:
        return {
            "ce-id": self.id,
            "ce-source": self.source,
            "ce-type": self.type,
            "ce-subject": self.subject,
            "ce-time": self.time,
            "ce-specversion": self.specversion,
            "Content-Type": self.datacontenttype,
            MSG_ID_HEADER: self.id,
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> Envelope:
        h = headers or {}
        try:
            return cls(
                id=h["ce-id"],
                source=h.get("ce-source", ""),
                type=h["ce-type"],
                subject=h.get("ce-subject", ""),
                time=h.get("ce-time", ""),
                specversion=h.get("ce-specversion", SPECVERSION),
                datacontenttype=h.get("Content-Type", CONTENT_TYPE),
            )
        except KeyError as missing:
            raise UnknownMessageType(f"message without CloudEvents header {missing}") from None


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def message_id(message: Message, data: bytes | None = None, cause: str = "") -> str:
    """A deterministic id: the same message (for the same cause) always gets the same id."""
    payload = data if data is not None else encode(message)
    h = hashlib.sha256()
    if cause:
        h.update(cause.encode())
        h.update(b"\0")
    h.update(payload)
    digest = h.hexdigest()[:32]
    return f"{message.type_name()}:{digest}"


def ce_subject(message: Message) -> str:
    """The CloudEvents ``subject``: what the event is about."""
    return f"{message.plan}/{message.migration}/{message.vm}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def wrap(message: Message, source: str, cause: str = "") -> tuple[Envelope, bytes]:
    data = encode(message)
    env = Envelope(
        id=message_id(message, data, cause),
        source=source,
        type=message.type_name(),
        subject=ce_subject(message),
        time=now(),
    )
    return env, data


_decoders: dict[str, msgspec.json.Decoder[Message]] = {}


def decode(type_name: str, data: bytes) -> Message:
    """Decode data of a known type; unknown fields are ignored (open world)."""
    dec = _decoders.get(type_name)
    if dec is None:
        cls = registry.lookup(type_name)
        if cls is None:
            raise UnknownMessageType(f"unknown message type {type_name!r}")
        dec = msgspec.json.Decoder(cls)
        _decoders[type_name] = dec
    return dec.decode(data)


def unwrap(headers: dict[str, str] | None, data: bytes) -> tuple[Envelope, Message]:
    env = Envelope.from_headers(headers)
    return env, decode(env.type, data)
