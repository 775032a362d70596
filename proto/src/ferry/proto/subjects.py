"""Every subject, stream, consumer and bucket name Ferry uses, built by functions.

Subjects read general to specific so that wildcards select naturally::

    ferry.cmd.<service>.<name>.<migration>.<vm>   commands (one work queue per service)
    ferry.evt.<service>.<name>.<migration>.<vm>   events (the audit stream)
    ferry.dlq.<service>.<name>.<migration>.<vm>   dead letters

Ids that come from users or providers (VM names such as ``web01.example``) may
hold characters that NATS treats as separators or wildcards; :func:`token` maps
any string to a stable, subject-safe token.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum

PREFIX = "ferry"

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class Service(StrEnum):
    """The four processes, by the token they use in subjects."""

    CONTROLLER = "controller"
    VOLUME = "volume"
    CONVERSION = "conversion"
    VM = "vm"


def token(value: str) -> str:
    """Return ``value`` if it is a safe subject token, else a stable safe form.

    The safe form keeps the readable characters and appends a short digest of the
    original, so two different ids never collide after sanitising.
    """
    if _SAFE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    readable = _UNSAFE_CHARS.sub("_", value)[:48] or "x"
    return f"{readable}-{digest}"


def _join(*parts: str) -> str:
    return ".".join(parts)


def command(service: Service, name: str, migration: str, vm: str) -> str:
    return _join(PREFIX, "cmd", service.value, name, token(migration), token(vm))


def event(service: Service, name: str, migration: str, vm: str) -> str:
    return _join(PREFIX, "evt", service.value, name, token(migration), token(vm))


def dead_letter(service: Service, name: str, migration: str, vm: str) -> str:
    return _join(PREFIX, "dlq", service.value, name, token(migration), token(vm))


def commands_of(service: Service) -> str:
    """Wildcard for every command a service consumes."""
    return _join(PREFIX, "cmd", service.value, ">")


def all_commands() -> str:
    return _join(PREFIX, "cmd", ">")


def all_events() -> str:
    return _join(PREFIX, "evt", ">")


def events_of(service: Service | None = None, migration: str | None = None) -> str:
    """Wildcard over the audit stream, optionally narrowed to a service or migration."""
    svc = service.value if service else "*"
    if migration is None:
        return _join(PREFIX, "evt", svc, ">")
    return _join(PREFIX, "evt", svc, "*", token(migration), ">")


def events_named(service: Service, name: str) -> str:
    """Wildcard for one kind of event of a service, whatever migration and VM."""
    return _join(PREFIX, "evt", service.value, name, ">")


def all_dead_letters() -> str:
    return _join(PREFIX, "dlq", ">")


def parse(subject: str) -> tuple[str, Service, str, str, str]:
    """Split a command/event/dlq subject into (kind, service, name, migration, vm)."""
    parts = subject.split(".")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise ValueError(f"not a Ferry message subject: {subject!r}")
    return parts[1], Service(parts[2]), parts[3], parts[4], parts[5]


# Streams -------------------------------------------------------------------

EVENTS_STREAM = "FERRY_EVENTS"
DEAD_LETTER_STREAM = "FERRY_DLQ"


def command_stream(service: Service) -> str:
    return f"FERRY_CMD_{service.value.upper()}"


def command_consumer(service: Service) -> str:
    """The one durable pull consumer that every replica of a service shares."""
    return f"{service.value}-workers"


# Key-value buckets -----------------------------------------------------------


class Bucket(StrEnum):
    """Current state, kept in JetStream key-value buckets."""

    OBJECTS = "ferry-objects"  # Providers, maps, plans, migrations as applied by users
    VMS = "ferry-vms"  # per-VM migration state (phase, steps, progress), CAS-updated
    CANCEL = "ferry-cancel"  # cancellation requests, watched by every service
    LOCKS = "ferry-locks"  # short leases, e.g. one conversion per VM at a time


def vm_key(migration: str, vm: str) -> str:
    return f"{token(migration)}.{token(vm)}"


def object_key(kind: str, name: str) -> str:
    return f"{kind.lower()}.{token(name)}"
