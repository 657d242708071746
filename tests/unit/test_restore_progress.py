"""The progress display: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import termios

import pytest
import structlog
from structlog.testing import capture_logs

from agent.cli.progress import LogProgress, TtyProgress
from agent.cli.restore import Runtime
from agent.records import VersionRecord
from agent.restore.plan import Item
from agent.restore.restorer import ItemResult
from agent.restore.targets import Status


def _result(key: str, status: Status = Status.RESTORED) -> ItemResult:
    record = VersionRecord(
        bucket="b", key=key, version_token="v:1", order_key="s1", event_name="ObjectCreated:Put",
        event_time="2026-11-01T09:00:00+00:00", backup_time="2026-11-01T09:00:01+00:00",
        volume_id="vol", sha256="0" * 64, size=10,
    )  # fmt: skip
    return ItemResult(Item(record), f"/restore/{key}", status, bytes=10, error="boom")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bar_shows_files_bytes_rate_and_eta():
    clock = Clock()
    progress = TtyProgress(io.StringIO(), clock=clock)
    progress.start(files=4, total_bytes=4 << 20)
    clock.now += 2.0
    progress.advance(2 << 20)
    progress.finished(_result("one"))

    assert progress.line() == ("1/4 files:  50%|#####     | 2.0 MiB/4.0 MiB  1.0 MiB/s  ETA 00:02")


def test_an_eta_past_a_day_counts_hours_on():
    clock = Clock()
    progress = TtyProgress(io.StringIO(), clock=clock)
    progress.start(files=1, total_bytes=2 << 20)
    clock.now += (
        100_000.0  # half done after 27 h 46 min 40 s: as long again to go (tqdm rounds down)
    )
    progress.advance(1 << 20)

    assert re.search(r"ETA 27:46:(39|40)$", progress.line()), progress.line()  # not 03:46:40


def test_the_bar_fits_the_terminal_width():
    """A real pseudo-terminal, 60 columns wide: no line of the bar is longer."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    with os.fdopen(terminal, "w") as stream:
        clock = Clock()
        progress = TtyProgress(stream, clock=clock)
        progress.start(files=3, total_bytes=3 << 30)
        clock.now += 10.0
        progress.advance(1 << 30)
        progress.close()
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal side is closed and everything was read
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)

    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", drawn.decode())  # cursor moves take no room
    lines = [line for line in re.split(r"[\r\n]+", text) if line.strip()]
    assert lines and all(len(line) <= 60 for line in lines), lines
    assert "1.0 GiB/3.0 GiB" in lines[-1]


def test_bar_names_failures_on_their_own_line():
    stream = io.StringIO()
    progress = TtyProgress(stream, clock=Clock())
    progress.start(files=1, total_bytes=10)
    progress.finished(_result("broken\nname", Status.FAILED))
    progress.close()

    assert "failed: broken\\nname\n" in stream.getvalue()


@pytest.fixture
def default_logging():
    """Earlier CLI runs in this process may have raised the level (logging.level: WARNING)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_plain_output_is_a_progress_line_every_few_seconds_not_one_per_file(default_logging):
    """A log line per file cost more than restoring a 4 KiB file (issue 19's profile)."""
    clock = Clock()
    progress = LogProgress(clock=clock, every=5.0)
    with capture_logs() as events:
        progress.start(files=1000, total_bytes=10_000)
        for index in range(998):
            clock.now += 0.01  # 998 files in 9.98 s: one line, at 5 s
            progress.finished(_result(f"k{index}"))
        progress.finished(_result("broken", Status.FAILED))
        progress.finished(_result("last"))
        progress.close()

    assert [e["event"] for e in events] == [
        "restore.started",
        "restore.progress",
        "restore.finished",
    ]
    assert events[1]["done"] == 500 and events[1]["files"] == 1000
    assert {k: events[2][k] for k in ("done", "files", "failed", "bytes")} == {
        "done": 1000,
        "files": 1000,
        "failed": 1,
        "bytes": 10_000,
    }


def test_a_terminal_gets_the_bar_and_a_pipe_gets_log_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    on_tty = Runtime(args=None, config=None, out=io.StringIO(), err=Terminal())  # type: ignore[arg-type]
    piped = Runtime(args=None, config=None, out=io.StringIO(), err=io.StringIO())  # type: ignore[arg-type]

    assert isinstance(on_tty.progress(), TtyProgress)
    assert isinstance(piped.progress(), LogProgress)
