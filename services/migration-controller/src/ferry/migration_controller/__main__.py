"""Run the migration-controller: ``python -m ferry.migration_controller`` or
``ferry-migration-controller``."""

from __future__ import annotations

from ferry.migration_controller import app
from ferry.proto.subjects import Service
from ferry.runtime import load_settings, run_service


def main() -> None:
    run_service(Service.CONTROLLER, load_settings(app.Settings), app.build_router)


if __name__ == "__main__":
    main()
