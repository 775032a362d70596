"""Run the migration-controller: ``python -m ferry.migration_controller`` or
``ferry-migration-controller``."""

from __future__ import annotations

from ferry.migration_controller import app
from ferry.migration_controller.settings import ControllerSettings
from ferry.proto.subjects import Service
from ferry.runtime import load_settings, run_service


def main() -> None:
    run_service(Service.CONTROLLER, load_settings(ControllerSettings), app.build_router)


if __name__ == "__main__":
    main()
