"""Who may say what on the bus: one NATS identity per service, the CLI, and an auditor.

A bus anyone can publish to lets anyone drive a migration, and a service that can
publish anywhere can forge another's results. So ``ferry up`` gives every process
its own user with the least it needs, and the server refuses anonymous clients:

* a **service** consumes only its own command queue (its durable pull consumer,
  its acks), publishes only its own events and dead letters (the controller also
  the other services' commands), and uses only the buckets it needs;
* the **CLI** publishes only the controller's commands and writes the objects and
  cancel buckets; it reads state and the event stream;
* the **audit** identity reads the event stream and nothing else (for a console).

Replies travel on a per-identity inbox prefix (``_INBOX_<identity>``), so no
identity can read another's replies. JetStream's API is reached through
``$JS.API.…`` subjects, so those are granted per stream, not as a whole.

Credentials are a small JSON file per identity (user and password), mode 0600 in a
0700 folder, read by the process from a file named in ``FERRY_NATS__CREDENTIALS_FILE``:
never from its command line or a plain environment value. They are generated once
and kept, so a restarted stack keeps its users. ``ferry up`` keeps them in one
folder; containers (docker compose, the chart's Secrets) get one folder per identity
from :func:`split` (``python -m ferry.runtime.stack.identities --out DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from ferry.bus import Credentials
from ferry.proto import subjects
from ferry.proto.subjects import Bucket, Service

CLI = "cli"
AUDIT = "audit"

# What each service reads and writes of the buckets (conversion's leases, the
# controller's state, everyone's view of providers and cancellations).
_READS: dict[str, tuple[Bucket, ...]] = {
    Service.CONTROLLER.value: (Bucket.OBJECTS, Bucket.VMS, Bucket.CANCEL, Bucket.LOCKS),
    Service.VOLUME.value: (Bucket.OBJECTS, Bucket.CANCEL, Bucket.VMS, Bucket.LOCKS),
    Service.CONVERSION.value: (Bucket.OBJECTS, Bucket.CANCEL, Bucket.VMS, Bucket.LOCKS),
    Service.VM.value: (Bucket.OBJECTS, Bucket.CANCEL, Bucket.VMS, Bucket.LOCKS),
    # The CLI reads the bandwidth budgets' shared rates (``ferry describe budget``).
    CLI: (Bucket.OBJECTS, Bucket.VMS, Bucket.CANCEL, Bucket.LOCKS),
}
_WRITES: dict[str, tuple[Bucket, ...]] = {
    # The controller's replicas hold their active/standby lease in LOCKS.
    Service.CONTROLLER.value: (Bucket.OBJECTS, Bucket.VMS, Bucket.CANCEL, Bucket.LOCKS),
    Service.CONVERSION.value: (Bucket.LOCKS,),
    # The volume-service's copies take grants from the bandwidth budgets' rates there.
    Service.VOLUME.value: (Bucket.LOCKS,),
    CLI: (Bucket.OBJECTS, Bucket.CANCEL),
}
# Whose entries each identity removes for good (the controller: ended migrations' VMs).
_REMOVES: dict[str, tuple[Bucket, ...]] = {Service.CONTROLLER.value: (Bucket.VMS,)}
# Which services' commands each identity sends.
_SENDS: dict[str, tuple[Service, ...]] = {
    Service.CONTROLLER.value: (Service.VOLUME, Service.CONVERSION, Service.VM),
    CLI: (Service.CONTROLLER,),
}


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _stream_use(stream: str, *, declare: bool) -> list[str]:
    """Read a stream with ephemeral (ordered) consumers; optionally declare it."""
    api = "$JS.API"
    found = [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.*.>",
        f"{api}.CONSUMER.INFO.{stream}.*",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"$JS.FC.{stream}.>",
    ]
    if declare:
        found += [f"{api}.STREAM.CREATE.{stream}", f"{api}.STREAM.UPDATE.{stream}"]
    return found


def _durable(stream: str, consumer: str) -> list[str]:
    """Own a durable pull consumer: create it, fetch from it, ack its messages."""
    api = "$JS.API"
    return [
        f"{api}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{api}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{api}.CONSUMER.INFO.{stream}.{consumer}",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def _buckets(identity: str, *, declare: bool) -> list[str]:
    found: list[str] = []
    for bucket in _READS.get(identity, ()):
        found += _stream_use(f"KV_{bucket.value}", declare=declare)
    for bucket in _WRITES.get(identity, ()):
        found.append(f"$KV.{bucket.value}.>")
    for bucket in _REMOVES.get(identity, ()):
        found.append(f"$JS.API.STREAM.PURGE.KV_{bucket.value}")
    return found


def permissions(identity: str) -> Permissions:
    """The subjects ``identity`` may publish to and subscribe to; nothing else."""
    inbox = f"{Credentials(identity, '').inbox_prefix}.>"
    if identity == AUDIT:
        return Permissions(
            publish=("$JS.API.INFO", *_stream_use(subjects.EVENTS_STREAM, declare=False)),
            subscribe=(inbox,),
        )
    publish = ["$JS.API.INFO"]
    publish += _buckets(identity, declare=identity != CLI)
    for service in _SENDS.get(identity, ()):
        publish.append(subjects.commands_of(service))
        publish += [f"$JS.API.STREAM.INFO.{subjects.command_stream(service)}"]
    if identity == CLI:
        publish += _stream_use(subjects.EVENTS_STREAM, declare=False)
        return Permissions(publish=tuple(publish), subscribe=(inbox,))
    service = Service(identity)
    own = subjects.command_stream(service)
    publish += [
        f"ferry.evt.{service.value}.>",
        f"ferry.dlq.{service.value}.>",
        *_stream_use(subjects.EVENTS_STREAM, declare=True),
        *_stream_use(subjects.DEAD_LETTER_STREAM, declare=True),
        *_stream_use(own, declare=True),
        *_durable(own, subjects.command_consumer(service)),
    ]
    if service is Service.CONTROLLER:
        publish += _durable(subjects.EVENTS_STREAM, f"{service.value}-events")
    return Permissions(publish=tuple(publish), subscribe=(inbox,))


IDENTITIES: tuple[str, ...] = (*(s.value for s in Service), CLI, AUDIT)


def credentials_file(folder: Path, identity: str) -> Path:
    return folder / f"{identity}.json"


def _private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != 0o700:  # (a read-only image's is already)
        folder.chmod(0o700)


def _load_or_make(path: Path, identity: str) -> Credentials:
    """The identity's credentials from ``path``, written there (0600) the first time."""
    if path.exists():
        document = json.loads(path.read_text())
        return Credentials(document["user"], document["password"])
    creds = Credentials(identity, secrets.token_urlsafe(32))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps({"user": creds.user, "password": creds.password}) + "\n")
    return creds


