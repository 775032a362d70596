"""Subject tokens: any id becomes a stable, NATS-safe token; subjects parse back."""

from __future__ import annotations

import re

import pytest

from ferry.proto import subjects
from ferry.proto.subjects import Service

SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

NASTY = [
    "web01.example.com",
    "vm*",
    "a>b",
    "with space",
    "tab\there",
    "ünïcødé",
    "",
    "x" * 300,
    "vm-42",
    "42",
    "$SYS",
    "a/b\\c",
]


@pytest.mark.parametrize("value", NASTY)
def test_token_is_safe_stable_and_idempotent(value: str) -> None:
    # Given any id a user or provider may hand us
    # When it is turned into a subject token
    token = subjects.token(value)

    # Then it is safe, stable, and tokenising it again changes nothing
    assert SAFE.match(token)
    assert subjects.token(value) == token
    assert subjects.token(token) == token


def test_tokens_do_not_collide() -> None:
    # Given ids that sanitise to the same readable text
    values = ["a.b", "a b", "a*b", "a_b"]

    # Then their tokens still differ
    assert len({subjects.token(v) for v in values}) == len(values)


def test_safe_ids_are_kept_readable() -> None:
    assert subjects.token("vm-42") == "vm-42"
    assert subjects.token("web01.example").startswith("web01_example-")


def test_subjects_have_six_tokens_and_parse_back() -> None:
    # Given a command subject for an awkward VM name
    subject = subjects.command(Service.VOLUME, "copy_disks", "mig.1", "web01.example")

    # When it is parsed
    kind, service, name, mig, vm = subjects.parse(subject)

    # Then every part is where the wildcards expect it
    assert subject.count(".") == 5
    assert (kind, service, name) == ("cmd", Service.VOLUME, "copy_disks")
    assert (mig, vm) == (subjects.token("mig.1"), subjects.token("web01.example"))
    with pytest.raises(ValueError, match="not a Ferry message subject"):
        subjects.parse("foo.bar")


def test_kv_keys_are_valid_kv_keys() -> None:
    key = subjects.vm_key("m 1", "web01.example")
    assert re.match(r"^[-/_=.a-zA-Z0-9]+$", key) and key.count(".") == 1
