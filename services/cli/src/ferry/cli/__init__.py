"""The ferry command line: plans in, status and events out, ferry up/down."""
