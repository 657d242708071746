"""The backup volume failing under the real agent process: kept full (a size-limited tmpfs),
and unmounted while the agent runs (a bind mount taken away).

With a redrive policy of 3 receives, a volume that stays full must not walk the waiting
events into the dead-letter queue: the agent pauses (no receive while paused), says so once
(the alert, `STATUS=`, the `paused` gauge in Prometheus and CloudWatch), leaves no partial
copy and no leaked space, stays up, and once space returns (the tmpfs remounted larger,
standing in for a grown EBS volume) backs up every object without a redrive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.e2e.conftest import Stack, make_stack
from tests.e2e.test_systemd_notify import NotifySocket
from tests.reliability.pipeline import notification, s3_record, wait_until
from tests.reliability.test_alerts_e2e import TOPIC, Inbox
from tests.support.aws import BUCKET, TABLE
from tests.support.local_aws import free_port
from tests.support.tmpfs import MiB, fill, remount, small_filesystem

pytestmark = pytest.mark.e2e

# A 1 MiB floor; resume once 4 MiB are free above it; look again every 1, 2, 2, 2 … s.
LOW_SPACE = {"min_free_bytes": MiB, "resume_headroom_bytes": 4 * MiB, "pause_recheck_max": "2s"}
KEPT_FULL_SECONDS = 25  # the old retry schedule (1 s … 5 s) redrove a message within ~10 s


def _drain(stack) -> None:
    sqs, url = stack.clients.sqs, stack.config.queue.url
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def _depth(stack: Stack, url: str) -> int:
    visible, invisible = stack.queue_depth(url)
    return visible + invisible


class DrainedNotifySocket(NotifySocket):
    """$NOTIFY_SOCKET read on a thread, as systemd does: an unread datagram socket fills
    after a few watchdog pings and then blocks the agent's main loop."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096).decode()
            except OSError:
                return  # closed
            with self._lock:
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if line))

    def statuses(self) -> list[str]:
        with self._lock:
            return [m["STATUS"] for m in self.messages if "STATUS" in m]

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        super().close()
        self._thread.join(5)


def _paused_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    return float(families["backup_agent_paused"].samples[0].value)


