"""The data path: copy one disk from a source into a target volume, verified.

Sparse-aware (only allocated ranges are read, holes stay holes), parallel over
fixed chunks, constant memory, resumable from a durable checkpoint, and checked
with a tree hash that both sides can compute cheaply (see ``checksum``).
"""
