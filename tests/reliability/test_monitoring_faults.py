"""CloudWatch, SNS and SES faults (throttling, 500/503, timeouts, dropped connections)
injected with botocore event hooks against in-process moto. Backups never wait for them,
an outage is logged once, alerts raised during an outage are delivered after it, nothing
is lost.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import boto3
from moto import mock_aws
from structlog.testing import capture_logs

from agent.aws import client_config
from agent.monitoring.alerts import AlertKind, operational
from agent.monitoring.channels import EmailChannel, SnsChannel
from agent.monitoring.dispatcher import AlertDispatcher
from agent.monitoring.metrics import CloudWatchPublisher, Sampler
from tests.reliability.pipeline import (
    RESET,
    SERVER_ERROR,
    THROTTLE,
    TIMEOUT,
    UNAVAILABLE,
    Faults,
    assert_backed_up_once,
    wait_until,
)
from tests.support.aws import BUCKET, REGION, make_config

ALL_KINDS = [THROTTLE, SERVER_ERROR, UNAVAILABLE, TIMEOUT, RESET]
SENDER = "backup@example.com"


def _alert_targets() -> tuple[object, str, object, str]:
    """An SNS topic with an SQS queue subscribed (raw delivery) and a verified SES sender."""
    session = boto3.session.Session(region_name=REGION)
    sns, sqs, ses = session.client("sns"), session.client("sqs"), session.client("ses")
    topic = sns.create_topic(Name="backup-alerts")["TopicArn"]
    inbox = sqs.create_queue(QueueName="alert-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    ses.verify_email_identity(EmailAddress=SENDER)
    return sqs, inbox, ses, topic


def _drain_inbox(sqs, inbox: str) -> list[dict]:
    messages = []
    while True:
        got = sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return messages
        for message in got:
            messages.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=inbox, ReceiptHandle=message["ReceiptHandle"])


def _agent_client(service: str):
    """A client with the agent's settings (`client_config`), one retry: outages outlast it."""
    settings = client_config(make_config(Path("/srv/backup"), aws={"max_attempts": 1}))
    return boto3.session.Session(region_name=REGION).client(service, config=settings)


def _sent_emails() -> list[str]:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return [m.subject for m in ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages]


def test_alerts_raised_during_an_sns_and_ses_outage_are_delivered_after_it():
    with mock_aws():
        sqs, inbox, _ses, topic = _alert_targets()
        agent_sns, agent_ses = _agent_client("sns"), _agent_client("ses")
        faults = Faults().attach(agent_sns, agent_ses)
        dispatcher = AlertDispatcher(
            [SnsChannel(agent_sns, topic), EmailChannel(agent_ses, SENDER, ["ops@example.com"])],
            window_seconds=3600,
            tick_seconds=0.05,
            retry_seconds=0.2,
        )
        dispatcher.start()
        rng = random.Random(3)
        faults.randomly("sns.Publish", 1.0, ALL_KINDS, rng)
        faults.randomly("ses.SendEmail", 1.0, ALL_KINDS, rng)
        with capture_logs() as logs:
            dispatcher.submit(operational("backup volume not ready", "/srv/backup: no marker"))
            for n in range(20):  # the storm: folded into one summary
                dispatcher.submit(operational(f"volume {n}", "unmounted"))
            # the outage outlasts botocore's retries: both channels give up once
            wait_until(lambda: set(dispatcher.delivery_failures) == {"sns", "email"})
            faults.clear()
            wait_until(lambda: dispatcher.sent_counts().get("operational", 0) >= 2, timeout=15)
            dispatcher.stop()

        failed = [e for e in logs if e["event"] == "alert.delivery_failed"]
        assert sorted(e["channel"] for e in failed) == ["email", "sns"]  # once per outage
        assert {e["channel"] for e in logs if e["event"] == "alert.delivery_recovered"} == {
            "email",
            "sns",
        }
        delivered = _drain_inbox(sqs, inbox)
        subjects = sorted(m["Subject"] for m in delivered)
        assert len(subjects) == 2, subjects  # the first alert, then the summary of 20
        assert any("20 more" in s for s in subjects), subjects
        assert any("not ready" in m["Message"] for m in delivered)
        assert sorted(_sent_emails()) == subjects
        assert dispatcher.sent_counts() == {AlertKind.OPERATIONAL.value: 4}  # 2 per channel


def _backups_succeeded_in_cloudwatch(cloudwatch) -> float:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    points = cloudwatch.get_metric_statistics(
        Namespace="BackupAgent",
        MetricName="BackupsSucceeded",
        Dimensions=[{"Name": "InstanceId", "Value": "i-reliability"}],
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(hours=1),
        Period=3600,
        Statistics=["Sum"],
    )["Datapoints"]
    return sum(p["Sum"] for p in points)


def test_backups_flow_while_cloudwatch_fails_and_hangs_and_no_datapoint_is_lost(make_pipeline):
    """A CloudWatch outage (errors, then a call that hangs) while 12 objects are backed up:
    the backups finish regardless, the outage is logged once, its end once, and every
    success counted during it reaches CloudWatch after it."""
    pipeline = make_pipeline()
    cloudwatch = _agent_client("cloudwatch")
    faults = Faults().attach(cloudwatch)
    faults.randomly("cloudwatch.PutMetricData", 1.0, ALL_KINDS, random.Random(5))
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", {"InstanceId": "i-reliability"})
    sampler = Sampler(pipeline.consumer.stats, pipeline.volume.root)
    stop, hang = threading.Event(), threading.Event()
    objects = {f"cw/{i:02d}.bin": os.urandom(50_000) for i in range(12)}

    def metrics_job() -> None:  # the scheduled job, far more often than every 60 s
        while not stop.is_set():
            publisher.add(sampler.sample())
            publisher.flush()
            stop.wait(0.02)

    def hung(**_kwargs) -> None:
        hang.wait(30)  # a PutMetricData that does not answer until the outage ends

    with capture_logs() as logs:
        job = threading.Thread(target=metrics_job, daemon=True)
        job.start()
        wait_until(lambda: publisher.failed_attempts >= 5)
        cloudwatch.meta.events.register_first("before-send.cloudwatch.PutMetricData", hung)
        for key, body in objects.items():
            pipeline.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        pipeline.run_until(
            lambda: pipeline.drained() and all(pipeline.ledger.latest(BUCKET, k) for k in objects),
            timeout=60,
        )
        assert publisher.sent == 0  # the whole backup ran inside the outage
        faults.clear()
        hang.set()
        wait_until(lambda: publisher.sent > 0 and publisher.pending() < 20)
        stop.set()
        job.join(10)
        publisher.add(sampler.sample())
        publisher.flush()

    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, objects)
    assert [e["event"] for e in logs if e["event"].startswith("metrics.publish")] == [
        "metrics.publish_failed",
        "metrics.publish_recovered",
    ]
    assert publisher.pending() == 0 and publisher.dropped == 0
    assert _backups_succeeded_in_cloudwatch(pipeline.clients.cloudwatch()) == 12
