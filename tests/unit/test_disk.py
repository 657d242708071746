"""The disk alert: one alert on crossing the threshold, one on recovery."""

from __future__ import annotations

from pathlib import Path

from agent.monitoring.alerts import AlertKind
from agent.monitoring.disk import DiskMonitor, DiskState
from agent.monitoring.metrics import DiskUsage

GIB = 1 << 30


class Readings:
    """Injected disk usage: each check reads the next percentage."""

    def __init__(self, *percents: float) -> None:
        self.percents = list(percents)

    def __call__(self, root: Path) -> DiskUsage:
        percent = self.percents.pop(0)
        used = int(100 * GIB * percent / 100)
        return DiskUsage(100 * GIB, used, 100 * GIB - used, percent)


def run(*percents: float, threshold: float = 85, margin: float = 5) -> list:
    alerts: list = []
    monitor = DiskMonitor(
        Path("/mnt/backups"),
        alerts.append,
        threshold=threshold,
        margin=margin,
        usage=Readings(*percents),
    )
    for _ in percents:
        monitor.check()
    return alerts


def test_crossing_the_threshold_alerts_once_however_long_it_stays_above():
    alerts = run(50, 84, 86, 90, 95, 99, 97)
    assert [a.kind for a in alerts] == [AlertKind.DISK_SPACE_LOW]
    assert alerts[0].details["used_percent"] == "86.0"
    assert "14.0 GiB free" in alerts[0].summary


def test_recovery_alerts_once_when_usage_falls_below_threshold_minus_margin():
    alerts = run(90, 84, 82, 79, 70, 60)
    assert [a.kind for a in alerts] == [AlertKind.DISK_SPACE_LOW, AlertKind.DISK_SPACE_RECOVERED]
    assert alerts[1].details["used_percent"] == "79.0"


def test_hovering_around_the_threshold_does_not_flap():
    alerts = run(86, 84, 86, 84, 86, 84)
    assert [a.kind for a in alerts] == [AlertKind.DISK_SPACE_LOW]


def test_a_second_crossing_after_recovery_alerts_again():
    alerts = run(90, 50, 90)
    assert [a.kind for a in alerts] == [
        AlertKind.DISK_SPACE_LOW,
        AlertKind.DISK_SPACE_RECOVERED,
        AlertKind.DISK_SPACE_LOW,
    ]


def test_starting_below_the_threshold_is_quiet():
    monitor = DiskMonitor(Path("/x"), lambda a: None, usage=Readings(10))
    assert monitor.check() is DiskState.OK


def test_the_real_reading_of_a_directory_works(tmp_path):
    alerts: list = []
    monitor = DiskMonitor(tmp_path, alerts.append, threshold=99.99)
    monitor.check()
    assert monitor.last is not None and monitor.last.total > 0
