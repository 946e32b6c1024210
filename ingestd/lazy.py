"""Modules imported on first use, for those that cost a start more than most runs use them.

pyarrow.compute builds a Python wrapper for each of its ~300 kernels at import: ~0.1 s of
every start, while a raw CSV load calls none of them (its one kernel, quoting's RE2 match,
comes from pyarrow._compute). `pc.cast(...)` through the proxy below imports it then.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for a module until an attribute is asked for: then imports it, and keeps
    each attribute it handed out, so later uses cost a plain lookup."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)
        return value


pyarrow_compute: Any = LazyModule("pyarrow.compute")