def ensure(folder: Path) -> dict[str, Credentials]:
    """Every identity's credentials under ``folder``, generated the first time (0600)."""
    _private_dir(folder)
    return {i: _load_or_make(credentials_file(folder, i), i) for i in IDENTITIES}


SERVER = "server"
"""``split``'s folder for the server's ``authorization.conf``."""


def split(root: Path) -> dict[str, Credentials]:
    """The layout for containers (docker compose, ``ferry identities``): one private
    folder per identity holding its ``credentials.json`` (0600), so each container
    mounts its own folder and no other identity's, and ``server/authorization.conf``
    (0600) for the nats-server to ``include``. Kept when present, made otherwise."""
    _private_dir(root)
    found: dict[str, Credentials] = {}
    for identity in IDENTITIES:
        _private_dir(root / identity)
        found[identity] = _load_or_make(root / identity / "credentials.json", identity)
    _private_dir(root / SERVER)
    path = root / SERVER / "authorization.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(authorization(found))
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m ferry.runtime.stack.identities --out DIR``: :func:`split` into DIR."""
    parser = argparse.ArgumentParser(
        prog="python -m ferry.runtime.stack.identities",
        description="Write every Ferry NATS identity (one folder each) and the server's "
        "authorization block; existing credentials are kept.",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    made = split(args.out)
    print(
        f"{len(made)} identities in {args.out}; server: {args.out / SERVER / 'authorization.conf'}"
    )
    return 0


def _quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid quoted string in nats.conf


def authorization(users: dict[str, Credentials]) -> str:
    """The ``authorization`` block of nats.conf: these users only, no anonymous access."""
    lines = ["authorization {", "  users = ["]
    for identity, creds in users.items():
        allowed = permissions(identity)
        pub = ", ".join(_quoted(s) for s in allowed.publish)
        sub = ", ".join(_quoted(s) for s in allowed.subscribe)
        lines += [
            f"    {{user: {_quoted(creds.user)}, password: {_quoted(creds.password)},",
            f"     permissions: {{publish: {{allow: [{pub}]}}, subscribe: {{allow: [{sub}]}}}}}}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
