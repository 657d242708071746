"""`backup-agent snapshot` as its own process while the real agent backs up, against moto_server."""

from __future__ import annotations

import hashlib
import os
import subprocess

import boto3

from agent.snapshots.listing import list_snapshots
from agent.snapshots.records import JOURNAL_TAG, read_records, tag_dict
from agent.storage.ledger import Ledger
from tests.e2e.conftest import make_stack
from tests.support.aws import BUCKET, TABLE
from tests.support.local_aws import FAKE_CREDENTIALS, agent_command


def test_a_snapshot_taken_while_the_agent_writes_loses_nothing(tmp_path, moto_server):
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_server.endpoint)
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
    stack = make_stack(
        tmp_path,
        moto_server,
        storage={"volume_id": volume_id},
        snapshots={"enabled": True, "schedule": "1h", "retain": {"last": 2}},
    )
    agent = stack.start_agent()
    try:
        agent.wait_for("agent.started")
        bodies = {f"doc-{i:02d}.bin": os.urandom(64 << 10) for i in range(20)}
        for key, body in bodies.items():
            stack.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)

        snapshot = subprocess.run(
            [*agent_command(), "snapshot", "--config", str(stack.config_path)],
            env={**os.environ, **FAKE_CREDENTIALS},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert snapshot.returncode == 0, snapshot.stderr
        agent.wait_for("backup.stored", count=len(bodies), timeout=60)
    finally:
        agent.stop(timeout=30)

    # The snapshot's journal position is on a line boundary of the journal as written
    [taken] = list_snapshots(ec2, "us-east-1", volume_id)
    assert taken.state == "completed"
    tags = tag_dict(ec2.describe_snapshots(SnapshotIds=[taken.snapshot_id])["Snapshots"][0]["Tags"])
    if JOURNAL_TAG in tags:  # absent only if the snapshot came before the first copy
        segment, offset = tags[JOURNAL_TAG].rsplit(":", 1)
        data = (stack.root / "journal" / segment).read_bytes()
        assert 0 < int(offset) <= len(data) and data[int(offset) - 1 : int(offset)] == b"\n"
    assert [r["snapshot_id"] for r in read_records(stack.root)] == [taken.snapshot_id]
    # ... and every object is stored and recorded
    ledger = Ledger(stack.clients.dynamodb, TABLE)
    for key, body in bodies.items():
        latest = ledger.latest(BUCKET, key)
        assert latest is not None and latest.sha256 == hashlib.sha256(body).hexdigest()
    assert not list((stack.root / "tmp").iterdir())
