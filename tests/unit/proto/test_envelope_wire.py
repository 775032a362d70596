"""The envelope's wire format is frozen: headers and ids as the implementation of
2026-12-07 (session 13) wrote and read them, for every input.

The envelope was made faster (remembered encodings, one check for a whole header
set before decoding it value by value); whatever it does, it must write the same
bytes and read the same values, and ids must stay what they were (the stream's
duplicate window compares them across versions during a rolling upgrade). The
reference below is a copy of that implementation, kept here on purpose: do not
"simplify" it into calls to the module under test.
"""

from __future__ import annotations

import hashlib
import itertools
from urllib.parse import quote, unquote_to_bytes

import msgspec
import pytest

from ferry.proto import envelope, migration, volume
from ferry.proto.base import Message
from ferry.proto.envelope import Envelope, UnknownMessageType

# -- the reference: session 13's functions, verbatim in behaviour -------------------

_REF_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')


def ref_encode_value(value: str) -> str:
    return quote(value, safe=_REF_SAFE, encoding="utf-8", errors="strict")


def ref_decode_value(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        chars = iter(value[1:-1])
        for c in chars:
            out.append(next(chars, "\\") if c == "\\" else c)
        value = "".join(out)
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnknownMessageType(f"CloudEvents header value is not UTF-8: {value!r}") from error


def ref_headers(env: Envelope) -> dict[str, str]:
    return {
        "ce-id": ref_encode_value(env.id),
        "ce-source": ref_encode_value(env.source),
        "ce-type": ref_encode_value(env.type),
        "ce-subject": ref_encode_value(env.subject),
        "ce-time": ref_encode_value(env.time),
        "ce-specversion": ref_encode_value(env.specversion),
        "ce-datacontenttype": ref_encode_value(env.datacontenttype),
        "Nats-Msg-Id": env.id,
    }


def ref_from_headers(headers: dict[str, str] | None) -> Envelope:
    h = {name.lower(): value for name, value in (headers or {}).items()}
    legacy = "ce-datacontenttype" not in h and "content-type" in h
    if legacy:
        h["ce-datacontenttype"] = h["content-type"]

    def attribute(name: str, default: str | None = None) -> str:
        raw = h.get("ce-" + name, default)
        if raw is None:
            raise UnknownMessageType(f"message without CloudEvents header 'ce-{name}'")
        return raw if legacy else ref_decode_value(raw)

    return Envelope(
        id=attribute("id"),
        source=attribute("source", ""),
        type=attribute("type"),
        subject=attribute("subject", ""),
        time=attribute("time", ""),
        specversion=attribute("specversion", "1.0"),
        datacontenttype=attribute("datacontenttype", "application/json"),
    )


def ref_message_id(message: Message, cause: str = "") -> str:
    h = hashlib.sha256()
    if cause:
        h.update(cause.encode())
        h.update(b"\0")
    h.update(msgspec.json.encode(message))
    return f"{message.type_name()}:{h.hexdigest()[:32]}"


# -- awkward values -----------------------------------------------------------------

AWKWARD = [
    "",
    " ",
    "%",
    '"',
    '""',
    '"x"',
    '"a \\"b\\" %25"',
    "%25",
    "%2",
    "%zz",
    "100%",
    "a%20b",
    "ü",
    "Win Server 100%20ok.ova ü",
    "Euro \u20ac \U0001f600",
    "tab\there",
    "line\nbreak\r\n",
    "\x00\x7f\x1f",
    "p/m/v:1;x=y&z?#~",
    "~!#$&'()*+,-./:;<=>?@[\\]^_`{|}",
    "1.0",
    "application/json",
    "volume.allocate_disks.v1:0123456789abcdef0123456789abcdef",
    "2026-12-07T20:21:43.123456Z",
    "x" * 5000,
    ("a%b ü" * 700)[:3000],
    "\ufeffbom",
    "\u00a0nbsp",
]


def _envelopes() -> list[Envelope]:
    out = []
    for value in AWKWARD:
        for field in Envelope.__struct_fields__:
            base = Envelope(
                id="t.x.v1:ab", source="ferry/s", type="t.x.v1", subject="p/m/v", time="t"
            )
            out.append(msgspec.structs.replace(base, **{field: value}))
    out.append(Envelope(id=" ", source=" ", type=" ", subject=" ", time=" ", specversion=" "))
    return out


def test_headers_are_written_byte_for_byte_as_before() -> None:
    # Given envelopes with an awkward value in each attribute in turn
    for env in _envelopes():
        # When their headers are written, twice (remembered encodings must not drift)
        first, second = env.headers(), env.headers()
        # Then they are the reference's, in the same order, byte for byte
        expected = ref_headers(env)
        assert list(first.items()) == list(expected.items()), env
        assert second == expected
        assert {k: v.encode() for k, v in first.items()} == {
            k: v.encode() for k, v in expected.items()
        }


def test_every_value_is_encoded_and_decoded_as_before() -> None:
    # Given awkward values, and every character of the first planes alone and between safe ones
    chars = (chr(c) for c in range(0x3000) if not 0xD800 <= c <= 0xDFFF)
    values = [*AWKWARD, *itertools.chain.from_iterable((c, f"a{c}b", f'"{c}"') for c in chars)]
    for value in values:
        # Then encoding gives the reference's text, and decoding what the reference reads
        assert envelope.encode_value(value) == ref_encode_value(value), repr(value)
        for written in (value, ref_encode_value(value)):
            try:
                expected = ref_decode_value(written)
            except UnknownMessageType:
                with pytest.raises(UnknownMessageType):
                    envelope.decode_value(written)
            else:
                assert envelope.decode_value(written) == expected, repr(written)


def _header_sets() -> list[dict[str, str]]:
    sets: list[dict[str, str]] = []
    for env in _envelopes():
        written = ref_headers(env)
        sets.append(written)
        sets.append({k.upper(): v for k, v in written.items()})
        # the same values written raw (as an older Ferry did), quoted, or missing
        sets.append({f"ce-{f}": getattr(env, f) for f in Envelope.__struct_fields__})
        sets.append({f"ce-{f}": f'"{getattr(env, f)}"' for f in Envelope.__struct_fields__})
        legacy = {k: v for k, v in written.items() if k != "ce-datacontenttype"}
        sets.append(legacy | {"Content-Type": env.datacontenttype})
    for missing in Envelope.__struct_fields__:
        sets.append({k: v for k, v in ref_headers(_envelopes()[0]).items() if k != f"ce-{missing}"})
    sets.append({"ce-id": "%C0%A0", "ce-type": "t", "ce-source": "s", "ce-subject": "s",
                 "ce-time": "t", "ce-specversion": "1.0", "ce-datacontenttype": "a"})  # fmt: skip
    sets.append({})
    return sets


def test_headers_are_read_as_before() -> None:
    # Given header sets as Ferry writes them, in other cases, raw, quoted, legacy,
    # incomplete and invalid
    for headers in [*_header_sets(), None]:
        # When both read them, Then they agree on the envelope or on the error
        try:
            expected = ref_from_headers(headers)
        except UnknownMessageType as error:
            with pytest.raises(UnknownMessageType) as raised:
                Envelope.from_headers(headers)
            assert str(raised.value) == str(error)
        else:
            assert Envelope.from_headers(headers) == expected, headers


def test_ids_and_the_headers_of_a_publish_are_the_same_as_before() -> None:
    # Given messages with awkward content, with and without a cause, from awkward sources
    messages: list[Message] = [
        volume.AllocateDisks(plan="p", migration="m", vm="v", namespace="n"),
        volume.AllocateDisks(plan="p", migration="m", vm="v", namespace="n", attempt=2),
        migration.VmCanceled(plan="p ü", migration="m 1", vm="Win Server 100%20ok.ova ü"),
        migration.VmCanceled(plan='"', migration="%", vm=""),
    ]
    causes = ["", "x:1", "ü %", "\0"]
    sources = ["ferry/test", "ferry/ä b%", ""]
    for message, cause, source in itertools.product(messages, causes, sources):
        # When they are wrapped (with their headers, as a publish does; and ids directly)
        env, data = envelope.wrap(message, source, cause)
        env2, data2, headers = envelope.wrap_with_headers(message, source, cause)
        # Then every id is the reference's
        assert env.id == ref_message_id(message, cause) == envelope.message_id(message, cause=cause)
        assert env2.id == env.id and data == data2 == msgspec.json.encode(message)
        assert env.type == message.type_name() and env.source == source
        assert env.subject == f"{message.plan}/{message.migration}/{message.vm}"
        # and the headers made with the envelope are the reference's, in order
        assert list(headers.items()) == list(ref_headers(env2).items())
        assert Envelope.from_headers(headers) == env2
