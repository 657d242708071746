"""The daemon's reload wiring: a valid edit reaches the running consumer and backup service."""

from __future__ import annotations

from datetime import timedelta

import yaml

from agent.runtime.daemon import Daemon
from tests.support.aws import make_config


def test_reload_applies_workers_receive_ahead_compression_and_drain_timeout_live(
    aws, backup_root, volume, tmp_path
):
    config = make_config(backup_root)
    path = tmp_path / "config.yaml"
    raw = config.model_dump(mode="json")
    path.write_text(yaml.safe_dump(raw))
    rejected: list[tuple[str, str]] = []
    daemon = Daemon(config, aws, config_path=path, alert=lambda s, d: rejected.append((s, d)))
    daemon.start(daemon.wait_for_volume())
    try:
        raw["consumer"].update(workers=6, drain_timeout=3, receive_ahead=False)  # on by default
        raw["storage"].update(compression_level=12)
        raw["alerts"].update(days_until_full=14)
        path.write_text(yaml.safe_dump(raw))
        outcome = daemon.reloader.reload("test")

        assert outcome.applied == (
            "alerts.days_until_full",
            "consumer.drain_timeout",
            "consumer.receive_ahead",
            "consumer.workers",
            "storage.compression_level",
        )
        assert daemon.monitoring.forecast.threshold_days == 14
        assert daemon.consumer._capacity == 6 and len(daemon.consumer._workers) == 6
        assert daemon.consumer._receive_ahead is False
        assert daemon.service.compression.level == 12
        assert daemon.config.consumer.drain_timeout == timedelta(seconds=3)

        path.write_text("queue: [not, a, mapping]\n")
        assert daemon.reloader.reload("test").status == "rejected"
        assert rejected and rejected[0][0] == "configuration edit rejected"
        assert daemon.config.consumer.workers == 6  # still the last valid configuration
    finally:
        daemon.stop()


def test_reload_gives_the_backup_service_the_new_categories(aws, backup_root, volume, tmp_path):
    config = make_config(backup_root)
    path = tmp_path / "config.yaml"
    raw = config.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(raw))
    daemon = Daemon(config, aws, config_path=path, alert=lambda s, d: None)
    daemon.start(daemon.wait_for_volume())
    try:
        raw["categories"] = [{"name": "finance", "prefix": "invoices/"}]
        path.write_text(yaml.safe_dump(raw))
        outcome = daemon.reloader.reload("test")
        assert "categories" in outcome.applied
        assert daemon.service.categories.name("invoices/a.pdf", None, None) == "finance"
    finally:
        daemon.stop()
