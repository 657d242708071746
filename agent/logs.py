"""structlog set-up: JSON lines for journald and files, readable colours on a TTY.

When the stream is the journal's (systemd sets ``JOURNAL_STREAM`` to the device and inode of
the stdout/stderr it connected to journald), each line starts with its syslog priority
(``<4>`` for a warning, sd-daemon(3)), so ``journalctl -u backup-agent -p warning`` shows the
warnings and errors only. Anywhere else the lines are unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

# structlog method (or stdlib level) name → syslog priority (sd-daemon.h's SD_* prefixes)
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "msg": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}


def journal_stream(stream: Any) -> bool:
    """Is `stream` the one systemd connected to the journal (``$JOURNAL_STREAM``)?"""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    if not wanted:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # not a real file: a test's or a caller's buffer
    return wanted == f"{info.st_dev}:{info.st_ino}"


def _prefix(text: str, priority: int) -> str:
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def _journal_priority(_logger: Any, method: str, rendered: Any) -> Any:
    """After the renderer: `<N>` before each line of the rendered event."""
    if isinstance(rendered, str):
        return _prefix(rendered, PRIORITIES.get(method, 6))
    return rendered


class _JournalFormatter(logging.Formatter):
    """The stdlib's records (botocore, urllib3, APScheduler) get their priority too."""

    def format(self, record: logging.LogRecord) -> str:
        return _prefix(super().format(record), PRIORITIES.get(record.levelname.lower(), 6))


def configure(level: str = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    journal = journal_stream(stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            renderer,
            *([_journal_priority] if journal else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=stream)
    if journal:
        for handler in logging.root.handlers:
            if getattr(handler, "stream", None) is stream:
                handler.setFormatter(_JournalFormatter(logging.BASIC_FORMAT))
