"""Hostile scrapers: the Prometheus endpoint faces whoever can reach its port. Connections
that never send a request (or trickle one forever) must not pin a thread each, must not lock
out a real scrape, and must be cut after the per-connection timeout.

The timeout is shortened for the test (`CONNECTION_TIMEOUT_SECONDS`; 10 s in production).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.monitoring import prometheus
from agent.monitoring.prometheus import PrometheusMetrics, Sources
from agent.stats import Stats
from tests.support.waiting import wait_until

TIMEOUT = 2.0
HALF_OPEN = 300
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "backup-agent.service"


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """(port, threads before the server started)."""
    monkeypatch.setattr(prometheus, "CONNECTION_TIMEOUT_SECONDS", TIMEOUT, raising=False)
    before = threading.active_count()
    metrics = PrometheusMetrics(Sources(stats=Stats(), workers=lambda: 4))
    port = metrics.serve("127.0.0.1:0")
    assert port
    try:
        yield port, before
    finally:
        metrics.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@contextlib.contextmanager
def half_open(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that send nothing and are never closed by the client."""
    sockets = []
    try:
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield sockets
    finally:
        for s in sockets:
            s.close()


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True  # reset


def test_300_half_open_connections_pin_no_threads_and_scrapes_still_answer(endpoint):
    port, before = endpoint
    cap = getattr(prometheus, "MAX_CONNECTIONS", 8)
    with half_open(port, HALF_OPEN) as sockets:
        time.sleep(0.5)  # let the server accept what it will
        peak = threading.active_count()
        assert peak - before <= cap + 1, f"{peak - before} threads for {HALF_OPEN} idle sockets"

        started = time.monotonic()
        assert "backup_agent_workers 4.0" in scrape(port)
        assert time.monotonic() - started < 3  # not after the idle ones time out

        # after the timeout every idle connection is cut and its thread is gone
        wait_until(lambda: threading.active_count() <= before + 1, timeout=TIMEOUT + 3)
        assert all(closed_by_server(s) for s in sockets)
        assert "backup_agent_workers 4.0" in scrape(port)


def test_a_request_trickled_forever_is_cut_at_the_timeout(endpoint):
    port, _before = endpoint
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + TIMEOUT + 3
        cut = False
        while time.monotonic() < deadline and not cut:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # a header every 0.2 s: never idle, never done
            except OSError:
                cut = True
                break
            cut = closed_by_server(s)
            time.sleep(0.15)
        assert cut, "the server kept serving a request that never ends"
        assert "backup_agent_workers 4.0" in scrape(port)


def test_the_unit_caps_the_agents_tasks():
    """The backstop for any thread leak: a bounded TasksMax, not the host's default."""
    found = re.findall(r"^TasksMax=(\S+)$", UNIT.read_text(), flags=re.MULTILINE)
    assert found and found[-1].isdigit(), found
    assert 256 <= int(found[-1]) <= 8192


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_the_unit_exposure_stays_at_most_1_5():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert overall, result.stdout + result.stderr
    assert float(overall[0].split(":", 1)[1].split()[0]) <= 1.5, overall[0]
