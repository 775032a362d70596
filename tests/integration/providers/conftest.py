"""Fixtures for the provider tests; the builders live in ``ovfkit`` beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import ovfkit


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ovfkit.Images:
    """Real disk images (once per session): the same 8 MiB content in every format."""
    return ovfkit.make_images(tmp_path_factory.mktemp("images"))
