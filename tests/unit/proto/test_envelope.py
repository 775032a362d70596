"""CloudEvents envelopes: round trip, deterministic ids, open-world decoding."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from ferry.proto import envelope, migration, registry, volume
from ferry.proto.envelope import Envelope, UnknownMessageType


def _progress(done: int = 1) -> migration.Progress:
    return migration.Progress(plan="p", migration="m", vm="v", step="copy", done=done, total=10)


def test_round_trip_through_headers_and_data() -> None:
    # Given a message wrapped for the wire
    message = _progress()
    env, data = envelope.wrap(message, "ferry/test")

    # When the headers and bytes are unwrapped again
    env2, decoded = envelope.unwrap(env.headers(), data)

    # Then both the message and the context attributes come back
    assert decoded == message
    assert env2 == env
    assert env.type == "migration.progress.v1" and env.subject == "p/m/v"
    assert env.source == "ferry/test" and env.specversion == "1.0"


def test_registry_names_every_type_once_and_a_failure_per_service() -> None:
    # Given the registry of every message type
    tags = [cls.type_name() for cls in registry.MESSAGES]

    # Then tags are unique and look up their class
    assert len(tags) == len(set(tags))
    assert all(registry.lookup(t) is cls for t, cls in zip(tags, registry.MESSAGES, strict=True))
    # and each service's failure event is owned by that service
    for service, failed in registry.FAILED.items():
        assert failed.owner() == service and failed in registry.MESSAGES


def test_ids_are_deterministic_and_content_derived() -> None:
    # Given the same message built twice and a different one
    a, b, c = _progress(1), _progress(1), _progress(2)

    # When their ids are computed (also at different times)
    ids = [envelope.wrap(m, "ferry/x")[0].id for m in (a, b, c)]

    # Then equal content gives equal ids, different content different ids
    assert ids[0] == ids[1] != ids[2]
    assert ids[0] == envelope.message_id(a)
    assert ids[0].startswith("migration.progress.v1:")
    # and the id is the Nats-Msg-Id header too
    env, _ = envelope.wrap(a, "ferry/x")
    assert env.headers()[envelope.MSG_ID_HEADER] == env.id


def test_a_retry_attempt_is_a_new_id() -> None:
    # Given the same command as a first and a second attempt
    first = volume.AllocateDisks(plan="p", migration="m", vm="v", namespace="n", attempt=1)
    second = msgspec.structs.replace(first, attempt=2)

    # Then the controller's retry is not deduplicated away
    assert envelope.message_id(first) != envelope.message_id(second)


def test_a_result_id_follows_the_command_it_answers() -> None:
    # Given one result event, published in answer to two attempts of a command
    result = volume.DisksAllocated(plan="p", migration="m", vm="v", step="AllocateDisks")
    attempt1, attempt2 = "volume.allocate_disks.v1:aaaa", "volume.allocate_disks.v1:bbbb"

    # When it is wrapped for each cause (and twice for the first)
    first = envelope.wrap(result, "ferry/volume", cause=attempt1)[0].id
    again = envelope.wrap(result, "ferry/volume", cause=attempt1)[0].id
    retry = envelope.wrap(result, "ferry/volume", cause=attempt2)[0].id

    # Then a redelivery deduplicates, a retry's identical result is still stored
    assert first == again
    assert retry != first
    assert envelope.wrap(result, "ferry/volume")[0].id not in (first, retry)


def test_unknown_fields_are_ignored_unknown_types_rejected() -> None:
    # Given data from a newer producer with an extra field
    env, data = envelope.wrap(_progress(), "ferry/new")
    newer = data[:-1] + b',"future_field":42}'

    # When it is decoded
    _, decoded = envelope.unwrap(env.headers(), newer)

    # Then the extra field is ignored
    assert decoded == _progress()
    # but an unknown type or missing headers are clear errors
    headers = env.headers() | {"ce-type": "migration.teleport.v9"}
    with pytest.raises(UnknownMessageType, match="teleport"):
        envelope.unwrap(headers, data)
    with pytest.raises(UnknownMessageType, match="ce-id"):
        Envelope.from_headers({"ce-type": "x"})


def test_header_values_follow_the_nats_binding_encoding() -> None:
    # Given the binding's own example and a subject with every character it names
    # When they are encoded, Then the example matches section 3.1.3.2 to the letter
    assert envelope.encode_value("Euro \u20ac \U0001f600") == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert envelope.encode_value('a "b" 100%20') == "a%20%22b%22%20100%2520"
    # and printable ASCII other than space, quote and percent stays as it is
    assert envelope.encode_value("p/m/v:1;x=y&z?#~") == "p/m/v:1;x=y&z?#~"


def test_header_values_decode_as_the_binding_says() -> None:
    # Lower-case hex and needless encoding are accepted
    assert envelope.decode_value("%e2%82%ac%41") == "\u20acA"
    # a double-quoted value from an older writer is unquoted before percent-decoding
    assert envelope.decode_value('"a \\"b\\" %25"') == 'a "b" %'
    # and bytes that are not UTF-8 (an overlong space) are rejected
    with pytest.raises(UnknownMessageType, match="UTF-8"):
        envelope.decode_value("%C0%A0")


def test_envelope_headers_round_trip_hostile_subjects() -> None:
    # Given a message about a VM whose name has spaces, a percent and non-ASCII
    message = migration.VmCanceled(plan="p", migration="m 1", vm="Win Server 100%20ok.ova ü")
    env, data = envelope.wrap(message, "ferry/test")

    # When its headers are written and read back (names in any case)
    headers = {k.upper(): v for k, v in env.headers().items()}
    back, _ = envelope.unwrap(headers, data)

    # Then the subject is unchanged and datacontenttype travels as ce-datacontenttype
    assert back == env and back.subject == "p/m 1/Win Server 100%20ok.ova ü"
    assert env.headers()["ce-datacontenttype"] == "application/json"
    assert "Content-Type" not in env.headers()


def test_headers_written_before_the_binding_was_followed_read_raw() -> None:
    # Given headers as Ferry wrote them before: raw values, Content-Type, no ce-datacontenttype
    old = {
        "ce-id": "x:1",
        "ce-source": "ferry/test",
        "ce-type": "migration.vm_canceled.v1",
        "ce-subject": "p/m/Win Server 100%20ok.ova",
        "ce-time": "2026-01-01T00:00:00Z",
        "ce-specversion": "1.0",
        "Content-Type": "application/json",
    }

    # When they are read, Then the values are taken as they are (no decoding round)
    env = Envelope.from_headers(old)
    assert env.subject == "p/m/Win Server 100%20ok.ova"
    assert env.datacontenttype == "application/json"


def test_the_fast_paths_answer_as_the_binding_says() -> None:
    # Given every character of the first planes, alone and between safe ones
    # (encode_value skips quoting for values with nothing to escape; from_headers
    # skips lower-casing names when Ferry's own are all there)
    from urllib.parse import quote

    for code in range(0x3000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue  # lone surrogates are no text
        for value in (char, f"a{char}b"):
            # Then the value is written exactly as quoting it would, and read back
            expected = quote(value, safe=envelope._SAFE, encoding="utf-8", errors="strict")
            assert envelope.encode_value(value) == expected, hex(code)
            assert envelope.decode_value(expected) == value

    # And headers named as Ferry writes them read as the same names in other cases
    env, _ = envelope.wrap(_progress(), "ferry/ä b%")
    written = env.headers()
    assert Envelope.from_headers(written) == env
    assert Envelope.from_headers({k.title(): v for k, v in written.items()}) == env
    mixed = dict(written)
    mixed["CE-SUBJECT"] = mixed.pop("ce-subject")
    assert Envelope.from_headers(mixed) == env


def test_the_time_attribute_is_rfc3339_utc_to_the_microsecond_and_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given clock readings inside one second and across the next (the date part is
    # formatted once a second)
    second = 1_796_675_000
    nanos = [999_999_999, 1_000, 1_000_000_000]  # .999999, .000001, the next second
    readings = iter(second * 1_000_000_000 + n for n in nanos)
    monkeypatch.setattr(envelope.time, "time_ns", lambda: next(readings))
    # Then each stamp is the reading's own time, as datetime's isoformat writes it
    stamps = [envelope.now() for _ in nanos]
    expected = [
        datetime.fromtimestamp(second + n // 1_000_000_000, UTC)
        .replace(microsecond=n % 1_000_000_000 // 1000)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
        for n in nanos
    ]
    assert stamps == expected
