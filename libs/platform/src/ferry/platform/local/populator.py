"""The populator workload: ``python -m ferry.platform.local.populator`` (job on stdin)."""

from __future__ import annotations

import sys

from ferry.platform.local import transfer

if __name__ == "__main__":
    sys.exit(transfer.main("populator"))
