"""The processes of the stack, written once: process name, service token, entry point.

The four bus services carry their :class:`Service` token; the console handles no
command and so has none (``service`` is None): it only reads the bus and serves people.

Process names go into logs, metrics, envelope sources, log file names and
``stack.json``; the entry point is what ``python -m`` runs. The environment a
service process receives is built by :func:`environment` alone, so a change of
setting names is made in one place for ``ferry up`` and the test harness alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ferry.proto.subjects import Service


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack."""

    service: Service | None  # None: not a bus service (the console)
    name: str  # the process name: logs, metrics, envelope sources, log files
    module: str  # run with ``python -m``

    def argv(self) -> list[str]:
        """The command line that runs it with this interpreter (and so this venv)."""
        return [sys.executable, "-m", self.module]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(Service.CONTROLLER, "migration-controller", "ferry.migration_controller"),
    ServiceSpec(Service.VOLUME, "volume-service", "ferry.volume_service"),
    ServiceSpec(Service.CONVERSION, "conversion-service", "ferry.conversion_service"),
    ServiceSpec(Service.VM, "vm-service", "ferry.vm_service"),
    ServiceSpec(None, "console", "ferry.console"),
)
"""In start order: the controller first, so its consumers exist when work arrives; the
console last, since it only reads what the others declared."""


def of(service: Service) -> ServiceSpec:
    return next(spec for spec in SERVICES if spec.service is service)


def named(name: str) -> ServiceSpec:
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(f"no service named {name!r}; known: {', '.join(s.name for s in SERVICES)}")


def environment(
    data_dir: Path,
    nats_url: str,
    http_port: int,
    extra: Mapping[str, str] | None = None,
    *,
    credentials: Path | None = None,
    tls_ca: Path | None = None,
) -> dict[str, str]:
    """A service process's environment: the caller's, plus where its data, the bus and its
    HTTP port are. ``extra`` (a test's settings) overrides all but the port, which is
    the slot's own. ``credentials`` names the service's NATS credentials *file*: the
    secret itself never enters an environment. ``tls_ca`` is the CA the server's
    certificate must verify against (``ferry up --tls``)."""
    env = dict(os.environ)
    env.update(
        {
            "FERRY_DATA_DIR": str(data_dir),
            "FERRY_NATS__URL": nats_url,
            "FERRY_HTTP__HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if credentials is not None:
        env["FERRY_NATS__CREDENTIALS_FILE"] = str(credentials)
    if tls_ca is not None:
        env["FERRY_NATS__TLS_CA_FILE"] = str(tls_ca)
    env.update(extra or {})
    env["FERRY_HTTP__PORT"] = str(http_port)
    return env
