"""The copy's errors now live in :mod:`ferry.platform.errors` (the platform's interface).

Kept only so the NBD client, being reworked on another branch, still imports; remove
it once nothing imports ``ferry.platform.copy.errors``.
"""

from ferry.platform.errors import *  # noqa: F403
from ferry.platform.errors import __all__ as __all__
