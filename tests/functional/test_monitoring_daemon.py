"""Monitoring wired into the daemon and the consumer, against in-process moto."""

from __future__ import annotations

import json
import threading
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import DiskFull, IntegrityError
from agent.events import parse_message
from agent.monitoring.metrics import DiskUsage
from agent.monitoring.monitor import Monitoring
from agent.pipeline.consumer import Consumer
from agent.pipeline.pause import Verdict
from agent.runtime.daemon import Daemon
from agent.runtime.wiring import consumer_settings
from agent.stats import Stats
from agent.storage.ledger import Ledger
from tests.functional.test_monitoring_aws import inbox_messages, topic  # noqa: F401 - fixture
from tests.support.aws import BUCKET, QUEUE_URL, TABLE, make_config
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

INSTANCE = "i-0daemon"


@pytest.fixture
def monitored_config(backup_root, topic):  # noqa: F811
    return make_config(
        backup_root,
        metrics={"instance_id": INSTANCE, "prometheus": "127.0.0.1:0"},
        alerts={"sns_topic_arn": topic[0]},
    )


def cloudwatch_sum(aws, name: str, dimensions: list[dict]) -> float:
    now = datetime.now(UTC)
    points = aws.session.client("cloudwatch").get_metric_statistics(
        Namespace="BackupAgent",
        MetricName=name,
        Dimensions=dimensions,
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    return sum(p["Sum"] for p in points)


def test_the_daemon_serves_prometheus_and_flushes_metrics_on_stop(aws, monitored_config, volume):
    daemon = Daemon(monitored_config, aws)
    daemon.start(volume.open())
    try:
        aws.s3.put_object(Bucket=BUCKET, Key="a.txt", Body=b"hello " * 100)
        ledger = Ledger(aws.dynamodb, TABLE)
        wait_until(lambda: ledger.latest(BUCKET, "a.txt") is not None, timeout=15)
        wait_until(lambda: daemon.stats.backups_succeeded == 1, timeout=15)
        port = daemon.monitoring.prometheus_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        daemon.stop()
    assert families["backup_agent_backup_lag_seconds"].samples
    assert families["backup_agent_workers"].samples[0].value == 2
    dims = [
        {"Name": "InstanceId", "Value": INSTANCE},
        {"Name": "Volume", "Value": str(volume.root)},
    ]
    listed = aws.session.client("cloudwatch").list_metrics(Namespace="BackupAgent")["Metrics"]
    fleet = [m for m in listed if m["MetricName"] == "FleetMembersMissing"]
    assert [m["Dimensions"] for m in fleet] == [[{"Name": "Fleet", "Value": "backup-events"}]]
    assert all(m["Dimensions"] == dims for m in listed if m not in fleet)
    assert cloudwatch_sum(aws, "BackupsSucceeded", dims) == 1  # sent by the flush on stop
    assert cloudwatch_sum(aws, "BytesBackedUp", dims) == 600


def test_a_message_given_up_on_alerts_through_sns(aws, monitored_config, topic):  # noqa: F811
    _, inbox = topic
    monitoring = Monitoring(monitored_config, aws, stats=Stats())
    monitoring.alerts.start()

    def refuse(event):
        from agent.errors import PermanentError

        raise PermanentError(f"bucket {event.bucket!r} is not in the configured buckets")

    settings = consumer_settings(monitored_config)
    settings = type(settings)(**{**settings.__dict__, "max_receive_count": 1})
    consumer = Consumer(
        aws.sqs, monitoring.observe(refuse), settings, on_gave_up=monitoring.on_gave_up
    )
    aws.s3.put_object(Bucket=BUCKET, Key="x.bin", Body=b"x")
    consumer.start()
    try:
        wait_until(lambda: monitoring.totals()["BackupsGaveUp"] == 1, timeout=15)
    finally:
        consumer.stop(5)
        monitoring.alerts.stop()
    (message,) = inbox_messages(aws, inbox)
    assert message["Subject"] == f"[backup-agent] Backup failed for good on {INSTANCE}"
    assert "is not in the configured buckets" in message["Message"]


def test_an_integrity_failure_alerts_and_still_fails_the_backup(aws, monitored_config, topic):  # noqa: F811
    _, inbox = topic
    monitoring = Monitoring(monitored_config, aws, stats=Stats())

    def corrupt(event):
        raise IntegrityError("MD5 0000 does not match eTag 1111")

    body = json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": "us-east-1",
                    "eventTime": "2026-01-01T00:00:00.000Z",
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "bucket": {"name": BUCKET},
                        "object": {"key": "b.txt", "size": 1, "eTag": "1111"},
                    },
                }
            ]
        }
    )
    (event,) = parse_message(body).events
    with pytest.raises(IntegrityError):
        monitoring.observe(corrupt)(event)
    monitoring.alerts.stop()
    (message,) = inbox_messages(aws, inbox)
    assert message["MessageAttributes"]["kind"]["Value"] == "integrity_failure"
    assert f"s3://{BUCKET}/b.txt: MD5 0000 does not match" in message["Message"]


