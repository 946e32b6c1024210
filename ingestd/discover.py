"""Discover candidate files: what the inbox lists that is not still being written.

The listing belongs to the storage (ingestd/storage/); these names stay importable here.
"""

from __future__ import annotations

from ingestd.storage.base import IGNORED_SUFFIXES, is_ignored
from ingestd.storage.local import identity, relative_name, scan
from ingestd.storage.local_settle import Settler, being_written

__all__ = [
    "IGNORED_SUFFIXES",
    "Settler",
    "being_written",
    "identity",
    "is_ignored",
    "relative_name",
    "scan",
]
