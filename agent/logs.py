"""structlog set-up: JSON lines for journald and files, readable colours on a TTY.

When the stream is the journal's (systemd sets ``JOURNAL_STREAM`` to the device and inode of
the stdout/stderr it connected to journald), each line starts with its syslog priority
(``<4>`` for a warning, sd-daemon(3)), so ``journalctl -u backup-agent -p warning`` shows the
warnings and errors only. Anywhere else the lines are unchanged.

The standard library's records (botocore, boto3, s3transfer, urllib3, APScheduler, watchdog:
the agent itself logs through structlog only) go through the same renderer, with `logger`
naming their source: one format (JSON stays JSON) and one level setting. Every library is
held at WARNING (`LIBRARY_LEVEL`) whatever the agent's level, because botocore's DEBUG is the
wire protocol, APScheduler's INFO is a line per job run, and watchdog's DEBUG is a line per
inotify event: with the log file beside the watched config.yaml each line would make another,
without end. Pass `library_level` to see more.

Each line is written with one write() call (structlog's WriteLogger, not print(), which
writes the newline apart), so a library's line never lands inside an event's.
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


# Libraries known to log (all the standard library's loggers are held at LIBRARY_LEVEL, or the
# agent's level if higher: these are named for the docs and the tests).
LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "apscheduler", "watchdog")
LIBRARY_LEVEL = "WARNING"


class _StdlibHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler `configure` installs (and replaces when called again)."""


def _level(name: str) -> int:
    number = logging.getLevelName(name.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {name!r}")
    return number


def configure(
    level: str = "INFO",
    fmt: str = "auto",
    stream: Any = None,
    library_level: str = LIBRARY_LEVEL,
) -> None:
    stream = stream or sys.stderr
    threshold = _level(level)
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    journal = [_journal_priority] if journal_stream(stream) else []
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        structlog.processors.UnicodeDecoder(),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer, *journal],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = _StdlibHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
                *journal,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(threshold, _level(library_level)))  # every library, named or not
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)  # the root's level decides
