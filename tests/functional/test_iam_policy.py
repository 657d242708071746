"""The generated IAM policy allows every API call the agent makes during a backup, and
grants nothing that has no caller."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from agent.aws import Clients
from agent.daemon import Daemon
from agent.iam import (
    NOT_EXERCISED_BY_BACKUP,
    granted_actions,
    iam_action,
    policy_document,
    sqs_arn,
    trust_document,
)
from agent.ledger import Ledger
from agent.store import Volume
from tests.conftest import BUCKET, REGION, TABLE, make_config

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"


class CallRecorder:
    """botocore `before-parameter-build` hook: (IAM action, resource ARN) of every call made."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, model: Any, params: dict[str, Any], **_kwargs: Any) -> None:
        signing = model.service_model.signing_name
        self.calls.append((iam_action(signing, model.name, params), model.name, _arn(params)))


def _arn(args: dict[str, Any]) -> str:
    if "QueueUrl" in args:
        return sqs_arn(args["QueueUrl"], REGION, "aws")
    if "TableName" in args:
        table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{args['TableName']}"
        return f"{table}/index/{args['IndexName']}" if args.get("IndexName") else table
    if "Bucket" in args:
        return f"arn:aws:s3:::{args['Bucket']}" + (f"/{args['Key']}" if "Key" in args else "")
    return "*"


def _allowed(policy: dict[str, Any], action: str, arn: str) -> bool:
    return any(
        action in statement["Action"]
        and any(fnmatch.fnmatchcase(arn, pattern) for pattern in statement["Resource"])
        for statement in policy["Statement"]
    )


def _recording_clients(recorder: CallRecorder) -> Clients:
    session = boto3.session.Session(region_name=REGION)
    session.events.register("before-parameter-build", recorder)
    return Clients(
        s3=session.client("s3"),
        sqs=session.client("sqs"),
        dynamodb=session.client("dynamodb"),
        session=session,
    )


def _wait_until(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_every_call_of_a_real_backup_is_allowed_and_every_grant_has_a_caller(aws, backup_root):
    ec2 = aws.client("ec2")
    volume_id = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1, Encrypted=True)["VolumeId"]
    kms_key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    config = make_config(
        backup_root,
        aws={"region": REGION, "kms_key_arns": [kms_key]},
        storage={"root": str(backup_root), "min_free_bytes": 0, "volume_id": volume_id},
    )
    Volume(backup_root).initialise("vol-iam")
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    recorder = CallRecorder()
    daemon = Daemon(config, _recording_clients(recorder))

    daemon.start(daemon.wait_for_volume())
    daemon.check_volume_encryption()
    try:
        version = aws.s3.put_object(Bucket=BUCKET, Key="a.txt", Body=b"a" * 1000)["VersionId"]
        aws.s3.put_object(
            Bucket=BUCKET,
            Key="kms.txt",
            Body=b"k" * 1000,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=kms_key,
        )
        _send_versioned_event(aws, "a.txt", version, 1000)  # real S3 events carry versionId
        ledger = Ledger(aws.dynamodb, TABLE)
        _wait_until(
            lambda: ledger.latest(BUCKET, "kms.txt") and len(ledger.versions(BUCKET, "a.txt")) == 2
        )
    finally:
        daemon.stop()
    list(Ledger(daemon.clients.dynamodb, TABLE).keys(BUCKET))  # restore's Query on the index

    policy = policy_document(config)
    denied = [(a, op, arn) for a, op, arn in recorder.calls if not _allowed(policy, a, arn)]
    assert denied == []
    made = {action for action, _op, _arn in recorder.calls}
    assert {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:Query",
        "ec2:DescribeVolumes",
    } <= made
    unexercised = granted_actions(policy) - made
    assert unexercised <= set(NOT_EXERCISED_BY_BACKUP), unexercised - set(NOT_EXERCISED_BY_BACKUP)


def _send_versioned_event(aws, key: str, version: str, size: int) -> None:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": BUCKET, "arn": f"arn:aws:s3:::{BUCKET}"},
            "object": {"key": key, "size": size, "versionId": version, "sequencer": "00A1"},
        },
    }
    queue_url = aws.sqs.get_queue_url(QueueName="backup-events")["QueueUrl"]
    aws.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"Records": [record]}))


def test_policy_has_no_wildcard_actions_and_only_scoped_wildcard_resources(backup_root):
    policy = policy_document(make_config(backup_root))
    for statement in policy["Statement"]:
        assert all("*" not in action for action in statement["Action"]), statement
        if statement["Resource"] == ["*"]:
            # only actions without resource-level permissions, and those scoped by a condition
            assert statement["Action"] in (["cloudwatch:PutMetricData"], ["ec2:DescribeVolumes"])
        else:
            assert all(r.startswith("arn:aws:") for r in statement["Resource"])
    assert "RestoreToS3" not in {
        s["Sid"]
        for s in policy_document(make_config(backup_root), restore_to_s3=False)["Statement"]
    }


def test_committed_example_policies_match_the_example_config():
    def generate(*extra: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "agent.cli", "iam-policy", "--config", "config.yaml", *extra],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)

    message = "regenerate: backup-agent iam-policy --config config.yaml > iam/…"
    assert generate() == json.loads((REPO / "iam/backup-agent-policy.json").read_text()), message
    assert generate("--role-document") == json.loads((REPO / "iam/trust-policy.json").read_text())
    assert trust_document()["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
