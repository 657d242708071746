"""sd_notify datagrams of the real agent, read from a real AF_UNIX socket set as NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.storage.volume import Volume


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket whose path is $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def read_until(self, predicate, timeout: float = 20.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"notify messages so far: {self.messages}")
            self.sock.settimeout(left)
            data = self.sock.recv(4096).decode()
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if line))
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def _count(messages, name: str) -> int:
    return sum(1 for m in messages if name in m)


def test_ready_only_after_volume_marker_then_watchdog_at_the_requested_rate(stack, notify_socket):
    (stack.root / ".backup-agent-volume").unlink()
    agent = stack.start_agent(
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "1000000"}
    )

    waiting = notify_socket.read_until(lambda ms: any("STATUS" in m for m in ms))
    assert "waiting for backup volume" in waiting[0]["STATUS"]
    assert _count(waiting, "READY") == 0

    Volume(stack.root).initialise("vol-late", force=True)  # its own layout is still there
    messages = notify_socket.read_until(lambda ms: _count(ms, "READY") == 1)
    ready = next(m for m in messages if "READY" in m)
    assert ready["READY"] == "1" and ready["STATUS"].startswith("backed up 0")
    assert agent.wait_for("agent.started")[0]["volume_id"] == "vol-late"

    # WATCHDOG_USEC=1 s: pings every 0.5 s, not the 2 s default of the main loop
    started = time.monotonic()
    after_ready = len(messages)
    notify_socket.read_until(lambda ms: _count(ms[after_ready:], "WATCHDOG") >= 4, timeout=10)
    assert time.monotonic() - started < 6.0  # at the 2 s default 4 pings would take 8 s

    agent.process.send_signal(signal.SIGTERM)
    final = notify_socket.read_until(lambda ms: _count(ms, "STOPPING") == 1)
    assert agent.process.wait(30) == 0
    assert final[-1]["STATUS"].startswith("stopping")
