"""Restore equals what S3 serves: the real agent and `backup-restore` against moto_server.

Every scenario changes a versioned bucket the way an S3 user would, delivers the events real
S3 sends (moto's carry no versionId or sequencer and none for a delete marker, so they are
hand-made here, see docs/testing.md), lets the real `backup-agent run` process handle them,
then compares what `backup-restore` brings back with what S3 itself serves for the key.

Event shapes: https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html
Delete semantics: https://docs.aws.amazon.com/AmazonS3/latest/userguide/DeletingObjectVersions.html
(a DELETE with a versionId removes that version for good; when it was the current one the
previous version becomes current again; removing a delete marker brings the key back).
Archived objects: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html
(GetObject on GLACIER / DEEP_ARCHIVE answers InvalidObjectState).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.e2e.conftest import Stack, make_stack
from tests.support.aws import BUCKET
from tests.support.events import notification, s3_record
from tests.support.local_aws import FAKE_CREDENTIALS, agent_command
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
RECOVERY = "recovery-area"
_sequencer = itertools.count(0x100)


@pytest.fixture
def truth(tmp_path, moto_server):
    stack = make_stack(tmp_path, moto_server, restore={"recovery_buckets": [RECOVERY]})
    s3 = stack.clients.s3
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=RECOVERY)
    # Only the events this test sends: moto's own lack versionId and sequencer.
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    agent = stack.start_agent()
    agent.wait_for("agent.started")
    yield Truth(stack, agent)
    agent.stop(timeout=30)


class Truth:
    def __init__(self, stack: Stack, agent: Any) -> None:
        self.stack, self.agent = stack, agent
        self.s3 = stack.clients.s3

    # -- the bucket, and the events S3 sends ------------------------------------------------

    def event(self, key: str, name: str, **obj: Any) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return s3_record(
            key, event_name=name, event_time=now, sequencer=f"{next(_sequencer):016X}", **obj
        )

    def put(self, key: str, body: bytes, **extra: Any) -> tuple[str, dict[str, Any]]:
        answer = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)
        version = answer["VersionId"]
        etag = answer["ETag"].strip('"')
        return version, self.event(
            key, "ObjectCreated:Put", versionId=version, size=len(body), eTag=etag
        )

    def delete(self, key: str, name: str = "ObjectRemoved:DeleteMarkerCreated") -> dict[str, Any]:
        marker = self.s3.delete_object(Bucket=BUCKET, Key=key)["VersionId"]
        return self.event(key, name, versionId=marker)

    def delete_version(self, key: str, version: str) -> dict[str, Any]:
        self.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version)
        return self.event(key, "ObjectRemoved:Delete", versionId=version)

    def deliver(self, *records: dict[str, Any]) -> None:
        """Send each record in its own message and wait until the agent has handled it."""
        for record in records:
            self.stack.clients.sqs.send_message(
                QueueUrl=self.stack.config.queue.url, MessageBody=notification(record)
            )
        wait_until(lambda: self.stack.queue_depth() == (0, 0), timeout=60)

    def served(self, key: str) -> bytes | None:
        """What S3 answers for the key now: its current version's bytes, or None."""
        try:
            return bytes(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    # -- the commands, as separate processes --------------------------------------------------

    def run(self, command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **FAKE_CREDENTIALS}
        return subprocess.run(
            [*command, "--config", str(self.stack.config_path), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
            check=False,
        )

    def backup_restore(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, str(REPO / "scripts" / "restore"), command], *args)

    def restored(self, key: str, where: Path) -> bytes | None:
        """What `backup-restore restore --key K --at NOW` brings back: bytes, or None.

        `--at` asks for what S3 served at that moment. Without it, a key asked for by name is
        restored even when deleted in S3 (the usual rescue), which S3 itself would not serve.
        """
        now = datetime.now(UTC).isoformat()
        done = self.backup_restore("restore", "--key", key, "--at", now, "--to", str(where))
        files = [p for p in where.rglob("*") if p.is_file()] if where.exists() else []
        if done.returncode == 0 and files:
            assert len(files) == 1, files
            return files[0].read_bytes()
        assert "deleted" in done.stdout + done.stderr, (done.returncode, done.stdout, done.stderr)
        return None

    def reconcile(self) -> None:
        done = self.run([*agent_command(), "reconcile"])
        assert done.returncode == 0, done.stderr


def test_a_version_only_reconcile_saw_stays_current_when_an_older_event_is_redriven(
    truth, tmp_path
):
    _, first = truth.put("report.txt", b"version 1")
    truth.deliver(first)
    time.sleep(1.1)  # S3's LastModified has one-second resolution: the next version is later
    truth.put("report.txt", b"version 2")  # its event is lost (a purged queue, say)
    truth.reconcile()
    truth.deliver(first)  # the older event, redriven from the dead-letter queue

    assert truth.served("report.txt") == b"version 2"
    assert truth.restored("report.txt", tmp_path / "r") == truth.served("report.txt")


def test_deleting_an_old_version_for_good_leaves_the_key_as_s3_serves_it(truth, tmp_path):
    old, put_old = truth.put("old.txt", b"old")
    _, put_new = truth.put("old.txt", b"new")
    truth.deliver(put_old, put_new, truth.delete_version("old.txt", old))

    assert truth.served("old.txt") == b"new"
    assert truth.restored("old.txt", tmp_path / "r") == truth.served("old.txt")


def test_deleting_the_current_version_for_good_brings_the_previous_one_back(truth, tmp_path):
    _, put_old = truth.put("current.txt", b"previous")
    new, put_new = truth.put("current.txt", b"current")
    truth.deliver(put_old, put_new, truth.delete_version("current.txt", new))

    assert truth.served("current.txt") == b"previous"
    assert truth.restored("current.txt", tmp_path / "r") == truth.served("current.txt")


def test_removing_a_delete_marker_brings_the_key_back(truth, tmp_path):
    _, put = truth.put("undelete.txt", b"back again")
    marker_event = truth.delete("undelete.txt")
    marker = marker_event["s3"]["object"]["versionId"]
    truth.deliver(put, marker_event)
    assert truth.restored("undelete.txt", tmp_path / "deleted") is None
    assert truth.served("undelete.txt") is None

    truth.deliver(truth.delete_version("undelete.txt", marker))

    assert truth.served("undelete.txt") == b"back again"
    assert truth.restored("undelete.txt", tmp_path / "r") == truth.served("undelete.txt")


def test_a_lifecycle_expiration_deletes_the_key_in_the_backup_too(truth, tmp_path):
    _, put = truth.put("expiring.log", b"short-lived")
    truth.deliver(put, truth.delete("expiring.log", "LifecycleExpiration:DeleteMarkerCreated"))

    assert truth.served("expiring.log") is None
    assert truth.restored("expiring.log", tmp_path / "r") is None
    rescue = truth.backup_restore("restore", "--key", "expiring.log", "--to", str(tmp_path / "k"))
    assert rescue.returncode == 0, rescue.stderr  # by name: the last content, as the rescue
    assert (tmp_path / "k" / "expiring.log").read_bytes() == b"short-lived"


def test_content_headers_metadata_and_tags_come_back_with_restore_to_s3(truth):
    _, put = truth.put(
        "site/index.html",
        b"<html>hello</html>",
        ContentType="text/html; charset=utf-8",
        CacheControl="max-age=300",
        ContentDisposition='inline; filename="index.html"',
        Metadata={"owner": "web-team"},
        Tagging="team=web&tier=public",
    )
    truth.deliver(put)

    done = truth.backup_restore(
        "restore", "--key", "site/index.html", "--to-s3", "--bucket", RECOVERY
    )

    assert done.returncode == 0, done.stderr
    original = truth.s3.head_object(Bucket=BUCKET, Key="site/index.html")
    restored = truth.s3.head_object(Bucket=RECOVERY, Key="site/index.html")
    for header in ("ContentType", "CacheControl", "ContentDisposition"):
        assert restored.get(header) == original.get(header), header
    assert restored["Metadata"]["owner"] == "web-team"
    tags = truth.s3.get_object_tagging(Bucket=RECOVERY, Key="site/index.html")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "web", "tier": "public"}
    body = truth.s3.get_object(Bucket=RECOVERY, Key="site/index.html")["Body"].read()
    assert body == truth.served("site/index.html")


def test_a_glacier_object_is_reported_archived_not_dead_lettered(truth):
    _, put = truth.put("cold/archive.tar", b"frozen", StorageClass="GLACIER")
    truth.deliver(put)

    truth.agent.wait_for("backup.archived")
    dlq = truth.stack.clients.sqs.get_queue_url(
        QueueName=truth.stack.config.queue.dead_letter_name
    )["QueueUrl"]
    assert truth.stack.queue_depth(dlq) == (0, 0)
    listed = truth.backup_restore("list", "--prefix", "cold/", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert [(r["key"], r["state"], r["storage_class"]) for r in rows] == [
        ("cold/archive.tar", "archived", "GLACIER")
    ]