def test_the_agent_stopping_on_an_error_alerts(aws, monitored_config, volume, topic, monkeypatch):  # noqa: F811
    _, inbox = topic
    daemon = Daemon(monitored_config, aws)
    monkeypatch.setattr(daemon, "install_signal_handlers", lambda: None)

    def broken_start(self):
        raise OSError("receiver thread could not start")

    monkeypatch.setattr(Consumer, "start", broken_start)
    with pytest.raises(OSError):
        daemon.run()
    (message,) = inbox_messages(aws, inbox)
    assert message["Subject"] == f"[backup-agent] Backup agent stopped on an error on {INSTANCE}"
    assert "OSError: receiver thread could not start" in message["Message"]


def test_the_queue_job_alerts_when_the_dead_letter_queue_grows(aws, monitored_config, topic):  # noqa: F811
    _, inbox = topic
    monitoring = Monitoring(monitored_config, aws, stats=Stats())
    dlq = aws.sqs.get_queue_url(QueueName="backup-events-dlq")["QueueUrl"]
    monitoring.sample_queues()  # the baseline
    aws.sqs.send_message(QueueUrl=dlq, MessageBody="{}")
    aws.sqs.send_message(QueueUrl=QUEUE_URL, MessageBody="{}")
    monitoring.sample_queues()
    monitoring.alerts.stop()
    gauge = monitoring.prometheus.queue_messages
    assert gauge.labels("dead_letter", "visible")._value.get() == 1
    assert gauge.labels("main", "visible")._value.get() == 1
    (message,) = inbox_messages(aws, inbox)
    assert "1 message(s) moved to the dead-letter queue" in message["Message"]


def test_backups_go_on_while_cloudwatch_and_sns_hang(aws, backup_root, volume, topic):  # noqa: F811
    config = make_config(
        backup_root,
        metrics={"instance_id": INSTANCE, "prometheus": None},
        alerts={"sns_topic_arn": topic[0], "disk_used_percent": 0.001},  # alerts at once
        schedules={"metrics": 0.1, "disk": 0.1},
    )
    gate = threading.Event()
    hung: set[str] = set()

    def hang(request, **_):
        hung.add(request.url)
        gate.wait(30)  # an AWS endpoint that does not answer

    aws.session.events.register("before-send.cloudwatch.PutMetricData", hang)
    aws.session.events.register("before-send.sns.Publish", hang)
    daemon = Daemon(config, aws)
    daemon.start(volume.open())
    try:
        # both the metrics job and the alert thread stuck
        wait_until(lambda: len(hung) == 2, timeout=15)
        for n in range(3):
            aws.s3.put_object(Bucket=BUCKET, Key=f"k{n}.txt", Body=b"data %d" % n)
        wait_until(lambda: daemon.stats.backups_succeeded == 3, timeout=15)
    finally:
        gate.set()
        daemon.stop()
    assert daemon.stats.backups_failed == 0


def test_a_cloudwatch_outage_is_logged_once_and_the_datapoints_arrive_later(aws):
    import botocore.config
    from structlog.testing import capture_logs

    from agent.monitoring.metrics import CloudWatchPublisher, Datapoint

    cloudwatch = aws.session.client(
        "cloudwatch", config=botocore.config.Config(retries={"max_attempts": 1})
    )
    down = [True]

    def unavailable(**_):
        if down[0]:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://monitoring")

    cloudwatch.meta.events.register("before-send.cloudwatch.PutMetricData", unavailable)
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", {"InstanceId": INSTANCE})
    now = datetime.now(UTC)
    with capture_logs() as logs:
        for minute in range(5):
            publisher.add(
                [Datapoint("BackupsSucceeded", 1.0, "Count", now - timedelta(minutes=minute))]
            )
            publisher.flush()
        down[0] = False
        publisher.flush()
    events = [e["event"] for e in logs]
    assert events.count("metrics.publish_failed") == 1
    assert events.count("metrics.publish_recovered") == 1
    assert cloudwatch_sum(aws, "BackupsSucceeded", [{"Name": "InstanceId", "Value": INSTANCE}]) == 5


