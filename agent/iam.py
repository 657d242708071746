"""The least-privilege IAM policy for the agent's instance role, generated from the config.

Every statement names only the configured queue, dead-letter queue, buckets, table (and its
index), topic, e-mail identity, KMS keys and metric namespace. `iam_action()` maps an API
call to the IAM action it needs; the tests record every call the agent makes during a real
backup and check each one is allowed (and that nothing else is granted without a reason).

    backup-agent iam-policy --config FILE                  # the permissions policy
    backup-agent iam-policy --config FILE --role-document  # the EC2 trust policy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from agent.config import Config
from agent.ledger import KEY_INDEX

DEFAULT_METRICS_NAMESPACE = "BackupAgent"
VERSION = "2012-10-17"

# botocore signing name → IAM service prefix, where they differ
_IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses"}
# S3 operations whose IAM action has another name (the version-specific ones below)
_S3_ACTIONS = {
    "HeadObject": "GetObject",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "HeadBucket": "ListBucket",
}

NOT_EXERCISED_BY_BACKUP = {
    "s3:PutObject": "restore --to-s3 writes restored objects back to the buckets",
    "s3:ListBucket": "verify and restore list keys under a prefix",
    "s3:ListBucketVersions": "verify and restore list versions of a key",
    "kms:Decrypt": "called by S3 on the agent's behalf (kms:ViaService) for SSE-KMS reads",
    "cloudwatch:PutMetricData": "metrics, flushed on a timer",
    "sqs:GetQueueAttributes": "queue depth and dead-letter queue metrics",
    "sqs:ChangeMessageVisibility": "extending long copies, retry back-off, release on shutdown",
    "sns:Publish": "alerts",
    "ses:SendEmail": "alert and digest e-mail",
    "ses:SendRawEmail": "alert and digest e-mail with attachments",
    "ec2:CreateSnapshot": "scheduled EBS snapshots of the backup volume",
    "ec2:CreateTags": "tags on the agent's snapshots, at creation only",
    "ec2:DescribeSnapshots": "snapshot retention",
    "ec2:DeleteSnapshot": "snapshot retention, only snapshots the agent tagged",
}


@dataclass(frozen=True)
class Scope:
    """What the policy is scoped to, read from the config (other features' sections by name)."""

    partition: str
    region: str
    account: str
    queue_arns: tuple[str, ...]
    buckets: tuple[str, ...]
    table: str
    kms_key_arns: tuple[str, ...] = ()
    metrics_namespace: str = DEFAULT_METRICS_NAMESPACE
    sns_topic_arn: str | None = None
    email_sender: str | None = None
    snapshots: bool = False
    volume_id: str | None = None
    restore_to_s3: bool = True

    @classmethod
    def from_config(cls, config: Config, *, restore_to_s3: bool = True) -> Scope:
        region = config.aws.region
        partition = partition_for(region)
        queue = sqs_arn(config.queue.url, region, partition)
        account = queue.split(":")[4]
        if config.queue.dead_letter_url:
            dlq = sqs_arn(config.queue.dead_letter_url, region, partition)
        else:
            dlq = queue + "-dlq"  # bootstrap's default name
        alerts = getattr(config, "alerts", None)
        email = getattr(alerts, "email", None)
        metrics = getattr(config, "metrics", None)
        snapshots = getattr(config, "snapshots", None)
        return cls(
            partition=partition,
            region=region,
            account=account,
            queue_arns=(queue, dlq),
            buckets=tuple(config.buckets),
            table=config.state.table,
            kms_key_arns=tuple(config.aws.kms_key_arns),
            metrics_namespace=getattr(metrics, "namespace", None) or DEFAULT_METRICS_NAMESPACE,
            sns_topic_arn=getattr(alerts, "sns_topic_arn", None),
            email_sender=getattr(email, "sender", None),
            snapshots=bool(snapshots) and getattr(snapshots, "enabled", True) is not False,
            volume_id=config.storage.volume_id,
            restore_to_s3=restore_to_s3,
        )


def partition_for(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def sqs_arn(url: str, region: str, partition: str) -> str:
    """https://sqs.REGION.amazonaws.com/ACCOUNT/NAME → arn:PARTITION:sqs:REGION:ACCOUNT:NAME."""
    parsed = urlparse(url)
    parts = [p for p in parsed.path.split("/") if p]
    host = parsed.hostname or ""
    if host.startswith("sqs.") and host.count(".") >= 3:
        region = host.split(".")[1]
    account, name = parts[-2], parts[-1]
    return f"arn:{partition}:sqs:{region}:{account}:{name}"


def statements(scope: Scope) -> list[dict[str, Any]]:
    p, region, account = scope.partition, scope.region, scope.account
    objects = [f"arn:{p}:s3:::{b}/*" for b in scope.buckets]
    table = f"arn:{p}:dynamodb:{region}:{account}:table/{scope.table}"
    found: list[dict[str, Any]] = [
        _statement(
            "ConsumeBackupEvents",
            [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ],
            list(scope.queue_arns),
        ),
        _statement("ReadObjects", ["s3:GetObject", "s3:GetObjectVersion"], objects),
        _statement(
            "ListObjects",
            ["s3:ListBucket", "s3:ListBucketVersions"],
            [f"arn:{p}:s3:::{b}" for b in scope.buckets],
        ),
        _statement(
            "Ledger",
            ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"],
            [table, f"{table}/index/{KEY_INDEX}"],
        ),
        _statement(
            "Metrics",
            ["cloudwatch:PutMetricData"],
            ["*"],  # PutMetricData has no resource type; the namespace condition scopes it
            {"StringEquals": {"cloudwatch:namespace": scope.metrics_namespace}},
        ),
        _statement(
            "CheckBackupVolumeEncryption",
            ["ec2:DescribeVolumes"],
            ["*"],  # Describe* actions support no resource-level permissions
        ),
    ]
    if scope.restore_to_s3:
        found.insert(3, _statement("RestoreToS3", ["s3:PutObject"], objects))
    if scope.kms_key_arns:
        found.append(
            _statement(
                "DecryptSseKmsObjects",
                ["kms:Decrypt"],
                list(scope.kms_key_arns),
                {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}},
            )
        )
    if scope.sns_topic_arn:
        found.append(_statement("Alerts", ["sns:Publish"], [scope.sns_topic_arn]))
    if scope.email_sender:
        identities = [f"arn:{p}:ses:{region}:{account}:identity/{scope.email_sender}"]
        domain = scope.email_sender.rpartition("@")[2]
        if domain and domain != scope.email_sender:
            identities.append(f"arn:{p}:ses:{region}:{account}:identity/{domain}")
        found.append(
            _statement(
                "AlertEmail",
                ["ses:SendEmail", "ses:SendRawEmail"],
                identities,
                {"StringEquals": {"ses:FromAddress": scope.email_sender}},
            )
        )
    if scope.snapshots:
        found.extend(_snapshot_statements(scope))
    return found


def _snapshot_statements(scope: Scope) -> list[dict[str, Any]]:
    p, region, account = scope.partition, scope.region, scope.account
    volume = f"arn:{p}:ec2:{region}:{account}:volume/{scope.volume_id or '*'}"
    snapshot = f"arn:{p}:ec2:{region}::snapshot/*"
    return [
        _statement("SnapshotBackupVolume", ["ec2:CreateSnapshot"], [volume, snapshot]),
        _statement(
            "TagNewSnapshots",
            ["ec2:CreateTags"],
            [snapshot],
            {"StringEquals": {"ec2:CreateAction": "CreateSnapshot"}},
        ),
        _statement("ListSnapshots", ["ec2:DescribeSnapshots"], ["*"]),
        _statement(
            "ExpireOwnSnapshots",
            ["ec2:DeleteSnapshot"],
            [snapshot],
            {"StringEquals": {"aws:ResourceTag/backup-agent": "true"}},
        ),
    ]


def _statement(
    sid: str, actions: list[str], resources: list[str], condition: dict[str, Any] | None = None
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": resources,
    }
    if condition:
        statement["Condition"] = condition
    return statement


def policy_document(config: Config, *, restore_to_s3: bool = True) -> dict[str, Any]:
    scope = Scope.from_config(config, restore_to_s3=restore_to_s3)
    return {"Version": VERSION, "Statement": statements(scope)}


def trust_document(config: Config | None = None) -> dict[str, Any]:
    """The instance-profile role's trust policy: only EC2 may assume it."""
    partition = partition_for(config.aws.region) if config else "aws"
    service = "ec2.amazonaws.com.cn" if partition == "aws-cn" else "ec2.amazonaws.com"
    return {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "Ec2InstanceProfile",
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def granted_actions(policy: dict[str, Any]) -> set[str]:
    return {a for s in policy["Statement"] for a in s["Action"]}


def iam_action(signing_name: str, operation: str, params: dict[str, Any]) -> str:
    """The IAM action an API call needs (s3 GetObject with a VersionId → s3:GetObjectVersion)."""
    prefix = _IAM_PREFIX.get(signing_name, signing_name)
    action = operation
    if prefix == "s3":
        action = _S3_ACTIONS.get(operation, operation)
        if action == "GetObject" and params.get("VersionId"):
            action = "GetObjectVersion"
    return f"{prefix}:{action}"
