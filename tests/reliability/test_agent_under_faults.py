"""The real agent process with every AWS call going through a fault-injecting proxy:
throttling, 500s, connections dropped before and after the service acted, slow answers.
Nothing lost, nothing duplicated, no message deleted early, and healthy afterwards.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable

import pytest

from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from bench.proxy import DROP, LOST_RESPONSE, SERVER_ERROR, SLOW, THROTTLE, FaultProxy
from tests.e2e.conftest import Stack, make_stack
from tests.reliability.audit import DeleteAudit
from tests.reliability.conftest import point_agent_at
from tests.reliability.pipeline import assert_backed_up_once, wait_until
from tests.support.aws import BUCKET, TABLE

pytestmark = pytest.mark.e2e

KINDS = [THROTTLE, SERVER_ERROR, DROP, LOST_RESPONSE, SLOW]


def upload_and_wait_for_records(
    stack: Stack, ledger: Ledger, objects: dict[str, bytes], *, timeout: float, every: float
) -> None:
    """Upload `objects`, then wait for an empty queue and a ledger record of every key."""
    for key, body in objects.items():
        stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    wait_until(
        lambda: stack.queue_depth() == (0, 0) and all(ledger.latest(BUCKET, k) for k in objects),
        timeout=timeout,
        every=every,
    )


def faults_on_every_service(rng: random.Random) -> Callable[[str, str], str | None]:
    """A fault on 15% of the requests, at random, and always on each service's first request
    (S3's first GetObject): the agent makes one GET per object and the test has 15 objects,
    so chance alone left S3 without a fault in about one run in twenty once GetObjectTagging
    was no longer sent for untagged objects."""
    owed = {"s3", "sqs", "dynamodb"}
    lock = threading.Lock()

    def rule(service: str, operation: str) -> str | None:
        with lock:  # the proxy serves each request on its own thread
            if service in owed and (service != "s3" or operation == "GetObject"):
                owed.discard(service)
                return rng.choice(KINDS)
            return rng.choice(KINDS) if rng.random() < 0.15 else None

    return rule


def test_the_agent_rides_out_faults_on_s3_sqs_and_dynamodb(tmp_path, moto_server):
    rng = random.Random(4242)
    stack = make_stack(
        tmp_path,
        moto_server,
        queue={"visibility_timeout": 10},
        aws={"max_attempts": 4, "retry_mode": "standard"},
    )
    volume = Volume(stack.root)
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    audit = DeleteAudit(ledger, volume)
    objects = {f"faulty/{i:02d}.bin": rng.randbytes(rng.randrange(1, 1_500_000)) for i in range(14)}
    objects["faulty/twin.bin"] = objects["faulty/00.bin"]
    with FaultProxy(moto_server.endpoint) as proxy:
        proxy.slow_seconds = 1.0
        proxy.rules.append(faults_on_every_service(rng))
        proxy.observers.append(audit.observe)
        proxy.auditors.append(audit.audit)
        point_agent_at(stack, proxy.endpoint)
        agent = stack.start_agent()
        try:
            agent.wait_for("agent.started", timeout=30)
            upload_and_wait_for_records(stack, ledger, objects, timeout=120, every=0.5)
            services = {name.split(".")[0] for name in proxy.injected}
            assert {"s3", "sqs", "dynamodb"} <= services, proxy.injected

            proxy.rules.clear()
            stack.clients.s3.put_object(Bucket=BUCKET, Key="faulty/after.txt", Body=b"healthy")
            wait_until(lambda: ledger.latest(BUCKET, "faulty/after.txt") is not None, timeout=30)
            assert agent.process.poll() is None
        finally:
            code = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    assert audit.violations == []
    assert_backed_up_once(ledger, volume, BUCKET, {**objects, "faulty/after.txt": b"healthy"})


def _sum_in_cloudwatch(cloudwatch, metric: str) -> float:
    from datetime import UTC, datetime, timedelta

    now, total = datetime.now(UTC), 0.0
    listed = cloudwatch.list_metrics(Namespace="BackupAgent", MetricName=metric)["Metrics"]
    distinct = {tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in listed}
    for dimensions in distinct:
        points = cloudwatch.get_metric_statistics(
            Namespace="BackupAgent",
            MetricName=metric,
            Dimensions=[{"Name": n, "Value": v} for n, v in dimensions],
            StartTime=now - timedelta(hours=1),
            EndTime=now + timedelta(hours=1),
            Period=3600,
            Statistics=["Sum"],
        )["Datapoints"]
        total += sum(p["Sum"] for p in points)
    return total


def test_cloudwatch_sns_and_ses_down_backups_flow_and_alerts_arrive_after(tmp_path, moto_server):
    """CloudWatch, SNS and SES fail every call (throttle, 500, dropped connection) from the
    start: the "volume not ready" alert cannot go out, backups flow regardless, the
    CloudWatch outage is logged once; after recovery the alert is delivered by SNS and SES
    and every backup is counted in CloudWatch."""
    from tests.reliability.test_alerts_e2e import TOPIC, Inbox

    rng = random.Random(77)
    stack = make_stack(
        tmp_path,
        moto_server,
        init_volume=False,
        aws={"max_attempts": 2, "retry_mode": "standard"},
        alerts={
            "sns_topic_arn": TOPIC,
            "email": {"sender": "backup@example.com", "recipients": ["ops@example.com"]},
            "window_seconds": 2,
        },
        metrics={"prometheus": None},
        schedules={"metrics": 1, "disk": 60, "queues": 60},
    )
    inbox = Inbox(stack)
    ses = stack.clients.ses()
    ses.verify_email_identity(EmailAddress="backup@example.com")
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    objects = {f"cw/{i:02d}.bin": rng.randbytes(rng.randrange(1, 300_000)) for i in range(10)}
    monitoring = ("cloudwatch", "sns", "ses")
    with FaultProxy(moto_server.endpoint) as proxy:
        outage = [THROTTLE, SERVER_ERROR, DROP]
        proxy.rules.append(lambda s, _o: rng.choice(outage) if s in monitoring else None)
        point_agent_at(stack, proxy.endpoint)
        agent = stack.start_agent()
        try:
            failed = agent.wait_for("alert.delivery_failed", count=2, timeout=60)
            assert {e["channel"] for e in failed} == {"sns", "email"}
            Volume(stack.root).initialise("vol-cw")  # the volume appears
            agent.wait_for("agent.started", timeout=30)
            upload_and_wait_for_records(stack, ledger, objects, timeout=60, every=0.2)
            # more than one metrics flush failed meanwhile (each is 3 attempts)
            wait_until(lambda: proxy.calls["cloudwatch.PutMetricData"] >= 6, timeout=30)
            assert (
                proxy.injected["sns.Publish:" + THROTTLE]
                + proxy.injected["sns.Publish:" + SERVER_ERROR]
                + proxy.injected["sns.Publish:" + DROP]
                > 0
            )

            proxy.rules.clear()
            back = agent.wait_for("metrics.publish_recovered", timeout=30)[0]
            assert back["failed_attempts"] >= 2 and back["dropped"] == 0
            recovered = agent.wait_for("alert.delivery_recovered", count=2, timeout=60)
            assert {e["channel"] for e in recovered} == {"sns", "email"}
            alert = inbox.wait_for("operational")
            assert "backup volume not ready" in alert["text"]
            assert ses.get_send_quota()["SentLast24Hours"] >= 1
            assert agent.process.poll() is None
        finally:
            code = agent.stop(signal.SIGTERM, timeout=30)
    assert code == 0
    assert len(agent.log_events_named("metrics.publish_failed")) == 1  # once per outage
    assert len(agent.log_events_named("metrics.publish_recovered")) == 1
    assert _sum_in_cloudwatch(stack.clients.cloudwatch(), "BackupsSucceeded") == len(objects)
    assert_backed_up_once(ledger, Volume(stack.root), BUCKET, objects)
