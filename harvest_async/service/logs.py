"""The one logging configuration point: text for terminals, JSON for journald/Loki.

* JSON lines carry, besides `ts`, `level`, `logger` and `msg`, every field a call passed
  with `extra=` (`symbol`, `action`, `R_net`, `kill_score`, `plan_id`, `seq`, `trigger`,
  `reason`, `event`, ...) and the publisher's `instance`, so Loki can filter on them.
* Under systemd (stderr is the journal: `JOURNAL_STREAM` names it) every line starts with
  its syslog priority (`<4>` for a warning), which journald strips and stores as the
  entry's priority (`journalctl -p warning` works); text lines then carry no timestamp of
  their own, journald adds one.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

import msgspec

from harvest_async.core.timefmt import iso_utc

__all__ = ["JsonFormatter", "PriorityFormatter", "journal_stream", "setup_logging"]

# what every LogRecord has: anything else on a record came from `extra=`
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}
# syslog priorities (RFC 5424) of the logging levels
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JOURNAL_TEXT = "%(levelname)-7s %(name)s: %(message)s"  # journald stamps the time


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (CRITICAL and above: 2)."""
    if levelno >= logging.CRITICAL:
        return 2
    for level in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str | None = None) -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.instance is not None:
            entry["instance"] = self.instance
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(entry, enc_hook=str).decode()


class PriorityFormatter(logging.Formatter):
    """Another formatter's line behind its syslog priority prefix (`<4>...`)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        # a traceback's lines too: journald reads each line as an entry of its own
        return "\n".join(prefix + line for line in self.inner.format(record).splitlines())


def journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether `stream` is the journal: systemd sets JOURNAL_STREAM to its device:inode
    (a child that inherited the variable but writes elsewhere is not)."""
    expected = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in expected.split(":"))
        found = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (found.st_dev, found.st_ino) == (device, inode)


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    instance: str | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Log to `stream` (stderr) at `level`, as text or JSON (`fmt`); JSON lines name the
    `instance`; priority prefixes when the stream is the journal."""
    stream = stream or sys.stderr
    journal = journal_stream(stream, os.environ if environ is None else environ)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter(instance)
    else:
        formatter = logging.Formatter(_JOURNAL_TEXT if journal else _TEXT)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PriorityFormatter(formatter) if journal else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # redis-py logs reconnect noise at INFO; we report connection state ourselves
    logging.getLogger("redis").setLevel(max(logging.WARNING, root.level))
