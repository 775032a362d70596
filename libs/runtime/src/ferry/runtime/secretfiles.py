"""Reading a secret from a file, as ssh reads a private key: only if it is private.

A credentials file that others can read is a secret already leaked; carrying on
would hide that. So a file (or the file a symlink leads to, as in a Kubernetes
Secret volume) with any group or world permission is refused with an error that
names the file, its mode and the fix. A Kubernetes Secret mounted for a non-root
user with ``fsGroup`` is group-readable by construction; ``allow_group_read``
admits exactly that (read, never write), and nothing for the world.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from ferry.bus import Credentials


class InsecureSecretFile(PermissionError):
    """A secret file readable or writable by others than its owner."""


def check_private(path: Path, *, allow_group_read: bool = False) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    allowed = stat.S_IRGRP if allow_group_read else 0
    if mode & 0o077 & ~allowed:
        raise InsecureSecretFile(
            f"secret file {path} has mode {mode:04o}: it must not be accessible to group or "
            f"others (chmod {'0640' if allow_group_read else '0600'} {path})"
        )


def read_private(path: Path, *, allow_group_read: bool = False) -> str:
    """The text of ``path``, refused when others may read it (see the module's doc)."""
    check_private(path, allow_group_read=allow_group_read)
    return path.read_text()


def credentials(path: Path, *, allow_group_read: bool = False) -> Credentials:
    """A NATS identity from its credentials file: ``{"user": …, "password": …}``."""
    try:
        document = json.loads(read_private(path, allow_group_read=allow_group_read))
        return Credentials(str(document["user"]), str(document["password"]))
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"credentials file {path} is not a JSON object with user and password"
        ) from None