def _cloudwatch_paused(stack: Stack) -> list[float]:
    now = datetime.now(UTC)
    points = stack.clients.cloudwatch().get_metric_statistics(
        Namespace="BackupAgent",
        MetricName="Paused",
        Dimensions=[
            {"Name": "InstanceId", "Value": "i-0full"},
            {"Name": "Volume", "Value": str(stack.root)},
        ],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    return [p["Maximum"] for p in points]


def test_a_volume_kept_full_pauses_the_agent_and_nothing_reaches_the_dead_letter_queue(
    tmp_path, moto_server
):
    port = free_port()
    stack = make_stack(
        tmp_path,
        moto_server,
        init_volume=False,
        queue={"max_receive_count": 3},
        storage=LOW_SPACE,
        alerts={"sns_topic_arn": TOPIC, "window_seconds": 1},
        metrics={"prometheus": f"127.0.0.1:{port}", "instance_id": "i-0full"},
        schedules={"metrics": 1, "disk": 1, "queues": 1},
    )
    inbox = Inbox(stack)
    dlq = stack.clients.sqs.get_queue_url(QueueName="backup-events-dlq")["QueueUrl"]
    notify = DrainedNotifySocket(tmp_path / "notify.sock")
    with small_filesystem(stack.root, "16m"), contextlib.closing(notify):
        volume = Volume(stack.root)
        volume.initialise("vol-small")
        fill(stack.root, leave=int(1.5 * MiB))  # 0.5 MiB above the floor
        free_when_full = shutil.disk_usage(stack.root).free
        # Without a size in its event (sent first): the copy starts and meets a real ENOSPC.
        objects = {"full/sizeless.bin": os.urandom(3 * MiB)}
        put = stack.clients.s3.put_object(
            Bucket=BUCKET, Key="full/sizeless.bin", Body=objects["full/sizeless.bin"]
        )
        _drain(stack)
        stack.clients.sqs.send_message(
            QueueUrl=stack.config.queue.url,
            MessageBody=json.dumps(
                notification(s3_record(BUCKET, "full/sizeless.bin", etag=put["ETag"].strip('"')))
            ),
        )
        # With a size (moto's own events): refused by the room check before a byte is written.
        for n in range(4):
            objects[f"full/sized-{n}.bin"] = os.urandom(MiB)
            stack.clients.s3.put_object(
                Bucket=BUCKET, Key=f"full/sized-{n}.bin", Body=objects[f"full/sized-{n}.bin"]
            )
        agent = stack.start_agent(env={"NOTIFY_SOCKET": str(notify.path)})
        try:
            (paused,) = agent.wait_for("consumer.paused", timeout=30)
            assert paused["free_bytes"] <= 1.5 * MiB
            alert = inbox.wait_for("backups_paused")
            assert "at or below" in alert["text"] or "less than" in alert["text"]
            assert "14.0 days (its retention)" in alert["text"]
            wait_until(lambda: any(s.startswith("paused: ") for s in notify.statuses()), 10)
            status = next(s for s in notify.statuses() if s.startswith("paused: "))
            assert status.startswith("paused: backup volume") and " MiB free" in status
            assert _paused_gauge(port) == 1

            time.sleep(KEPT_FULL_SECONDS)  # kept full: the agent looks again every 2 s

            assert agent.process.poll() is None  # still up
            assert _depth(stack, dlq) == 0  # nothing redriven
            assert _depth(stack, stack.config.queue.url) == len(objects)  # every event waits
            assert stack.queue_depth()[1] == 0  # none held invisible: all given back
            failed = agent.log_events_named("backup.failed")
            assert 1 <= len(failed) <= 2  # the first batch only (2 workers), then no receive
            assert all(e["error_type"] == "DiskFull" and e["paused"] for e in failed)
            reasons = {e["key"]: str(e["error"]) for e in failed}
            assert "No space left on device" in reasons["full/sizeless.bin"]  # a real ENOSPC
            assert len(agent.log_events_named("consumer.paused")) == 1
            assert not any(volume.tmp_dir.iterdir())  # temp files removed
            assert shutil.disk_usage(stack.root).free >= free_when_full - 64 * 1024  # no leak
            assert not any(volume.objects_dir.rglob("*.zst"))

            remount(stack.root, "64m")  # space returns: the volume was grown
            agent.wait_for("consumer.resumed", timeout=30)
            agent.wait_for("backup.stored", count=len(objects), timeout=60)
            wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
            resumed = inbox.wait_for("backups_resumed")
            assert str(stack.root) in resumed["text"]
            assert _paused_gauge(port) == 0
            wait_until(lambda: not notify.statuses()[-1].startswith("paused"), 10)
            wait_until(lambda: 1.0 in _cloudwatch_paused(stack), timeout=30, every=0.5)
        finally:
            code = agent.stop(timeout=30)
        assert code == 0
        assert _depth(stack, dlq) == 0
        kinds = [a["kind"] for a in inbox.poll()]
        assert kinds.count("backups_paused") == 1 and kinds.count("backups_resumed") == 1
        assert "backup_failed" not in kinds  # nothing given up on
        ledger = Ledger(stack.clients.dynamodb, TABLE)
        for key, body in objects.items():
            latest = ledger.latest(BUCKET, key)
            assert latest is not None and latest.sha256 == hashlib.sha256(body).hexdigest()
            volume.verify_copy(latest.sha256, len(body))
        assert list(volume.tmp_dir.iterdir()) == []


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("bind-mounting the volume needs root")
    done = subprocess.run(
        ["mount", "--bind", str(source), str(target)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_volume_unmounted_under_the_agent_pauses_it_until_the_volume_is_back(
    tmp_path, moto_server
):
    stack = make_stack(tmp_path, moto_server, init_volume=False, storage=LOW_SPACE)
    device = tmp_path / "device"  # stands in for the EBS volume
    device.mkdir()
    Volume(device).initialise("vol-ebs")
    with bind_mount(device, stack.root):
        agent = stack.start_agent()
        try:
            agent.wait_for("agent.started", timeout=30)
            stack.clients.s3.put_object(Bucket=BUCKET, Key="mount/before.txt", Body=b"one")
            agent.wait_for("backup.stored", timeout=30)

            subprocess.run(["umount", str(stack.root)], check=True)  # the volume goes away
            (paused,) = agent.wait_for("consumer.paused", timeout=30)
            assert paused["reason"].startswith("backup volume not ready:")
            stack.clients.s3.put_object(Bucket=BUCKET, Key="mount/during.txt", Body=b"two")
            time.sleep(3)
            assert stack.queue_depth() == (1, 0)  # waits in the queue, not received
            assert list(stack.root.iterdir()) == []  # nothing written to the bare mount point
            assert agent.process.poll() is None

            subprocess.run(["mount", "--bind", str(device), str(stack.root)], check=True)
            agent.wait_for("consumer.resumed", timeout=30)
            agent.wait_for("backup.stored", count=2, timeout=30)
            wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
        finally:
            assert agent.stop(timeout=30) == 0
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    for key in ("mount/before.txt", "mount/during.txt"):
        latest = ledger.latest(BUCKET, key)
        assert latest is not None
        Volume(device).verify_copy(latest.sha256, latest.size)
