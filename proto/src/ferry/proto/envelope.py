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
        # The source, type and subject repeat from message to message (one per
        # process, per message type, per VM): their encodings are remembered.
        encodings = _encodings
        return {
            "ce-id": encode_value(self.id),
            "ce-source": encodings.get(self.source) or _encoded(self.source),
            "ce-type": encodings.get(self.type) or _encoded(self.type),
            "ce-subject": encodings.get(self.subject) or _encoded(self.subject),
            "ce-time": encode_value(self.time),
            "ce-specversion": encodings.get(self.specversion) or _encoded(self.specversion),
            "ce-datacontenttype": (
                encodings.get(self.datacontenttype) or _encoded(self.datacontenttype)
            ),
            MSG_ID_HEADER: self.id,
        }

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> Envelope:
        h = headers or {}
        values: tuple[str, ...]
        try:  # every attribute named as Ferry writes it: the common case, read directly
            values = (
                h["ce-id"],
                h["ce-source"],
                h["ce-type"],
                h["ce-subject"],
                h["ce-time"],
                h["ce-specversion"],
                h["ce-datacontenttype"],
            )
        except KeyError:
            return cls._from_any_case(h)
        # Only a value with a ``%`` (escaped) or a ``"`` (quoted) reads differently
        # from its text. Ferry's own rarely have either, so one look at all of them
        # together decides whether any needs decoding.
        joined = "".join(values)
        if "%" in joined or '"' in joined:
            values = tuple(map(decode_value, values))
        id_, source, type_, subject, time_, specversion, datacontenttype = values
        return cls(
            id=id_,
            source=source,
            type=type_,
            subject=subject,
            time=time_,
            specversion=specversion,
            datacontenttype=datacontenttype,
        )

    @classmethod
    def _from_any_case(cls, headers: dict[str, str]) -> Envelope:
        """``from_headers`` for names in other cases, missing attributes, or the legacy form."""
        # Header names are case-insensitive in NATS as in HTTP.
        h = {name.lower(): value for name, value in headers.items()}
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


# Encodings of values that repeat (sources, types, subjects, the constant attributes).
_ENCODINGS_REMEMBERED = 4096
_encodings: dict[str, str] = {}


def _encoded(value: str) -> str:
    """``encode_value(value)``, remembered (up to 4,096 values, then it starts over)."""
    encoded = _encodings.get(value)
    if encoded is None:
        encoded = encode_value(value)
        if len(_encodings) >= _ENCODINGS_REMEMBERED:
            _encodings.clear()
        _encodings[value] = encoded
    return encoded


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
    return f"{message.type_name()}:{_digest(payload, cause)}"


def _digest(payload: bytes, cause: str) -> str:
    """The id's hash: sha256 over ``cause NUL payload`` (or the payload alone), 32 hex digits.

    Ids are compared by the stream's duplicate window across versions (a rolling
    upgrade redelivers to a newer replica): this must never change."""
    if cause:
        payload = cause.encode() + b"\0" + payload
    return hashlib.sha256(payload).hexdigest()[:32]


def ce_subject(message: Message) -> str:
    """The CloudEvents ``subject``: what the event is about."""
    return f"{message.plan}/{message.migration}/{message.vm}"


# The last whole second formatted (its date and time of day), and that text.
_second = -1
_second_text = ""
# "000" to "999": the microseconds are written as two of these (a format spec such as
# ``:06d`` cost as much as the rest of the stamp).
_DIGITS3 = [f"{n:03d}" for n in range(1000)]


def now() -> str:
    """The time, UTC, to the microsecond, as RFC 3339 (``2026-12-07T20:21:43.123456Z``).

    Every published message is stamped: the date and time of day are formatted once a
    second, the microseconds each time (a full ``isoformat`` cost more than the rest
    of the envelope together)."""
    global _second, _second_text
    micros = time.time_ns() // 1000
    second = micros // 1_000_000
    if second != _second:
        _second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = second
    fraction = micros % 1_000_000
    return f"{_second_text}.{_DIGITS3[fraction // 1000]}{_DIGITS3[fraction % 1000]}Z"


_type_names: dict[type[Message], str] = {}


def wrap(message: Message, source: str, cause: str = "") -> tuple[Envelope, bytes]:
    env, data, _ = wrap_with_headers(message, source, cause)
    return env, data


def wrap_with_headers(
    message: Message, source: str, cause: str = ""
) -> tuple[Envelope, bytes, dict[str, str]]:
    """``wrap``, and the envelope's ``headers()``, made together for a publish.

    Equal to ``env.headers()`` (a unit test holds them so), only cheaper: the id is
    the type, a colon and hex digits, and the time digits and ``-:T.Z``, so their
    encodings are known without looking at every character.
    """
    data = _encoder.encode(message)
    cls = type(message)
    type_name = _type_names.get(cls)
    if type_name is None:
        type_name = _type_names[cls] = cls.type_name()
    digest = _digest(data, cause)
    stamp = now()
    env = Envelope(
        id=f"{type_name}:{digest}",
        source=source,
        type=type_name,
        subject=f"{message.plan}/{message.migration}/{message.vm}",
        time=stamp,
    )
    encodings = _encodings
    type_encoded = encodings.get(type_name) or _encoded(type_name)
    headers = {
        "ce-id": f"{type_encoded}:{digest}",
        "ce-source": encodings.get(source) or _encoded(source),
        "ce-type": type_encoded,
        "ce-subject": encodings.get(env.subject) or _encoded(env.subject),
        "ce-time": stamp,
        "ce-specversion": SPECVERSION,
        "ce-datacontenttype": CONTENT_TYPE,
        MSG_ID_HEADER: env.id,
    }
    return env, data, headers


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
