"""Ferry's wire contracts.

Every command and event that crosses the bus is declared here, once, as a frozen
msgspec ``Struct`` with a versioned type tag (``volume.copy_disks.v1``). Services
and libraries import these modules; nothing here imports anything of Ferry's.
JSON Schema and an AsyncAPI document are generated from these structs
(``make schemas``) for consumers written in other languages.
"""

# Kinds in modules of their own register themselves with ``objects`` when imported;
# importing them here makes every reader of objects know them, whatever it imported.
from ferry.proto import budget as _budget  # noqa: F401
