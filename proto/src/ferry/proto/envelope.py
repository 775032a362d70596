"""CloudEvents 1.0 envelopes in the NATS protocol binding's binary content mode.

Context attributes travel as NATS headers named ``ce-<attribute>``, including
``ce-datacontenttype`` (the NATS binding, unlike the HTTP one, has no
``Content-Type`` mapping: that header only tells structured mode apart); the data
is the message's JSON. Header values are percent-encoded as the binding's
section 3.1.3.2 requires, so a subject made of a VM's name (spaces, ``%``,
non-ASCII) comes back exactly as it went in. The event id
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
import time
from datetime import UTC, datetime
from urllib.parse import quote, unquote_to_bytes

import msgspec

from ferry.proto import registry
from ferry.proto.base import Message

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
MSG_ID_HEADER = "Nats-Msg-Id"
CE_PREFIX = "ce-"
# Ferry before it followed the binding wrote values raw and datacontenttype as
# Content-Type; streams keep such events, so a Content-Type without
# ce-datacontenttype marks values to read as they are.
_LEGACY_TYPE = "content-type"

# Printable ASCII stays as it is, except the three the binding names: space and
# the double quote (so no value ever needs quoting) and percent itself.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')

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
            "ce-id": encode_value(self.id),
            "ce-source": encode_value(self.source),
            "ce-type": encode_value(self.type),
            "ce-subject": encode_value(self.subject),
            "ce-time": encode_value(self.time),
            "ce-specversion": _constant(self.specversion, SPECVERSION),
            "ce-datacontenttype": _constant(self.datacontenttype, CONTENT_TYPE),
            MSG_ID_HEADER: self.id,
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> Envelope:
        # Header names are case-insensitive in NATS as in HTTP.
        h = headers or {}
        if h.keys() >= _CE_NAMES:
            return cls._from_lowercase(h)  # every attribute named as Ferry writes it: fast
        h = {name.lower(): value for name, value in h.items()}
        legacy = CE_PREFIX + "datacontenttype" not in h and _LEGACY_TYPE in h
        if legacy:
            h[CE_PREFIX + "datacontenttype"] = h[_LEGACY_TYPE]

        def attribute(name: str, default: str | None = None) -> str:
            raw = h.get(CE_PREFIX + name, default)
            if raw is None:
                raise UnknownMessageType(f"message without CloudEvents header 'ce-{name}'")
            return raw if legacy else decode_value(raw)

        return cls(
            id=attribute("id"),
            source=attribute("source", ""),
            type=attribute("type"),
            subject=attribute("subject", ""),
            time=attribute("time", ""),
            specversion=attribute("specversion", SPECVERSION),
            datacontenttype=attribute("datacontenttype", CONTENT_TYPE),
        )

    @classmethod
    def _from_lowercase(cls, h: dict[str, str]) -> Envelope:
        """``from_headers`` when every attribute is there under its lower-case name."""
        return cls(
            id=decode_value(h["ce-id"]),
            source=decode_value(h["ce-source"]),
            type=decode_value(h["ce-type"]),
            subject=decode_value(h["ce-subject"]),
            time=decode_value(h["ce-time"]),
            specversion=decode_value(h["ce-specversion"]),
            datacontenttype=decode_value(h["ce-datacontenttype"]),
        )


# Every attribute's header, as ``Envelope.headers`` names them.
_CE_NAMES = frozenset(CE_PREFIX + name for name in Envelope.__struct_fields__)


def _constant(value: str, usual: str) -> str:
    """``encode_value`` of an attribute that nearly always has its ``usual`` value."""
    return value if value is usual or value == usual else encode_value(value)


def encode_value(value: str) -> str:
    """A header value as the NATS binding writes it (section 3.1.3.2): UTF-8, upper-case hex."""
    if (
        value.isascii()
        and value.isprintable()  # in ASCII: 0x20 to 0x7E
        and " " not in value
        and '"' not in value
        and "%" not in value
    ):
        return value  # the common case (ids, types, times): nothing to escape
    return quote(value, safe=_SAFE, encoding="utf-8", errors="strict")


def decode_value(value: str) -> str:
    """The binding's reading: unquote an RFC 7230 quoted string, then one round of
    percent-decoding that rejects invalid UTF-8 (``%C0%A0``), which
    ``urllib.parse.unquote`` would silently replace."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _unquote_quoted_string(value[1:-1])
    if "%" not in value:
        return value  # nothing escaped: decoding would give the same text back
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnknownMessageType(f"CloudEvents header value is not UTF-8: {value!r}") from error


def _unquote_quoted_string(inner: str) -> str:
    out: list[str] = []
    chars = iter(inner)
    for c in chars:
        out.append(next(chars, "\\") if c == "\\" else c)
    return "".join(out)


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


_stamped: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text


def now() -> str:
    """The time, UTC, to the microsecond, as RFC 3339 (``2026-12-07T20:21:43.123456Z``).

    Every published message is stamped: the date and time of day are formatted once a
    second, the microseconds each time (a full ``isoformat`` cost more than the rest
    of the envelope together)."""
    global _stamped
    second, nanos = divmod(time.time_ns(), 1_000_000_000)
    if _stamped[0] != second:
        _stamped = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_stamped[1]}.{nanos // 1000:06d}Z"


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
