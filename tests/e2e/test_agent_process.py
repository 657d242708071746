"""The real `backup-agent run` process against moto_server, with moto's own S3 → SQS events."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import zstandard

from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.waiting import wait_until

AWKWARD_KEYS = [
    "plain.txt",
    "with space/and more spaces.txt",
    "ünïcødé/✓ data.csv",
    "plus+sign+.txt",
    "percent%41%2F.txt",
    "../../etc/passwd",
    "/absolute/path.txt",
    "a//b",
    "k" * 1000,
]


def _upload(stack, key: str, body: bytes) -> str:
    stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return hashlib.sha256(body).hexdigest()


def _decompressed_sha256(path) -> str:
    digest = hashlib.sha256()
    decompressor = zstandard.ZstdDecompressor()
    # every frame: copies above 16 MiB are several (docs/design.md, Store)
    with path.open("rb") as raw, decompressor.stream_reader(raw, read_across_frames=True) as reader:
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files_outside(stack) -> list[str]:
    allowed = {stack.root, stack.workdir / "config.yaml"}
    stray = []
    for dirpath, _dirs, files in os.walk(stack.workdir):
        for name in files:
            path = stack.workdir / os.path.relpath(os.path.join(dirpath, name), stack.workdir)
            if stack.root in path.parents or path in allowed or path.suffix == ".log":
                continue
            stray.append(str(path))
    return stray


def test_awkward_keys_are_backed_up_and_verify(stack):
    agent = stack.start_agent()
    agent.wait_for("agent.started")
    expected = {
        key: _upload(stack, key, f"content of {key}\n".encode() * 500) for key in AWKWARD_KEYS
    }

    agent.wait_for("backup.stored", count=len(AWKWARD_KEYS), timeout=60)

    ledger = Ledger(stack.clients.dynamodb, TABLE)
    for key, sha in expected.items():
        latest = ledger.latest(BUCKET, key)
        assert latest is not None, key
        assert latest.sha256 == sha
        copy = stack.root / "objects" / sha[:2] / f"{sha}.zst"
        assert _decompressed_sha256(copy) == sha
    assert _files_outside(stack) == []
    assert not list((stack.root / "tmp").iterdir())


def test_duplicate_delivery_is_a_no_op(stack):
    sha = _upload(stack, "dup.txt", b"same bytes" * 100)
    message = stack.clients.sqs.receive_message(QueueUrl=stack.config.queue.url, WaitTimeSeconds=5)
    body = message["Messages"][0]["Body"]
    stack.clients.sqs.change_message_visibility(
        QueueUrl=stack.config.queue.url,
        ReceiptHandle=message["Messages"][0]["ReceiptHandle"],
        VisibilityTimeout=0,
    )
    stack.clients.sqs.send_message(QueueUrl=stack.config.queue.url, MessageBody=body)
    agent = stack.start_agent()

    agent.wait_for("backup.stored", count=1)
    wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30)

    versions = Ledger(stack.clients.dynamodb, TABLE).versions(BUCKET, "dup.txt")
    assert [v.sha256 for v in versions] == [sha]
    assert len(agent.log_events_named("backup.stored")) == 1
    assert len(agent.log_events_named("backup.duplicate")) == 1


def test_sigterm_drains_in_flight_work_and_exits_zero(stack):
    agent = stack.start_agent()
    agent.wait_for("agent.started")
    _upload(stack, "big.bin", os.urandom(8 << 20))
    time.sleep(0.5)

    assert agent.stop(signal.SIGTERM) == 0

    names = [e["event"] for e in agent.log_events()]
    assert "consumer.stopped" in names and "agent.stopped" in names
    assert names.index("agent.stop_requested") < names.index("agent.stopped")
    wait_until(lambda: stack.queue_depth()[1] == 0, timeout=30)  # nothing left invisible behind us


def test_missing_volume_marker_blocks_writes_until_initialised(stack):
    (stack.root / ".backup-agent-volume").unlink()
    agent = stack.start_agent()
    not_ready = agent.wait_for("volume.not_ready")
    assert "init-volume" in str(not_ready[0]["reason"])
    _upload(stack, "waiting.txt", b"patience")
    time.sleep(2)
    assert not (stack.root / "objects").exists() or not any((stack.root / "objects").rglob("*.zst"))
    assert stack.queue_depth()[0] == 1  # the event waits in the queue

    from agent.storage.volume import Volume

    # The volume still holds the agent's own layout: marking it again takes --force, as
    # init-volume marks only an empty directory or a mount point without it.
    Volume(stack.root).initialise("vol-late", force=True)
    agent.wait_for("backup.stored", timeout=30)


def test_unparseable_message_is_released_and_the_agent_keeps_working(stack):
    stack.clients.sqs.send_message(QueueUrl=stack.config.queue.url, MessageBody="{not json")
    stack.clients.sqs.send_message(
        QueueUrl=stack.config.queue.url, MessageBody=json.dumps({"Records": [{"bogus": 1}]})
    )
    agent = stack.start_agent()
    malformed = agent.wait_for("message.malformed", count=2)
    _upload(stack, "after-poison.txt", b"still flowing")
    agent.wait_for("backup.stored")
    assert all("message_id" in e for e in malformed)
    assert agent.process.poll() is None
