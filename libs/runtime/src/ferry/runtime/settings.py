"""Settings every service shares, read from ``FERRY_…`` environment variables.

Groups nest with ``__``: ``FERRY_NATS__URL``, ``FERRY_HTTP__PORT``,
``FERRY_WORKERS__CONCURRENCY``; top-level fields stand alone (``FERRY_DATA_DIR``).
The Helm chart's ``settings:`` block uses the same names, so a value documented
here is the value to set there. Each service extends :class:`ServiceSettings`
with its own fields; pydantic turns a bad value into an error that names it. The
target platform's group (``FERRY_PLATFORM__KIND``, ``FERRY_PLATFORM__LOCAL__…``,
``FERRY_PLATFORM__KUBERNETES__…``) is declared by ``ferry.platform.settings`` and
added by the services that use a platform: this library does not import it.
"""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ferry.bus import Credentials, topology
from ferry.runtime import secretfiles


class _Group(BaseModel):
    """A settings group: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class NatsSettings(_Group):
    """Where the bus is."""

    url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS server URL. A user and password in it are never logged; in "
        "Kubernetes, set it from a Secret.",
    )
    credentials_file: Path | None = Field(
        default=None,
        description="File holding this process's NATS identity as JSON {user, password} "
        "(`ferry up` writes one per service; in Kubernetes, a mounted Secret). Read from "
        "the file only, refused if group or others may access it. Unset: anonymous.",
    )
    allow_group_readable_credentials: bool = Field(
        default=False,
        description="Accept a group-readable credentials file (a Kubernetes Secret mounted "
        "with fsGroup for a non-root user); world access is always refused.",
    )

    tls_ca_file: Path | None = Field(
        default=None,
        description="CA certificate (PEM) the NATS server's certificate must verify "
        "against; set, the connection is TLS (`ferry up --tls` writes "
        "<data>/nats/tls/ca.pem). Unset: plain, unless the URL says tls://.",
    )

    @field_validator("tls_ca_file", "credentials_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # the chart's way of leaving it unset

    def tls(self) -> ssl.SSLContext | None:
        """A client TLS context trusting only ``tls_ca_file`` (None: no CA configured)."""
        if self.tls_ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls_ca_file))

    def credentials(self) -> Credentials | None:
        """This process's NATS identity, read from its file (None: anonymous)."""
        if self.credentials_file is None:
            return None
        return secretfiles.credentials(
            self.credentials_file, allow_group_read=self.allow_group_readable_credentials
        )


class HttpSettings(_Group):
    """The per-service HTTP endpoint: /metrics, /healthz, /readyz."""

    host: str = Field(
        # Loopback unless configured: /metrics tells anyone who can reach it what runs.
        # The chart sets 0.0.0.0 so that probes and Prometheus reach the pod.
        default="127.0.0.1",
        description="Address the health and metrics server binds to (the chart: 0.0.0.0).",
    )
    port: int = Field(
        default=8080, ge=0, le=65535, description="Port of the health and metrics server."
    )
    loop_stall_seconds: float = Field(
        default=10.0,
        gt=0,
        description="/healthz fails when the event loop has not ticked for this long.",
    )


class WorkersSettings(_Group):
    """How much work one replica takes on at once."""

    concurrency: int = Field(
        default=4, ge=1, description="Messages handled in parallel by one replica (across VMs)."
    )
    grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long in-flight handlers may run before their messages are "
        "handed back to another replica.",
    )


class BusSettings(_Group):
    """The JetStream topology each service declares (idempotently) at start-up."""

    events_max_age_seconds: float = Field(
        default=30 * 24 * 3600, gt=0, description="How long the audit stream keeps events."
    )
    events_max_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="Size cap of the audit stream (bytes); the oldest events go first. "
        "JetStream reserves it from the server's store.",
    )
    dead_letters_max_age_seconds: float = Field(
        default=30 * 24 * 3600,
        gt=0,
        description="How long the dead-letter stream keeps a given-up command.",
    )
    dead_letters_max_bytes: int = Field(
        default=1 << 28,
        gt=0,
        description="Size cap of the dead-letter stream (bytes); the oldest letters go first.",
    )
    duplicate_window_seconds: float = Field(
        default=120, gt=0, description="Window in which a re-published Nats-Msg-Id is dropped."
    )
    ack_wait_seconds: float = Field(
        default=30,
        gt=0,
        description="Redelivery timeout of a command; running handlers extend it every third.",
    )
    max_deliver: int = Field(
        default=5, ge=1, description="Deliveries before a failing command is dead-lettered."
    )
    storage: Literal["file", "memory"] = Field(
        default="file", description="JetStream storage of streams and buckets."
    )
    replicas: int = Field(
        default=1, ge=1, le=5, description="Stream replicas (3 on a clustered NATS)."
    )
    publish_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a publish is retried (NATS down, no stream answering) before "
        "it fails.",
    )
    ledger_dir: Path | None = Field(
        default=None,
        description="When set, every acknowledged publish is appended to a file per process "
        "here (ferry.bus.ledger): how fault tests and the chaos run count effects. "
        "Empty: off.",
    )

    @field_validator("ledger_dir", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value

    def topology(self) -> topology.TopologySettings:
        """The bus library's view of these settings."""
        return topology.TopologySettings(
            events_max_age_seconds=self.events_max_age_seconds,
            events_max_bytes=self.events_max_bytes,
            dead_letters_max_age_seconds=self.dead_letters_max_age_seconds,
            dead_letters_max_bytes=self.dead_letters_max_bytes,
            duplicate_window_seconds=self.duplicate_window_seconds,
            ack_wait_seconds=self.ack_wait_seconds,
            max_deliver=self.max_deliver,
            storage=self.storage,
            replicas=self.replicas,
        )


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class LogSettings(_Group):
    """What the service writes to stderr."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level written."
    )
    format: LogFormat = Field(
        default=LogFormat.JSON,
        description="json: one object per line for log collectors; text: for people.",
    )


class ServiceSettings(BaseSettings):
    """What every Ferry service reads at start-up; services add their own fields."""

    model_config = SettingsConfigDict(
        env_prefix="FERRY_",
        env_nested_delimiter="__",
        extra="ignore",  # other services' FERRY_ variables share the environment
        frozen=True,
        use_attribute_docstrings=True,
    )

    data_dir: Path = Field(
        default=Path(".ferry"),
        description="Where the local platform keeps volumes, manifests and logs.",
    )
    nats: NatsSettings = Field(default_factory=NatsSettings, description=NatsSettings.__doc__)
    http: HttpSettings = Field(default_factory=HttpSettings, description=HttpSettings.__doc__)
    workers: WorkersSettings = Field(
        default_factory=WorkersSettings, description=WorkersSettings.__doc__
    )
    bus: BusSettings = Field(default_factory=BusSettings, description=BusSettings.__doc__)
    log: LogSettings = Field(default_factory=LogSettings, description=LogSettings.__doc__)


def environment_names(
    model: type[BaseModel] = ServiceSettings, prefix: str = "FERRY_"
) -> dict[str, str]:
    """Every environment variable a settings class reads, with its description.

    Used by ``ferry up`` (to pass settings on), the chart tests and the docs.
    """
    names: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(environment_names(annotation, f"{prefix}{name.upper()}__"))
        else:
            names[f"{prefix}{name.upper()}"] = field.description or ""
    return names
