"""The objects people hand to Ferry: Provider, NetworkMap, StorageMap, Hook, Plan, Migration.

They read like the familiar KubeVirt-migration API (``apiVersion``, ``kind``,
``metadata``, ``spec``, ``status``) so that the same YAML works on the embedded
stack and, later, as custom resources in a cluster. They are pydantic models
rather than msgspec structs because people write them: unknown fields are
errors (a typo must not be silently ignored) and the errors name the path.

Secrets are only ever referenced (``secret: {name, namespace}``), never inline;
a Provider that carries anything that looks like a credential is refused.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ferry.proto import names, yamlload
from ferry.proto.inventory import ProviderType, VolumeMode
from ferry.proto.phases import MigrationPhase
from ferry.proto.pipeline import VmSummary
from ferry.proto.windows import Window

API_VERSION: Literal["ferry.dev/v1alpha1"] = "ferry.dev/v1alpha1"

_SECRET_WORDS = ("password", "passwd", "token", "secret", "privatekey", "apikey")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


class ObjectMeta(_Model):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str = ""
    creationTimestamp: datetime | None = None
    generation: int = 0

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, value: str) -> str:
        if not names.is_dns1123_subdomain(value):
            raise ValueError(
                f"{value!r} is not a DNS-1123 name (lower-case letters, digits, '-', '.')"
            )
        return value


class ObjectRef(_Model):
    """A reference to another Ferry object (or a Secret) by name."""

    name: str
    namespace: str = ""


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"] = "True"
    reason: str = ""
    message: str = ""
    lastTransitionTime: datetime | None = None


class FerryObjectBase(_Model):
    """What every Ferry object shares. Subclasses pin ``kind`` and type ``spec``."""

    apiVersion: Literal["ferry.dev/v1alpha1"] = API_VERSION
    metadata: ObjectMeta

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""

    @property
    def name(self) -> str:
        return self.metadata.name

    def refs(self) -> list[tuple[str, str, str]]:
        """(path, kind, name) of every object this one refers to, for apply's checks."""
        return []


# Provider --------------------------------------------------------------------


