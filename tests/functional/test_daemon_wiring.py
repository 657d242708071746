"""The daemon wires features together: alerts before the volume, scheduled jobs, snapshots."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import timedelta

import yaml
from structlog.testing import capture_logs

from agent.cli import restore as restore_cli
from agent.config import AlertsConfig
from agent.lifecycle.context import job_lock
from agent.operations.alarms import alarm_specs
from agent.runtime.daemon import Daemon
from tests.support.aws import make_config


def _subscribed_inbox(aws):
    sns = aws.sns()
    topic = sns.create_topic(Name="backup-alerts")["TopicArn"]
    inbox = aws.sqs.create_queue(QueueName="alert-inbox")["QueueUrl"]
    arn = aws.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return topic, inbox


def _wait_for_messages(aws, inbox, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = aws.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10).get("Messages")
        if found:
            return [json.loads(m["Body"]) for m in found]
        time.sleep(0.1)
    return []


def test_a_volume_that_is_not_mounted_is_alerted_while_the_agent_waits(aws, backup_root):
    topic, inbox = _subscribed_inbox(aws)
    config = make_config(
        backup_root,
        alerts={"sns_topic_arn": topic, "window_seconds": 1},
        metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
    )
    daemon = Daemon(config, aws)  # no marker at the root: the volume is "not mounted"
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        messages = _wait_for_messages(aws, inbox)
    finally:
        daemon.request_stop()
        runner.join(15)
    assert messages, "no alert reached the SNS topic"
    assert "backup volume not ready" in messages[0]["Message"]
    assert "init-volume" in messages[0]["Message"]
    assert not runner.is_alive()


def test_scheduled_lifecycle_and_snapshot_jobs_are_registered(aws, backup_root, volume):
    ec2 = aws.ec2()
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    config = make_config(
        backup_root,
        storage={"root": str(backup_root), "min_free_bytes": 0, "volume_id": volume_id},
        metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
        reconcile={"schedule": "6h"},
        gc={"schedule": 3600},  # deprecated: a plain number of seconds
        scrub={"schedule": "0 5 * * *"},
        snapshots={"enabled": True, "schedule": "6h"},
    )
    daemon = Daemon(config, aws)
    daemon.start(volume.read_marker())
    try:
        names = {record.name for record in daemon.monitoring.jobs.records()}
        schedules = {r.name: r.schedule for r in daemon.monitoring.jobs.records()}
    finally:
        daemon.stop()
    assert {"reconcile", "gc", "scrub", "snapshots", "snapshot-metrics"} <= names
    assert "retention" not in names  # no schedule: on demand only
    assert schedules["reconcile"].every == timedelta(hours=6)
    assert schedules["gc"].every == timedelta(hours=1)
    assert schedules["snapshots"].every == timedelta(hours=6)
    assert schedules["scrub"].cron == "0 5 * * *"
    # The snapshot-age alarm allows the longest gap of the schedule the job runs on (+1 h).
    topic = "arn:aws:sns:us-east-1:123456789012:ops"
    alarmed = config.model_copy(update={"alerts": AlertsConfig(sns_topic_arn=topic)})
    specs = alarm_specs(alarmed, {"InstanceId": "i-test", "Volume": str(backup_root)})
    [age] = [spec for spec in specs if spec["AlarmName"].endswith("snapshot-age")]
    allowed = schedules["snapshots"].max_gap() + timedelta(hours=1)
    assert age["Threshold"] == allowed.total_seconds() == 7 * 3600


def test_a_scheduled_job_skips_while_a_command_line_run_holds_its_lock(aws, backup_root, volume):
    config = make_config(
        backup_root,
        storage={"root": str(backup_root), "min_free_bytes": 0},
        metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
        gc={"schedule": 3600},
    )
    daemon = Daemon(config, aws)
    daemon.start(volume.read_marker())
    try:
        with job_lock(volume, "gc"), capture_logs() as busy_logs:  # `backup-agent gc` running
            assert daemon.monitoring.jobs.run_now("gc")
        with capture_logs() as free_logs:
            assert daemon.monitoring.jobs.run_now("gc")
    finally:
        daemon.stop()
    busy = [e["event"] for e in busy_logs]
    assert "job.skipped_busy" in busy and "gc.finished" not in busy
    assert "gc.finished" in [e["event"] for e in free_logs]


def test_backup_restore_snapshots_lists_the_agents_snapshots(aws, backup_root, volume, tmp_path):
    ec2 = aws.ec2()
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    raw = {
        "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"},
        "buckets": ["company-documents"],
        "storage": {"root": str(backup_root), "volume_id": volume_id},
        "state": {"table": "backup-agent-objects"},
        "snapshots": {"enabled": True, "schedule": "0 3 * * *"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    from agent.runtime.wiring import snapshot_manager

    config = make_config(
        backup_root,
        storage=raw["storage"],
        snapshots=raw["snapshots"],
    )
    run = snapshot_manager(config, aws).take()
    out = io.StringIO()

    code = restore_cli.main(["snapshots", "--config", str(path), "--json"], out=out)

    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0
    assert [r["snapshot_id"] for r in rows] == [run.snapshot_id]
    assert rows[0]["volume_id"] == volume_id


def test_low_space_wiring_the_pressure_check_and_the_forecast_history(
    aws, backup_root, volume, tmp_path, monkeypatch
):
    """retention.when_full and storage.auto_grow register their jobs; the forecast's history
    and the grow request go to $STATE_DIRECTORY (issue 17)."""
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    volume_id = aws.ec2().create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    config = make_config(
        backup_root,
        storage={
            "root": str(backup_root),
            "min_free_bytes": 0,
            "volume_id": volume_id,
            "auto_grow": {"enabled": True, "used_percent": 99.9, "check_every": "30s"},
        },
        metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
        retention={"keep_last_versions": 3, "when_full": {"check_every": "2m"}},
    )
    daemon = Daemon(config, aws)
    daemon.start(volume.read_marker())
    try:
        schedules = {r.name: r.schedule for r in daemon.monitoring.jobs.records()}
        daemon.monitoring.check_disk()  # one reading
    finally:
        daemon.stop()
    assert schedules["retention-when-full"].every == timedelta(minutes=2)
    assert schedules["auto-grow"].every == timedelta(seconds=30)
    assert daemon.can_grow()  # on, below its cap: retention under pressure waits for it
    assert daemon.grower is not None and daemon.grower.request.parent == state
    saved = json.loads((state / "forecast.json").read_text())
    assert saved["root"] == str(backup_root) and len(saved["readings"]) == 1
