"""The one way a service opens the source a command names: Provider object, secret, factory.

A command names its provider (``SourceRef``) and never carries credentials.
The Provider object people applied (in the objects bucket) says where the
source is and which Secret holds its credentials; the secret is read here,
from the mounted secrets directory, handed to the provider factory and
nowhere else: it is never logged, put in an event, on a command line or in a
child's environment. When the object is not in the bucket (a command built by
hand, a test) the reference itself is the spec, without a secret.

It lives in the runtime because it joins two libraries that may not know each
other: the bus (the objects bucket) and the providers (the factory).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from ferry.bus import Bus, PermanentError
from ferry.proto import objects, subjects
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.providers.base import Provider
from ferry.runtime import secretfiles

OpenProvider = Callable[[SourceRef], Awaitable[Provider]]
"""What a service's handlers use to get a provider for a command's ``SourceRef``;
tests hand in their own."""


class ProvidersSettings(BaseModel):
    """Where the secrets of the Provider objects are mounted on this replica."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    secrets_dir: Path | None = Field(
        default=None,
        description="Where provider secrets are mounted: <secrets_dir>/<namespace>/<name>/<key>, "
        "one file per key (the layout of a Kubernetes Secret volume). Unset: "
        "<data_dir>/secrets. Values are never logged.",
    )
    allow_group_readable: bool = Field(
        default=False,
        description="Accept secret files readable by their group (a Secret volume mounted "
        "with fsGroup); files others may read are always refused.",
    )

    def root(self, data_dir: Path) -> Path:
        return self.secrets_dir or Path(data_dir) / "secrets"


@dataclass(frozen=True)
class Spec:
    """What the provider factory reads: type, url, and settings such as an OVA path."""

    type: ProviderType
    url: str = ""
    settings: Mapping[str, str] = field(default_factory=dict)


class SecretNotFound(PermanentError):
    """The Provider names a Secret that is not mounted here."""


class SecretStore(Protocol):
    def read(self, namespace: str, name: str) -> dict[str, str]: ...


class MountedSecrets:
    """Secrets as files: ``<root>/<namespace>/<name>/<key>`` holds one value.

    That is how Kubernetes mounts a Secret volume (``..data`` links included),
    so the same reader works in a pod and on one machine.
    """

    def __init__(self, root: Path, *, allow_group_read: bool = False) -> None:
        self.root = root
        self.allow_group_read = allow_group_read

    def read(self, namespace: str, name: str) -> dict[str, str]:
        folder = self.root / _component(namespace) / _component(name)
        if not folder.is_dir():
            raise SecretNotFound(f"secret {namespace}/{name} is not mounted on this replica")
        values: dict[str, str] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            try:
                text = secretfiles.read_private(entry, allow_group_read=self.allow_group_read)
            except secretfiles.InsecureSecretFile as error:
                raise PermanentError(str(error)) from None
            values[entry.name] = text.rstrip("\n")
        return values

    def stamp(self, namespace: str, name: str) -> tuple[tuple[str, int, int, int, int], ...]:
        """What tells a rotated secret from the one read before, without reading a value:
        per file, its name, inode, size, modification and change times (a Kubernetes
        Secret volume swaps in new files; a file rewritten in place gets new times)."""
        try:
            folder = self.root / _component(namespace) / _component(name)
            entries = sorted(folder.iterdir())
        except (OSError, PermanentError):
            return ()
        stamps = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat()  # follows a Secret volume's links to the current files
            except OSError:
                continue
            stamps.append((entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(stamps)


def _component(value: str) -> str:
    if not value or value in {".", ".."} or "/" in value or "\0" in value:
        raise PermanentError(f"invalid secret reference component {value!r}")
    return value


class Providers:
    """Resolves a ``SourceRef`` to a ready provider (Provider object + secret → factory).

    What is wrong with the stored object or its secret is a :class:`PermanentError`;
    the factory's own :class:`~ferry.providers.base.ProviderError` passes through
    unchanged, for each service to judge as it always has.
    """

    def __init__(self, bus: Bus | None, secrets: SecretStore) -> None:
        self._bus = bus
        self._secrets = secrets

    @classmethod
    def mounted(cls, bus: Bus | None, settings: ProvidersSettings, data_dir: Path) -> Providers:
        """Secrets read from the directory ``settings`` names (or ``<data_dir>/secrets``)."""
        return cls(
            bus,
            MountedSecrets(settings.root(data_dir), allow_group_read=settings.allow_group_readable),
        )

    async def open(self, ref: SourceRef) -> Provider:
        spec, secret_ref = await self._spec(ref)
        secret = self._secrets.read(*secret_ref) if secret_ref is not None else None
        return factory.create(spec, secret)

    async def __call__(self, ref: SourceRef) -> Provider:
        return await self.open(ref)

    async def version(self, name: str) -> object:
        """What a provider opened from Provider ``name`` was opened from: the stored object's
        revision (a new apply) and its mounted secret's files (rotated on disk, no apply);
        a holder of opened providers opens one anew when this changes."""
        if self._bus is None or not name:
            return None
        entry = await self._bus.kv(Bucket.OBJECTS, dict).get(subjects.object_key("Provider", name))
        if entry is None:
            return None
        stamp = getattr(self._secrets, "stamp", None)
        try:
            found = objects.from_document(dict(entry.value))
        except objects.ObjectError:
            return int(entry.revision), None
        secret = found.spec.secret if isinstance(found, objects.Provider) else None
        if secret is None or stamp is None:
            return int(entry.revision), None
        return int(entry.revision), stamp(secret.namespace or found.metadata.namespace, secret.name)

    async def _spec(self, ref: SourceRef) -> tuple[Spec, tuple[str, str] | None]:
        doc = await self._document(ref.provider)
        if doc is None:
            return Spec(type=ref.type, url=ref.url), None
        try:
            found = objects.from_document(doc)
        except objects.ObjectError as exc:
            raise PermanentError(f"stored Provider {ref.provider!r} is invalid: {exc}") from None
        if not isinstance(found, objects.Provider):
            raise PermanentError(f"object {ref.provider!r} is a {found.KIND}, not a Provider")
        spec = found.spec
        if spec.type != ref.type:
            raise PermanentError(
                f"provider {ref.provider!r} is of type {spec.type.value}, "
                f"the command says {ref.type.value}"
            )
        secret = None
        if spec.secret is not None:
            secret = (spec.secret.namespace or found.metadata.namespace, spec.secret.name)
        return Spec(type=spec.type, url=spec.url or ref.url, settings=dict(spec.settings)), secret

    async def _document(self, name: str) -> dict[str, object] | None:
        if self._bus is None or not name:
            return None
        entry = await self._bus.kv(Bucket.OBJECTS, dict).get(subjects.object_key("Provider", name))
        return None if entry is None else dict(entry.value)
