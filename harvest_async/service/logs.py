"""The one logging configuration point: text for terminals, JSON for journald/Loki."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

import msgspec

from harvest_async.errors import PermissionDenied

__all__ = ["DenialLog", "setup_logging"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry).decode()


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # redis-py logs reconnect noise at INFO; we report connection state ourselves
    logging.getLogger("redis").setLevel(max(logging.WARNING, root.level))


class DenialLog:
    """Logs each permission refusal once while it lasts, and when it is over: work that
    waits for a permission (the ACL changed under us) is retried without a line per try."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: set[str] = set()

    def denied(self, exc: PermissionDenied) -> None:
        if exc.what in self._active:
            self._log.debug("still %s", exc)
            return
        self._active.add(exc.what)
        self._log.error("%s; the affected work waits and is retried", exc)

    def allowed(self) -> None:
        if self._active:
            self._log.info("permission granted again: %s", ", ".join(sorted(self._active)))
            self._active.clear()
