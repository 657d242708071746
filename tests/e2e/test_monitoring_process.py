"""The real agent process reports through CloudWatch, Prometheus, SNS and SES (moto_server)."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import make_stack
from tests.support.aws import BUCKET
from tests.support.local_aws import FAKE_CREDENTIALS, agent_command, free_port

pytestmark = pytest.mark.e2e

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:backup-alerts"
SENDER = "backup-agent@example.com"


def subscribe_inbox(clients) -> str:
    sns = clients.sns()
    sns.create_topic(Name="backup-alerts")
    inbox = clients.sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    arn = clients.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=TOPIC_ARN, Protocol="sqs", Endpoint=arn)
    return inbox


def inbox_messages(clients, inbox: str) -> list[dict]:
    found = clients.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10)
    return [json.loads(m["Body"]) for m in found.get("Messages", [])]


def moto_data(server) -> dict:
    with urllib.request.urlopen(f"{server.endpoint}/moto-api/data.json", timeout=10) as response:
        return json.loads(response.read())


def test_the_agent_publishes_metrics_serves_prometheus_and_emails_alerts(tmp_path, moto_server):
    port = free_port()
    stack = make_stack(
        tmp_path,
        moto_server,
        metrics={"instance_id": "i-0e2e", "prometheus": f"127.0.0.1:{port}"},
        alerts={
            "email": {"sender": SENDER, "recipients": ["ops@example.com"]},
            "disk_used_percent": 0.001,  # any real filesystem is above this: one alert
        },
        schedules={"metrics": 1, "disk": 1, "queues": 1},
    )
    stack.clients.ses().verify_email_identity(EmailAddress=SENDER)
    agent = stack.start_agent()
    try:
        agent.wait_for("agent.started")
        stack.clients.s3.put_object(Bucket=BUCKET, Key="report.csv", Body=b"a,b\n" * 1000)
        agent.wait_for("backup.stored")
        agent.wait_for("alert.sent")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        assert agent.stop() == 0
    assert families["backup_agent_bytes_backed_up"].samples[0].value == 4000
    assert 0 < families["backup_agent_disk_used_ratio"].samples[0].value <= 1

    cloudwatch = stack.clients.cloudwatch()
    names = {m["MetricName"] for m in cloudwatch.list_metrics(Namespace="BackupAgent")["Metrics"]}
    assert {"BackupsSucceeded", "DiskUsedPercent", "BackupLagSeconds"} <= names

    sent = moto_data(moto_server)["ses"]["Message"]
    emails = [m for m in sent if "filling up" in m["subject"]]
    assert len(emails) == 1, sent
    assert "i-0e2e" in emails[0]["subject"]


def test_a_rejected_configuration_alerts_before_the_agent_exits(tmp_path, moto_server):
    stack = make_stack(tmp_path, moto_server, alerts={"sns_topic_arn": TOPIC_ARN})
    inbox = subscribe_inbox(stack.clients)
    raw = yaml.safe_load(stack.config_path.read_text())
    raw["consumer"]["workers"] = 0  # invalid: at least one worker
    stack.config_path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [*agent_command(), "run", "--config", str(stack.config_path)],
        env={**FAKE_CREDENTIALS, "PATH": "/usr/bin:/bin", "STATE_DIRECTORY": str(tmp_path)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (message,) = inbox_messages(stack.clients, inbox)
    assert message["Subject"].startswith("[backup-agent] Configuration rejected")
    assert "consumer.workers" in message["Message"]
