"""systemd units for a host that runs the stack permanently (``ferry install-service``).

On such a host systemd, not a ``ferry up`` supervisor, keeps the processes
running, so the units carry the supervisor's restart policy in systemd's terms:

- ``Restart=always`` with ``RestartSec=`` the first delay: every exit is restarted,
  as the supervisor restarts every exit;
- ``RestartSteps=`` / ``RestartMaxDelaySec=`` (systemd 254+; older versions ignore
  them with a warning and keep the fixed delay): the delay grows towards the same
  cap in the number of doublings the supervisor needs to reach it;
- ``StartLimitBurst=`` the crash-loop count and ``StartLimitIntervalSec=`` the time
  that many fast failures take at most under the supervisor's delays: after that
  systemd leaves the unit failed, as the supervisor gives up.

Ports are fixed (systemd has no ``stack.json`` to read them from), the
nats-server's configuration is the one ``ferry up`` writes (its identities as the only
users, TLS with ``--tls``); with ``cluster_size`` N (``--nats-cluster N``) there are N
nats-server units routed as one JetStream cluster, node n on the client, monitoring and
cluster ports given plus n - 1, and the services connect to all of them with one
replica of each stream per node, as under ``ferry up``. Each service's environment
holds only the ``FERRY_…`` settings written here: nothing of the installing shell's environment
(which may hold secrets) reaches a unit file. A service finds its NATS identity
in the file ``FERRY_NATS__CREDENTIALS_FILE`` names (0600, in the data dir): the
password itself is never in a unit, a command line or an environment.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ferry.runtime.stack import launch, nats, services
from ferry.runtime.stack.state import RestartPolicy

TARGET = "ferry.target"
NATS_UNIT = "ferry-nats-server.service"


def unit_name(process: str) -> str:
    return f"ferry-{process}.service"


def nats_unit(number: int) -> str:
    """Cluster node ``number``'s unit; node 1 is the single server's."""
    return unit_name(nats.node_name(number))


def restart_settings(policy: RestartPolicy) -> list[str]:
    """The [Service] lines equivalent to the supervisor's restarts."""
    steps = max(1, math.ceil(math.log2(max(policy.max_delay / policy.delay, 1.0))))
    return [
        "Restart=always",
        f"RestartSec={policy.delay:g}",
        f"RestartSteps={steps}",
        f"RestartMaxDelaySec={policy.max_delay:g}",
    ]


def start_limit(policy: RestartPolicy) -> list[str]:
    """The [Unit] lines that leave a crash-looping unit down, as the supervisor does."""
    burst = policy.crash_loop_after
    window = sum(policy.backoff(n) for n in range(1, burst)) + burst * policy.min_uptime
    return [f"StartLimitIntervalSec={math.ceil(window)}", f"StartLimitBurst={burst}"]


def units(
    data_dir: Path,
    nats_binary: str,
    *,
    nats_port: int,
    http_port: int,
    policy: RestartPolicy,
    python: str = sys.executable,
    tls_on: bool = False,
    cluster_size: int = 1,
) -> dict[str, str]:
    """File name → text of every unit: the nats-server(s), the four services, the target."""
    logs = data_dir / "logs"
    found: dict[str, str] = {}
    for number in range(1, cluster_size + 1):
        what = "" if cluster_size == 1 else f", node {number} of {cluster_size}"
        found[nats_unit(number)] = _unit(
            f"Ferry: nats-server with JetStream{what}",
            [],
            [f"ExecStart={nats_binary} -c {nats.config_file(data_dir, number)}"],
            nats.log_file(data_dir, number),
            policy,
        )
    scheme = "tls" if tls_on else "nats"
    url = ",".join(f"{scheme}://127.0.0.1:{nats_port + n}" for n in range(cluster_size))
    ca = launch.tls_ca(data_dir, url)
    servers = " ".join(nats_unit(n) for n in range(1, cluster_size + 1))
    for index, spec in enumerate(services.SERVICES):
        env = {
            "FERRY_DATA_DIR": str(data_dir),
            "FERRY_NATS__URL": url,
            "FERRY_NATS__CREDENTIALS_FILE": str(launch.credentials(data_dir, spec)),
            "FERRY_HTTP__HOST": "127.0.0.1",
            "FERRY_HTTP__PORT": str(http_port + index),
            "PYTHONUNBUFFERED": "1",
        }
        if ca is not None:
            env["FERRY_NATS__TLS_CA_FILE"] = str(ca)
        if cluster_size > 1:
            env["FERRY_BUS__REPLICAS"] = str(cluster_size)
        found[unit_name(spec.name)] = _unit(
            f"Ferry: {spec.name}",
            [f"Wants={servers}", f"After={servers}"],
            [
                *(f'Environment="{key}={value}"' for key, value in env.items()),
                f"ExecStart={python} -m {spec.module}",
            ],
            logs / f"{spec.name}.log",
            policy,
        )
    wanted = " ".join(found)
    found[TARGET] = (
        "[Unit]\nDescription=Ferry: the local stack (NATS and four services)\n"
        f"Wants={wanted}\n\n[Install]\nWantedBy=default.target\n"
    )
    return found


def _unit(
    description: str, unit: list[str], service: list[str], log: Path, policy: RestartPolicy
) -> str:
    lines = [
        "[Unit]",
        f"Description={description}",
        f"PartOf={TARGET}",
        *unit,
        *start_limit(policy),
        "",
        "[Service]",
        "Type=simple",
        *service,
        f"StandardOutput=append:{log}",
        "StandardError=inherit",
        *restart_settings(policy),
        # SIGTERM: a service stops fetching and drains; what outlives the grace is killed.
        "KillSignal=SIGTERM",
        "TimeoutStopSec=45",
        "",
        "[Install]",
        f"WantedBy={TARGET}",
    ]
    return "\n".join(lines) + "\n"


def cluster_nodes(size: int, cluster_port: int) -> list[nats.ClusterNode | None]:
    """The nodes of a ``size``-server cluster on fixed cluster ports (1: no cluster)."""
    if size == 1:
        return [None]
    ports = tuple(cluster_port + n for n in range(size))
    return [nats.ClusterNode(n, ports) for n in range(1, size + 1)]
