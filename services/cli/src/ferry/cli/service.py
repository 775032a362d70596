"""``ferry install-service``: systemd units for a host that runs the stack permanently.

The units come from :mod:`ferry.runtime.stack.systemd`, which carries the
supervisor's restart policy over into systemd's ``Restart*=`` settings; this
module only chooses where they go and what to tell the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferry.cli.stack import DataDir, NatsCluster, _resolve
from ferry.runtime.stack import StackError, nats, systemd
from ferry.runtime.stack.state import RestartPolicy


def install_service(
    data_dir: DataDir = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the units instead of writing them.")
    ] = False,
    unit_dir: Annotated[
        Path, typer.Option(help="Where to write the units (a systemd user unit directory).")
    ] = Path("~/.config/systemd/user"),
    nats_port: Annotated[int, typer.Option(help="Client port of the nats-server.")] = 4222,
    monitor_port: Annotated[int, typer.Option(help="Monitoring port of the nats-server.")] = 8222,
    http_port: Annotated[
        int, typer.Option(help="HTTP port of the first service; the others follow.")
    ] = 8081,
    tls_on: Annotated[
        bool, typer.Option("--tls", help="NATS speaks only TLS (a local CA, as `ferry up --tls`).")
    ] = False,
    nats_cluster: NatsCluster = 1,
    cluster_port: Annotated[
        int,
        typer.Option(
            help="Cluster (route) port of node 1 of --nats-cluster: node n takes this "
            "port, the client port and the monitoring port plus n - 1."
        ),
    ] = 6222,
) -> None:
    """Write systemd units for the stack (restarted as `ferry up` would restart them)."""
    path = _resolve(data_dir)
    try:
        binary = nats.binary()
    except StackError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    policy = RestartPolicy()
    units = systemd.units(
        path, binary, nats_port=nats_port, http_port=http_port, policy=policy, tls_on=tls_on,
        cluster_size=nats_cluster,
    )  # fmt: skip
    nodes = list(enumerate(systemd.cluster_nodes(nats_cluster, cluster_port), 1))
    if print_only:  # writes nothing, so shows the configuration without its users
        for number, node in nodes:
            store = path / ("jetstream" if number == 1 else f"jetstream-{number}")
            config = nats.config(
                store, nats_port + number - 1, monitor_port=monitor_port + number - 1,
                cluster=node, server_name=nats.server_name(node),
            )  # fmt: skip
            typer.echo(
                f"# {nats.config_file(path, number)} (plus an authorization block: "
                "one user per identity)"
            )
            typer.echo(config)
        for name, text in units.items():
            typer.echo(f"# {name}\n{text}")
        return
    target = unit_dir.expanduser()
    target.mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(parents=True, exist_ok=True)
    # The same servers as `ferry up`'s: the identities' users only (made the first time).
    for number, node in nodes:
        config = nats.stack_config(
            path, nats_port + number - 1, monitor_port=monitor_port + number - 1,
            tls_on=tls_on, cluster=node,
        )  # fmt: skip
        nats.write_config(nats.config_file(path, number), config)
    (path / "nats").chmod(0o700)
    for name, text in units.items():
        (target / name).write_text(text)
    configs = ", ".join(str(nats.config_file(path, n)) for n, _ in nodes)
    typer.echo(f"wrote {len(units)} units to {target} and {configs}")
    typer.echo(
        "enable them with: systemctl --user daemon-reload && "
        f"systemctl --user enable --now {systemd.TARGET}"
    )


def register(app: typer.Typer) -> None:
    app.command("install-service")(install_service)
