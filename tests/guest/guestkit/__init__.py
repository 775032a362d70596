"""Ferry's test-guest builder, split by concern; ``tests/guest/build_guest.py`` is its
entry point and public face (load that file by path)."""
