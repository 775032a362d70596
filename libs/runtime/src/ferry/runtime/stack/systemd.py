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
nats-server's configuration is the one ``ferry up`` writes, and each service's
environment holds only the ``FERRY_…`` settings written here: nothing of the
installing shell's environment (which may hold secrets) reaches a unit file.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ferry.runtime.stack import services
from ferry.runtime.stack.state import RestartPolicy

TARGET = "ferry.target"
NATS_UNIT = "ferry-nats-server.service"


def unit_name(process: str) -> str:
    return f"ferry-{process}.service"


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
) -> dict[str, str]:
    """File name → text of every unit: the nats-server, the four services, the target."""
    logs = data_dir / "logs"
    found: dict[str, str] = {}
    found[NATS_UNIT] = _unit(
        "Ferry: nats-server with JetStream",
        [],
        [f"ExecStart={nats_binary} -c {data_dir / 'nats' / 'nats.conf'}"],
        logs / "nats-server.log",
        policy,
    )
    for index, spec in enumerate(services.SERVICES):
        env = {
            "FERRY_DATA_DIR": str(data_dir),
            "FERRY_NATS__URL": f"nats://127.0.0.1:{nats_port}",
            "FERRY_HTTP__HOST": "127.0.0.1",
            "FERRY_HTTP__PORT": str(http_port + index),
            "PYTHONUNBUFFERED": "1",
        }
        found[unit_name(spec.name)] = _unit(
            f"Ferry: {spec.name}",
            [f"Wants={NATS_UNIT}", f"After={NATS_UNIT}"],
            [
                *(f'Environment="{key}={value}"' for key, value in env.items()),
                f"ExecStart={python} -m {spec.module}",
            ],
            logs / f"{spec.name}.log",
            policy,
        )
    wanted = " ".join(found)
    found[TARGET] = (
        "[Unit]\nDescription=Ferry: the local stack (nats-server and four services)\n"
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
