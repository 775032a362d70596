"""The ``ferry`` command: one typer app; each group of commands lives in its own module.

A module adds its commands with ``register(app)``; adding a module here is the
only change this file needs.
"""

from __future__ import annotations

import typer

from ferry.cli import estimate, events, inventory, migrations, objects, service, stack

app = typer.Typer(
    name="ferry",
    help="Ferry migrates virtual machines into KubeVirt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (stack, service, objects, migrations, estimate, events, inventory):
    module.register(app)


if __name__ == "__main__":
    app()
