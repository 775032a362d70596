"""The console's settings: the shared groups plus its own ``console`` group.

The console binds to loopback unless told otherwise: it is meant to be opened
by a person on the machine that runs ``ferry up``, or through ``kubectl
port-forward``; the chart sets ``FERRY_HTTP__HOST`` so that probes reach it,
and then every read from elsewhere needs the token (``ferry.console.access``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ferry.runtime.settings import HttpSettings, ServiceSettings


class ConsoleSettings(BaseModel):
    """The web console's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    token_file: Path | None = Field(
        default=None,
        description="File holding the token every write (and every read from another "
        "machine) must show. Created with a random token when missing. Default: "
        "<data_dir>/console/token. In Kubernetes, mount it from a Secret.",
    )
    reader_url: str | None = Field(
        default=None,
        description="NATS URL of the console's read-only identity (the audit stream and "
        "the KV views). Unset: FERRY_NATS__URL. Writes (start, cancel, cutover) always use "
        "FERRY_NATS__URL.",
    )
    keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Idle server-sent-event streams get a comment this often, so proxies "
        "keep them open and a browser notices a dead connection.",
    )
    estimate_probe_seconds: float = Field(
        default=5.0,
        ge=0,
        description="A plan whose source/target pair never migrated: the plan view reads a "
        "few MiB of one of its disks for the estimate's throughput, for at most this long "
        "(as ferry estimate and the controller do); 0 turns the probe off.",
    )
    probe_cache_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long a pair's probe result is reused before the plan view reads "
        "the source again (one probe per pair at a time, however many pages are open).",
    )
    event_log: int = Field(
        default=500,
        ge=0,
        description="How many recent audit events a freshly opened page replays into its log.",
    )


class LoopbackHttpSettings(HttpSettings):
    """The console's HTTP endpoint: the page, its API and the probes."""

    # A subclass, not a default instance: FERRY_HTTP__PORT alone would otherwise build a
    # fresh group from the parent's defaults and bind every interface.
    host: str = Field(
        default="127.0.0.1",
        description="Address the console binds to. Loopback by default: reads from "
        "anywhere else need the token.",
    )


class Settings(ServiceSettings):
    """Everything the console reads at start-up."""

    http: LoopbackHttpSettings = Field(
        default_factory=LoopbackHttpSettings, description=LoopbackHttpSettings.__doc__
    )
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings, description=ConsoleSettings.__doc__
    )

    def token_path(self) -> Path:
        return self.console.token_file or self.data_dir / "console" / "token"
