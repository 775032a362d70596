"""The ``ferry`` command: one typer app; each group of commands lives in its own module.

A module adds its commands with ``register(app)``; adding a module here is the
only change this file needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ferry.cli import cluster, estimate, events, inventory, migrations, objects, service, stack

app = typer.Typer(
    name="ferry",
    help="Ferry migrates virtual machines into KubeVirt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    context: Annotated[
        str | None,
        typer.Option(
            "--context", help="kubeconfig context: apply, get and describe work on that cluster"
        ),
    ] = None,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig", help="kubeconfig file: apply, get and describe work on its cluster"
        ),
    ] = None,
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", "-n", help="with a cluster: only this namespace [default: all]"
        ),
    ] = "",
) -> None:
    """Ferry migrates virtual machines into KubeVirt."""
    cluster.select(ctx.invoked_subcommand, context, kubeconfig, namespace)
    # The choice is this invocation's: a caller that runs several in one process
    # (tests, an embedding) must not find the last one's cluster chosen for the next.
    ctx.call_on_close(cluster.forget)


for module in (stack, service, objects, migrations, estimate, events, inventory):
    module.register(app)


if __name__ == "__main__":
    app()
