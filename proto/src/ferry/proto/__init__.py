"""Ferry's wire contracts.

Every command and event that crosses the bus is declared here, once, as a frozen
msgspec ``Struct`` with a versioned type tag (``volume.copy_disks.v1``). Services
and libraries import these modules; nothing here imports anything of Ferry's.
JSON Schema and an AsyncAPI document are generated from these structs
(``make schemas``) for consumers written in other languages.
"""

# Kinds in modules of their own (``budget``) register themselves with ``objects``
# when imported; ``objects`` imports them at its end, so every reader of objects
# knows them, and a reader of the wire contracts alone (the copy workloads) never
# pays for pydantic and YAML (about 0.3 s of CPU at each start).