class ProviderSpec(_Model):
    type: ProviderType
    url: str = ""  # empty for OVA dirs given in settings, and for the local target
    secret: ObjectRef | None = None
    settings: dict[str, str] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _no_secret_inline(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            flat = key.lower().replace("_", "").replace("-", "")
            if any(word in flat for word in _SECRET_WORDS):
                raise ValueError(f"setting {key!r} looks like a credential: use spec.secret")
        return value

    @field_validator("url")
    @classmethod
    def _no_userinfo(cls, value: str) -> str:
        if re.match(r"^[a-z][a-z0-9+.-]*://[^/@]*:[^/@]*@", value):
            raise ValueError(
                "the URL holds credentials: put them in the secret referenced by spec.secret"
            )
        return value


class ProviderStatus(_Model):
    phase: str = ""
    conditions: list[Condition] = Field(default_factory=list)


class Provider(FerryObjectBase):
    kind: Literal["Provider"] = "Provider"
    spec: ProviderSpec
    status: ProviderStatus = Field(default_factory=ProviderStatus)

    KIND: ClassVar[str] = "Provider"
    PLURAL: ClassVar[str] = "providers"

    @property
    def is_local_target(self) -> bool:
        """A KubeVirt provider without a URL is the cluster (or local platform) Ferry runs on."""
        return self.spec.type == ProviderType.KUBEVIRT and not self.spec.url


# Maps ------------------------------------------------------------------------


class ProviderPair(_Model):
    source: ObjectRef
    destination: ObjectRef


class SourceRefSelector(_Model):
    """Names a source network or storage by id or by name (either is enough)."""

    id: str = ""
    name: str = ""
    type: str = ""

    @model_validator(mode="after")
    def _one(self) -> SourceRefSelector:
        if not (self.id or self.name or self.type):
            raise ValueError("give id or name")
        return self

    def matches(self, key: str) -> bool:
        """Whether ``key`` (a source network's or storage's id or name) is the one named.

        An empty key never matches: a disk whose storage the source did not
        report is not on whatever storage a map happens to name by name alone.
        """
        return bool(key) and key in (self.id, self.name)


class NetworkDestination(_Model):
    type: Literal["pod", "multus", "ignored"] = "pod"
    name: str = ""
    namespace: str = ""


class StorageDestination(_Model):
    storageClass: str
    volumeMode: VolumeMode = VolumeMode.FILESYSTEM
    accessMode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = "ReadWriteOnce"
    format: Literal["raw", "qcow2"] = "raw"


Destination = TypeVar("Destination", NetworkDestination, StorageDestination)


class MapPair(_Model, Generic[Destination]):
    """One source network or storage and where it goes on the target."""

    source: SourceRefSelector
    destination: Destination

    @classmethod
    def model_parametrized_name(cls, params: tuple[Any, ...]) -> str:
        # NetworkPair, StoragePair: the names validation errors have always shown.
        name: str = params[0].__name__
        return name.removesuffix("Destination") + "Pair"


class MapSpec(_Model, Generic[Destination]):
    provider: ProviderPair
    map: list[MapPair[Destination]] = Field(default_factory=list)

    @classmethod
    def model_parametrized_name(cls, params: tuple[Any, ...]) -> str:
        name: str = params[0].__name__
        return name.removesuffix("Destination") + "MapSpec"


class PairMap(FerryObjectBase, Generic[Destination]):
    """A NetworkMap or a StorageMap: source networks or storages paired with targets."""

    kind: str  # each kind pins it; declared here so documents keep kind before spec
    spec: MapSpec[Destination]
    status: ProviderStatus = Field(default_factory=ProviderStatus)

    def refs(self) -> list[tuple[str, str, str]]:
        return _provider_refs(self.spec.provider)

    def find(self, key: str) -> Destination | None:
        return next((p.destination for p in self.spec.map if p.source.matches(key)), None)


class NetworkMap(PairMap[NetworkDestination]):
    kind: Literal["NetworkMap"] = "NetworkMap"

    KIND: ClassVar[str] = "NetworkMap"
    PLURAL: ClassVar[str] = "networkmaps"


class StorageMap(PairMap[StorageDestination]):
    kind: Literal["StorageMap"] = "StorageMap"

    KIND: ClassVar[str] = "StorageMap"
    PLURAL: ClassVar[str] = "storagemaps"


def _provider_refs(pair: ProviderPair) -> list[tuple[str, str, str]]:
    return [
        ("spec.provider.source", "Provider", pair.source.name),
        ("spec.provider.destination", "Provider", pair.destination.name),
    ]


# Hook ------------------------------------------------------------------------


class HookSpec(_Model):
    """A pre- or post-migration hook.

    On a cluster ``image`` (+ ``playbook``) runs as a Job; on the local platform
    ``command`` runs as a child process with the plan, migration and VM in its
    environment. ``deadline`` bounds either, in seconds.
    """

    image: str = ""
    playbook: str = ""
    command: list[str] = Field(default_factory=list)
    serviceAccount: str = ""
    deadline: int = Field(default=600, ge=1)

    @model_validator(mode="after")
    def _something(self) -> HookSpec:
        if not (self.image or self.command):
            raise ValueError("give image (cluster) or command (local)")
        return self


class Hook(FerryObjectBase):
    kind: Literal["Hook"] = "Hook"
    spec: HookSpec
    status: ProviderStatus = Field(default_factory=ProviderStatus)

    KIND: ClassVar[str] = "Hook"
    PLURAL: ClassVar[str] = "hooks"


# Plan ------------------------------------------------------------------------


class HookStep(StrEnum):
    PRE = "PreHook"
    POST = "PostHook"


class PlanHook(_Model):
    hook: ObjectRef
    step: HookStep


class PlanVm(_Model):
    """A VM of the plan, by provider id or by name."""

    id: str = ""
    name: str = ""
    targetName: str = ""
    hooks: list[PlanHook] = Field(default_factory=list)
    deploymentOption: str = ""  # OVF: the configuration to migrate ("" = the default one)

    @model_validator(mode="after")
    def _one(self) -> PlanVm:
        if not (self.id or self.name):
            raise ValueError("give id or name")
        return self

    @property
    def key(self) -> str:
        return self.id or self.name


class MapRefs(_Model):
    network: ObjectRef
    storage: ObjectRef


class PlanSpec(_Model):
    provider: ProviderPair
    map: MapRefs
    vms: list[PlanVm] = Field(min_length=1)
    targetNamespace: str = "default"
    warm: bool = False
    targetPowerState: Literal["on", "off", "auto"] = "auto"
    maxInFlight: int = Field(default=20, ge=1)
    maxInFlightPerHost: int = Field(default=10, ge=1)
    priority: int = 0  # across plans sharing a Budget: higher starts first
    window: Window | None = None  # daily hours (UTC) its VMs may start and move on
    precopyIntervalSeconds: int = Field(default=3600, ge=1)
    maxPrecopies: int = Field(default=50, ge=1)
    skipGuestConversion: bool = False  # raw copy: disks copied unchanged, no virt-v2v
    description: str = ""

    @field_validator("targetNamespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        # A namespace becomes a Kubernetes name and, locally, a directory: ``../..``
        # or ``/etc`` must never reach either.
        if not names.is_dns1123_label(value):
            raise ValueError(f"{value!r} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)")
        return value


class PlanStatus(_Model):
    phase: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    migrations: list[str] = Field(default_factory=list)
    succeeded: list[str] = Field(default_factory=list)  # VM keys that already migrated
    waiting: dict[str, str] = Field(default_factory=dict)  # queued VM -> what holds it (some)
    waitingCount: int = 0


class Plan(FerryObjectBase):
    kind: Literal["Plan"] = "Plan"
    spec: PlanSpec
    status: PlanStatus = Field(default_factory=PlanStatus)

    KIND: ClassVar[str] = "Plan"
    PLURAL: ClassVar[str] = "plans"

    def refs(self) -> list[tuple[str, str, str]]:
        refs = _provider_refs(self.spec.provider)
        refs.append(("spec.map.network", "NetworkMap", self.spec.map.network.name))
        refs.append(("spec.map.storage", "StorageMap", self.spec.map.storage.name))
        for i, vm in enumerate(self.spec.vms):
            for j, hook in enumerate(vm.hooks):
                refs.append((f"spec.vms[{i}].hooks[{j}].hook", "Hook", hook.hook.name))
        return refs


# Migration -------------------------------------------------------------------


class MigrationSpec(_Model):
    plan: ObjectRef
    cancel: list[SourceRefSelector] = Field(default_factory=list)
    cutover: datetime | None = None


class MigrationStatus(_Model):
    phase: MigrationPhase = MigrationPhase.NOT_STARTED
    started: datetime | None = None
    completed: datetime | None = None
    reasons: dict[str, list[str]] = Field(default_factory=dict)  # preflight, per VM
    warnings: dict[str, list[str]] = Field(default_factory=dict)  # preflight, not blocking
    vms: list[VmSummary] = Field(default_factory=list)  # the per-VM pipeline (operator mode)
    # Of ``vms``, how many are shown in brief (no steps, disks, rounds) and how many are
    # left out, so the object stays under the cluster's size limit (etcd's 1.5 MiB).
    vmsBrief: int = 0
    vmsOmitted: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    estimate: str = ""  # ferry.proto.estimate.PlanEstimate as JSON, made when it was admitted


class Migration(FerryObjectBase):
    kind: Literal["Migration"] = "Migration"
    spec: MigrationSpec
    status: MigrationStatus = Field(default_factory=MigrationStatus)

    KIND: ClassVar[str] = "Migration"
    PLURAL: ClassVar[str] = "migrations"

    def refs(self) -> list[tuple[str, str, str]]:
        return [("spec.plan", "Plan", self.spec.plan.name)]


FerryObject = Annotated[
    Provider | NetworkMap | StorageMap | Hook | Plan | Migration, Field(discriminator="kind")
]
KINDS: dict[str, type[FerryObjectBase]] = {
    cls.KIND: cls for cls in (Provider, NetworkMap, StorageMap, Hook, Plan, Migration)
}
BY_PLURAL: dict[str, type[FerryObjectBase]] = {cls.PLURAL: cls for cls in KINDS.values()}

Kind = TypeVar("Kind", bound=type[FerryObjectBase])


def register(cls: Kind) -> Kind:
    """Add a kind kept in a module of its own (``ferry.proto.budget``) to the ones parsed."""
    KINDS[cls.KIND] = cls
    BY_PLURAL[cls.PLURAL] = cls
    return cls


# Reading YAML ----------------------------------------------------------------


class ObjectError(ValueError):
    """One line: the file, where in it, and what is wrong."""

    def __init__(self, source: str, where: str, problem: str) -> None:
        self.source, self.where, self.problem = source, where, problem
        super().__init__(f"{source}: {where}: {problem}" if where else f"{source}: {problem}")


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_object(doc: Any, source: str = "<input>", index: int = 0) -> FerryObjectBase:
    """Validate one decoded document; raise :class:`ObjectError` naming the path."""
    where = f"document {index + 1}"
    if not isinstance(doc, dict):
        raise ObjectError(source, where, "expected a mapping with apiVersion, kind, metadata, spec")
    kind = doc.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ObjectError(
            source, f"{where}: kind", f"unknown kind {kind!r} (one of {', '.join(KINDS)})"
        )
    name = (
        doc.get("metadata", {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    )
    where = f"{where} ({kind} {name})"
    api = doc.get("apiVersion")
    if api != API_VERSION:
        raise ObjectError(source, f"{where}: apiVersion", f"expected {API_VERSION!r}, got {api!r}")
    try:
        return cls.model_validate(doc)
    except ValidationError as err:
        # Every problem, one per line: fixing a file one error per run wastes the user's time.
        lines = []
        for problem in err.errors():
            text = "unknown field" if problem["type"] == "extra_forbidden" else str(problem["msg"])
            lines.append((f"{where}: {_loc(problem['loc'])}", text))
        (first_where, first), rest = lines[0], lines[1:]
        more = "".join(f"\n{source}: {w}: {p}" for w, p in rest)
        raise ObjectError(source, first_where, first + more) from None


def load_documents(text: str, source: str = "<input>") -> list[FerryObjectBase]:
    """Parse multi-document YAML into objects; the first problem raises :class:`ObjectError`."""
    try:
        docs = [d for d in yamlload.load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ObjectError(source, where, f"invalid YAML: {problem}") from None
    if not docs:
        raise ObjectError(source, "", "no objects in the file")
    return [parse_object(doc, source, i) for i, doc in enumerate(docs)]


def to_document(obj: FerryObjectBase) -> dict[str, Any]:
    """The object as plain data (JSON/YAML-ready), without empty status noise."""
    return obj.model_dump(mode="json", exclude_none=True)


def from_document(doc: dict[str, Any]) -> FerryObjectBase:
    return parse_object(doc, source="stored object")


# Kinds declared in modules of their own register themselves when imported: import
# them here, once this module is complete, so that every reader of objects knows them.
from ferry.proto import budget as _budget  # noqa: E402, F401