def test_a_pause_and_a_resume_alert_once_each_with_the_reason_free_space_and_retention(
    aws,
    monitored_config,
    topic,  # noqa: F811
):
    """The consumer's listener: a volume lost or full while running is told by one alert when
    the consumer pauses and one when it resumes, not once per failed object."""
    _, inbox = topic
    monitoring = Monitoring(monitored_config, aws, stats=Stats())
    reason = "backup volume /mnt/backups has 1.0 MiB free, at or below the 256.0 MiB floor"
    monitoring.on_paused(Verdict(False, reason, free_bytes=1 << 20, headroom=-(255 << 20)))
    monitoring.on_resumed(Verdict(True, "", free_bytes=5 << 30, headroom=1 << 30), 3600.0)
    monitoring.alerts.stop()
    messages = inbox_messages(aws, inbox)
    kinds = [m["MessageAttributes"]["kind"]["Value"] for m in messages]
    assert sorted(kinds) == ["backups_paused", "backups_resumed"]
    paused = next(m["Message"] for m in messages if "paused" in m["Subject"].lower())
    assert reason in paused and str(1 << 20) in paused
    assert "14.0 days (its retention)" in paused  # bootstrap's queue keeps events 14 days
    resumed = next(m["Message"] for m in messages if "resumed" in m["Subject"].lower())
    assert "after 1.0 hours paused" in resumed


def test_a_failed_write_no_longer_alerts_per_object(aws, monitored_config, topic):  # noqa: F811
    _, inbox = topic
    monitoring = Monitoring(monitored_config, aws, stats=Stats())

    def failing(event):
        raise DiskFull("backup volume /mnt/backups is full")

    (event,) = parse_message(
        json.dumps(
            {
                "Records": [
                    {
                        "eventTime": "2026-01-01T00:00:00.000Z",
                        "eventName": "ObjectCreated:Put",
                        "s3": {"bucket": {"name": BUCKET}, "object": {"key": "c.txt"}},
                    }
                ]
            }
        )
    ).events
    with pytest.raises(DiskFull):  # still raised: the consumer decides (pause, hold back)
        monitoring.observe(failing)(event)
    monitoring.alerts.stop()
    assert inbox_messages(aws, inbox) == []


def test_the_disk_job_forecasts_days_until_full_for_cloudwatch_prometheus_and_an_alert(
    aws,
    monitored_config,
    topic,  # noqa: F811
):
    """A synthetic usage series (+80 GiB a day on a 60 %-used 1 TiB volume) and the fake
    clock: the forecast reaches CloudWatch and Prometheus, and one disk_filling alert goes
    out while the used percentage is still far below the low-space alarm."""
    _, inbox = topic
    clock = FakeClock()
    gib = 1 << 30
    used = [600 * gib]

    def disk(_root):
        total = 1024 * gib
        return DiskUsage(total, used[0], total - used[0], 100 * used[0] / total)

    monitoring = Monitoring(monitored_config, aws, stats=Stats(), disk=disk, clock=clock.seconds)
    for _ in range(4 * 60):  # the disk job, once a minute for four hours
        clock.advance(minutes=1)
        used[0] += 80 * gib // 1440
        monitoring.check_disk()

    days = monitoring.forecast.days_until_full()
    assert days is not None and 5 < days < 5.3  # ≈ 410 GiB left at 80 GiB a day
    points = {p.name: p.value for p in monitoring.sampler.sample()}
    assert points["DaysUntilFull"] == pytest.approx(days)
    families = {
        f.name: f
        for f in text_string_to_metric_families(
            generate_latest(monitoring.prometheus.registry).decode()
        )
    }
    assert families["backup_agent_days_until_full"].samples[0].value == pytest.approx(days)
    assert monitoring.disk_monitor.state.value == "ok"  # 60-70 % used: no low-space alert yet
    monitoring.alerts.stop()
    (message,) = inbox_messages(aws, inbox)
    assert message["MessageAttributes"]["kind"]["Value"] == "disk_filling"
    assert "will reach its free-space floor in" in message["Message"]
