"""The test guest's modules in ``tests/guest``, loaded by path (``tests/`` is not a package).

``build_guest.py`` (the test guest, built once and cached) and ``converted_guest.py``
(its in-place conversion, cached) are used by tests in several directories; each is
loaded once per process under one name, so every test shares one module object (and
whatever it holds, such as the converted guest's lock).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(name: str, path: Path) -> ModuleType:
    """The module of ``path`` under ``name``: the one already loaded, else loaded now."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs: its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
