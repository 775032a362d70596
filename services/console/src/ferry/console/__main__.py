"""Run the console: ``python -m ferry.console`` or the ``ferry-console`` script."""

from __future__ import annotations

import asyncio
import sys

from ferry.console import app
from ferry.runtime import load_settings


def main() -> None:
    sys.exit(asyncio.run(app.serve(load_settings(app.Settings))))


if __name__ == "__main__":
    main()
