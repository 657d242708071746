"""Notifier.ping_interval: how often WATCHDOG=1 is sent, from systemd's environment."""

from __future__ import annotations

import os

import pytest

from agent.runtime.systemd import Notifier


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 2.0),  # not under systemd
        ({"NOTIFY_SOCKET": "/run/x"}, 2.0),  # Type=notify without WatchdogSec=
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}, 2.0),  # 15 s > default
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000"}, 0.5),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, 2.0),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "SELF"}, 0.5),
        ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "junk"}, 2.0),
    ],
)
def test_ping_interval_is_half_the_watchdog_for_this_process(monkeypatch, env, expected):
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(os.getpid()) if value == "SELF" else value)
    assert Notifier().ping_interval(2.0) == expected
