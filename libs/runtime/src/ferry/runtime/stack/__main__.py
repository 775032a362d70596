"""``python -m ferry.runtime.stack``: the background supervisor of ``ferry up --detach``."""

from __future__ import annotations

import sys

from ferry.runtime.stack import launch

sys.exit(launch.main())
