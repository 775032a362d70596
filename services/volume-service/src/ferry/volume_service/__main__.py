"""Run the volume-service: ``python -m ferry.volume_service`` or ``ferry-volume-service``."""

from __future__ import annotations

from ferry.proto.subjects import Service
from ferry.runtime import load_settings, run_service
from ferry.volume_service import app


def main() -> None:
    run_service(Service.VOLUME, load_settings(app.Settings), app.build_router)


if __name__ == "__main__":
    main()
