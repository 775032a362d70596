"""Run the vm-service: ``python -m ferry.vm_service`` or the ``ferry-vm-service`` script."""

from __future__ import annotations

from ferry.proto.subjects import Service
from ferry.runtime import load_settings, run_service
from ferry.vm_service import app


def main() -> None:
    run_service(Service.VM, load_settings(app.Settings), app.build_router)


if __name__ == "__main__":
    main()
