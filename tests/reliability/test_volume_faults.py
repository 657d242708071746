"""The backup volume failing under the real agent process: full (a size-limited tmpfs), and
unmounted while the agent runs (a bind mount taken away).

A full volume must leave no partial copy and no leaked space, keep the message, keep the
agent up (logging `backup.failed` with DiskFull), and resume by itself once space is freed.
The "raise the alert" part belongs to the alerts module (another branch): see
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.e2e.conftest import make_stack
from tests.reliability.pipeline import notification, s3_record, wait_until
from tests.support.aws import BUCKET, TABLE

pytestmark = pytest.mark.e2e

MiB = 1 << 20


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at `path`, unmounted afterwards; skips when mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip(
            "mounting a tmpfs the test can also see needs root; unprivileged, only the agent's"
            " own `unshare -rm` namespace could mount it (not wired up)"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(root: Path, leave: int) -> Path:
    filler = root / "filler.bin"
    free = shutil.disk_usage(root).free
    with filler.open("wb") as handle:
        remaining = free - leave
        while remaining > 0:
            chunk = min(remaining, MiB)
            handle.write(b"\0" * chunk)
            remaining -= chunk
    return filler


def _drain(stack) -> None:
    sqs, url = stack.clients.sqs, stack.config.queue.url
    while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_a_full_volume_keeps_the_message_leaves_nothing_and_resumes_when_freed(
    tmp_path, moto_server
):
    stack = make_stack(tmp_path, moto_server, init_volume=False)
    with small_filesystem(stack.root, "16m"):
        volume = Volume(stack.root)
        volume.initialise("vol-small")
        filler = _fill(stack.root, leave=int(1.5 * MiB))
        free_when_full = shutil.disk_usage(stack.root).free
        # Without a size in its event: the copy starts and meets ENOSPC half-way.
        sizeless = os.urandom(3 * MiB)
        put = stack.clients.s3.put_object(Bucket=BUCKET, Key="full/sizeless.bin", Body=sizeless)
        _drain(stack)
        stack.clients.sqs.send_message(
            QueueUrl=stack.config.queue.url,
            MessageBody=json.dumps(
                notification(s3_record(BUCKET, "full/sizeless.bin", etag=put["ETag"].strip('"')))
            ),
        )
        # With a size (moto's own event): refused before a byte is written.
        sized = os.urandom(3 * MiB)
        stack.clients.s3.put_object(Bucket=BUCKET, Key="full/sized.bin", Body=sized)
        agent = stack.start_agent()
        try:
            failed = agent.wait_for("backup.failed", count=4, timeout=30)

            assert {e["key"] for e in failed} == {"full/sizeless.bin", "full/sized.bin"}
            assert all(e["error_type"] == "DiskFull" and e["retryable"] for e in failed)
            reasons = {e["key"]: str(e["error"]) for e in failed}
            assert "No space left on device" in reasons["full/sizeless.bin"]  # a real ENOSPC
            assert "bytes free, need" in reasons["full/sized.bin"]  # the pre-write check
            assert agent.process.poll() is None  # still up
            wait_until(lambda: not any(volume.tmp_dir.iterdir()), timeout=5, every=0.01)
            assert shutil.disk_usage(stack.root).free >= free_when_full - 64 * 1024  # no leak
            assert not any(volume.objects_dir.rglob("*.zst"))
            visible, invisible = stack.queue_depth()
            assert visible + invisible == 2  # both messages kept

            filler.unlink()
            agent.wait_for("backup.stored", count=2, timeout=30)
            wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
        finally:
            code = agent.stop(timeout=30)
        assert code == 0
        ledger = Ledger(stack.clients.dynamodb, TABLE)
        for key, body in (("full/sizeless.bin", sizeless), ("full/sized.bin", sized)):
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


def test_a_volume_unmounted_under_the_agent_is_never_written_through(tmp_path, moto_server):
    stack = make_stack(tmp_path, moto_server, init_volume=False)
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
            stack.clients.s3.put_object(Bucket=BUCKET, Key="mount/during.txt", Body=b"two")
            failed = agent.wait_for("backup.failed", timeout=30)
            assert failed[0]["error_type"] == "VolumeNotReady"
            assert list(stack.root.iterdir()) == []  # nothing written to the bare mount point
            assert agent.process.poll() is None

            subprocess.run(["mount", "--bind", str(device), str(stack.root)], check=True)
            agent.wait_for("backup.stored", count=2, timeout=30)
            wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
        finally:
            assert agent.stop(timeout=30) == 0
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    for key in ("mount/before.txt", "mount/during.txt"):
        latest = ledger.latest(BUCKET, key)
        assert latest is not None
        Volume(device).verify_copy(latest.sha256, latest.size)
