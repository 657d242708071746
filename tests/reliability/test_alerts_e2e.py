"""Alerts from the real agent process when the volume fails: SNS → an SQS queue subscribed
to the topic (raw delivery) is the operator's inbox.

* a full volume raises the disk-space alert and the backups-paused alert (not one per failed
  object); nothing reaches the dead-letter queue; once space is freed the recovery and the
  resumed alerts arrive and the waiting and new objects flow without a restart;
* a volume that is not mounted at start raises "backup volume not ready"; the agent starts
  by itself once it is.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from agent.storage.volume import Volume
from tests.e2e.conftest import Stack, make_stack
from tests.reliability.pipeline import wait_until
from tests.support.aws import BUCKET
from tests.support.tmpfs import MiB, small_filesystem
from tests.support.tmpfs import fill as _fill

pytestmark = pytest.mark.e2e

TOPIC = "arn:aws:sns:us-east-1:123456789012:backup-alerts"


class Inbox:
    """An SQS queue subscribed to the alert topic."""

    def __init__(self, stack: Stack) -> None:
        self.sqs = stack.clients.sqs
        sns = stack.clients.sns()
        assert sns.create_topic(Name="backup-alerts")["TopicArn"] == TOPIC
        self.url = self.sqs.create_queue(QueueName="alert-inbox")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        sns.subscribe(
            TopicArn=TOPIC,
            Protocol="sqs",
            Endpoint=arn["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "false"},
        )
        self.alerts: list[dict[str, str]] = []

    def poll(self) -> list[dict[str, str]]:
        got = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get(
            "Messages", []
        )
        for message in got:
            body = json.loads(message["Body"])
            kind = body.get("MessageAttributes", {}).get("kind", {}).get("Value", "")
            self.alerts.append({"kind": kind, "subject": body["Subject"], "text": body["Message"]})
            self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        return self.alerts

    def wait_for(self, kind: str, timeout: float = 30.0) -> dict[str, str]:
        wait_until(lambda: any(a["kind"] == kind for a in self.poll()), timeout, every=0.2)
        return next(a for a in self.alerts if a["kind"] == kind)


def _alerting_stack(tmp_path: Path, moto_server, **sections) -> Stack:
    return make_stack(
        tmp_path,
        moto_server,
        init_volume=False,
        alerts={"sns_topic_arn": TOPIC, "window_seconds": 1, "disk_used_percent": 80},
        metrics={"prometheus": None},
        schedules={"disk": 1, "queues": 1, "metrics": 5},
        **sections,
    )


def test_a_full_volume_raises_the_disk_and_paused_alerts_and_recovers_by_itself(
    tmp_path, moto_server
):
    stack = _alerting_stack(
        tmp_path,
        moto_server,
        queue={"max_receive_count": 3, "retry_base_seconds": 0.2},
        storage={"resume_headroom_bytes": 4 * MiB, "pause_recheck_max": "1s"},
    )
    inbox = Inbox(stack)
    dlq = stack.clients.sqs.get_queue_url(QueueName="backup-events-dlq")["QueueUrl"]
    with small_filesystem(stack.root, "16m"):
        volume = Volume(stack.root)
        volume.initialise("vol-small")
        filler = _fill(stack.root, leave=int(1.5 * MiB))  # ~90 % used
        stack.clients.s3.put_object(Bucket=BUCKET, Key="full/big.bin", Body=os.urandom(3 * MiB))
        agent = stack.start_agent()
        try:
            low = inbox.wait_for("disk_space_low")
            assert str(stack.root) in low["text"]
            paused = inbox.wait_for("backups_paused")
            assert str(stack.root) in paused["text"] and "free" in paused["text"]
            agent.wait_for("consumer.gave_back", timeout=30)
            time.sleep(4)  # kept full through a few checks (1 s apart)
            assert _depth(stack, dlq) == 0  # paused: no receive, no redrive
            assert agent.process.poll() is None

            filler.unlink()
            recovered = inbox.wait_for("disk_space_recovered")
            assert str(stack.root) in recovered["text"]
            inbox.wait_for("backups_resumed")
            body = os.urandom(MiB)
            stack.clients.s3.put_object(Bucket=BUCKET, Key="full/after.bin", Body=body)
            stored = agent.wait_for("backup.stored", count=2, timeout=30)
            assert {e["key"] for e in stored} == {"full/big.bin", "full/after.bin"}
            wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
        finally:
            code = agent.stop(timeout=30)
        assert code == 0
        assert _depth(stack, dlq) == 0  # nothing given up on
        assert list(volume.tmp_dir.iterdir()) == []
    kinds = [a["kind"] for a in inbox.poll()]
    assert kinds.count("disk_space_low") == 1 and kinds.count("disk_space_recovered") == 1
    assert kinds.count("backups_paused") == 1 and kinds.count("backups_resumed") == 1
    assert "backup_failed" not in kinds and "operational" not in kinds


def test_a_volume_not_mounted_at_start_raises_the_alert_and_the_agent_starts_once_it_is(
    tmp_path, moto_server
):
    stack = _alerting_stack(tmp_path, moto_server)
    inbox = Inbox(stack)
    agent = stack.start_agent()  # storage.root exists but holds no volume marker
    try:
        alert = inbox.wait_for("operational")
        assert "backup volume not ready" in alert["text"]
        assert agent.process.poll() is None
        Volume(stack.root).initialise("vol-late")  # the volume is mounted
        agent.wait_for("agent.started", timeout=30)
        stack.clients.s3.put_object(Bucket=BUCKET, Key="late/one.txt", Body=b"one")
        agent.wait_for("backup.stored", timeout=30)
    finally:
        assert agent.stop(timeout=30) == 0
    assert [a["kind"] for a in inbox.poll()].count("operational") == 1  # not once per retry


def _depth(stack: Stack, url: str) -> int:
    attributes = stack.clients.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _rewrite(path: Path, edit) -> None:
    """Save-through-rename, as editors and deployment tools do."""
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(raw)
    temp = path.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump(raw), encoding="utf-8")
    os.replace(temp, path)


def test_a_rejected_config_edit_under_load_alerts_loses_nothing_and_keeps_the_old_config(
    tmp_path, moto_server
):
    import hashlib
    import threading

    from agent.storage.ledger import Ledger
    from tests.support.aws import TABLE

    stack = _alerting_stack(tmp_path, moto_server)
    Volume(stack.root).initialise("vol-reload")
    inbox = Inbox(stack)
    objects = {f"load/{i:03d}.bin": os.urandom(20_000 + i) for i in range(40)}
    agent = stack.start_agent()
    try:
        agent.wait_for("agent.started", timeout=30)
        keys = list(objects)
        first, rest = keys[:20], keys[20:]
        uploader = threading.Thread(
            target=lambda: [
                stack.clients.s3.put_object(Bucket=BUCKET, Key=k, Body=objects[k]) for k in first
            ]
        )
        uploader.start()
        agent.wait_for("backup.stored", count=3, timeout=30)  # backups are flowing

        def broken(raw: dict) -> None:
            raw["consumer"]["workers"] = "many"
            raw["consumer"]["wrokers"] = 3

        _rewrite(stack.config_path, broken)
        rejected = agent.wait_for("config.reload_rejected", timeout=30)[0]
        assert any("consumer.workers" in p for p in rejected["problems"])
        alert = inbox.wait_for("config_rejected")
        assert "consumer.workers" in alert["text"]
        uploader.join()
        for key in rest:  # more load after the rejection
            stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=objects[key])
        agent.wait_for("backup.stored", count=len(objects), timeout=60)

        def valid(raw: dict) -> None:
            raw["consumer"].pop("wrokers")
            raw["consumer"]["workers"] = 3

        _rewrite(stack.config_path, valid)
        reloaded = agent.wait_for("config.reloaded", timeout=30)
        # the diff is against the configuration kept running, not the rejected file
        assert reloaded[0]["applied"] == ["consumer.workers"]
        wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
    finally:
        assert agent.stop(timeout=30) == 0
    assert len(agent.log_events_named("backup.stored")) == len(objects)  # each exactly once
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    volume = Volume(stack.root)
    for key, body in objects.items():
        versions = ledger.versions(BUCKET, key)
        assert [v.sha256 for v in versions] == [hashlib.sha256(body).hexdigest()]
        volume.verify_copy(versions[0].sha256, len(body))
