"""Run the conversion-service: ``python -m ferry.conversion_service`` or
``ferry-conversion-service``."""

from __future__ import annotations

from ferry.conversion_service import app
from ferry.proto.subjects import Service
from ferry.runtime import load_settings, run_service


def main() -> None:
    run_service(Service.CONVERSION, load_settings(app.Settings), app.build_router)


if __name__ == "__main__":
    main()
