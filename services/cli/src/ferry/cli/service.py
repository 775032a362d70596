"""``ferry install-service``: systemd units for a host that runs the stack permanently.

The units come from :mod:`ferry.runtime.stack.systemd`, which carries the
supervisor's restart policy over into systemd's ``Restart*=`` settings; this
module only chooses where they go and what to tell the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferry.cli.stack import DataDir, _resolve
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
) -> None:
    """Write systemd units for the stack (restarted as `ferry up` would restart them)."""
    path = _resolve(data_dir)
    try:
        binary = nats.binary()
    except StackError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    policy = RestartPolicy()
    units = systemd.units(path, binary, nats_port=nats_port, http_port=http_port, policy=policy)
    config = nats.config(path / "jetstream", nats_port, monitor_port=monitor_port)
    config_file = path / "nats" / "nats.conf"
    if print_only:
        typer.echo(f"# {config_file}\n{config}")
        for name, text in units.items():
            typer.echo(f"# {name}\n{text}")
        return
    target = unit_dir.expanduser()
    target.mkdir(parents=True, exist_ok=True)
    config_file.parent.mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(parents=True, exist_ok=True)
    config_file.write_text(config)
    for name, text in units.items():
        (target / name).write_text(text)
    typer.echo(f"wrote {len(units)} units to {target} and {config_file}")
    typer.echo(
        "enable them with: systemctl --user daemon-reload && "
        f"systemctl --user enable --now {systemd.TARGET}"
    )


def register(app: typer.Typer) -> None:
    app.command("install-service")(install_service)
