"""Least-privilege IAM policies generated from the config: the agent's and the operator's.

Kept whole: two policies of mostly literal statements from one `PolicyScope`, and the
action map (`iam_action`) the tests check them with.

Two roles, because what runs unattended on the instance must not be able to do what an
operator does by hand:

* ``agent`` — the EC2 instance role. Everything `backup-agent run` does (consume events,
  read objects, write the ledger, metrics, alerts, the volume encryption check, scheduled
  snapshots with their copy and retention) and the jobs it schedules or an operator runs
  with the same identity (reconcile, retention, gc, scrub, snapshot, `backup-restore
  list|restore --to DIR|verify|snapshots`). It cannot write to the backed-up buckets.
* ``operator`` — a person or CI role for the commands that change AWS resources:
  `scripts/bootstrap-aws`, `backup-agent alarms|dashboard|reindex`, `backup-restore
  restore --to-s3` (into the backed-up buckets and `restore.recovery_buckets`) and `share`,
  and `scripts/mount-snapshot`. Self-contained: it includes
  the ledger reads those commands need.

Every statement has a Sid saying its purpose and names only the configured queue, dead-letter
queue, buckets, table (and its index), topic, e-mail identity, KMS keys, metric namespace,
alarm prefix, dashboard, staging bucket, the backup volume and the agent's own snapshots.

The snapshot statements name the backup volume itself: `storage.volume_id`, or
`--volume-id` when the agent discovers it at run time. A snapshot policy without it is
refused (`ConfigError`), never widened to every volume. Tags are trusted only where the
other role cannot set them: the agent's `backup-agent:managed` snapshots must also be of the
backup volume (`ec2:ParentVolume`) before the operator makes a volume of one, and the
operator attaches, detaches and deletes only volumes carrying `backup-agent:restore-of`,
which only the operator's CreateVolume can set.

    backup-agent iam-policy --config FILE [--role agent|operator] [--without-restore]
                            [--volume-id vol-…]
    backup-agent iam-policy --config FILE --role-document   # the EC2 trust policy

`iam_action()` maps an API call to the IAM action it needs; tests/functional/test_iam_policy.py
records every call of every feature against moto and checks it against these policies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from agent.config import Config, replica_groups
from agent.errors import ConfigError
from agent.snapshots.mount import RESTORE_TAG
from agent.snapshots.records import MANAGED_TAG
from agent.storage.ledger import HOLDER_ATTRIBUTES, KEY_INDEX

VERSION = "2012-10-17"
ROLES = ("agent", "operator")

# botocore signing name → IAM service prefix, where they differ
_IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses"}
# S3 operations whose IAM action has another name
_S3_ACTIONS = {
    "HeadObject": "GetObject",
    "ListObjects": "ListBucket",
    "ListObjectsV2": "ListBucket",
    "ListObjectVersions": "ListBucketVersions",
    "HeadBucket": "ListBucket",
    "CreateMultipartUpload": "PutObject",
    "UploadPart": "PutObject",
    "CompleteMultipartUpload": "PutObject",
    "PutBucketEncryption": "PutEncryptionConfiguration",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "GetBucketLifecycleConfiguration": "GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "GetBucketNotificationConfiguration": "GetBucketNotification",
    "PutBucketNotificationConfiguration": "PutBucketNotification",
}

# Granted, but no flow against moto makes the call itself; the tests require a reason here.
NOT_EXERCISED: dict[str, str] = {
    "s3:ListBucket": (
        "real S3 answers GetObject/HeadObject of a missing key with 403 instead of 404 without it"
        " (moto does not check); the operator's restore --to-s3 needs it for that alone"
    ),
    "kms:Decrypt": "S3 calls KMS on the caller's behalf (kms:ViaService) for SSE-KMS objects",
    "kms:GenerateDataKey": (
        "S3 calls KMS on the operator's behalf when restore --to-s3 writes into a bucket whose"
        " default encryption is SSE-KMS"
    ),
    "s3:AbortMultipartUpload": "restore --to-s3 / share abort a multipart upload that failed",
}


@dataclass(frozen=True)
class PolicyScope:
    """What the policies are scoped to, read from the config."""

    partition: str
    region: str
    account: str
    queue_arn: str
    dead_letter_arn: str
    buckets: tuple[str, ...]
    table: str
    kms_key_arns: tuple[str, ...] = ()
    metrics_namespace: str = "BackupAgent"
    cloudwatch_metrics: bool = True
    sns_topic_arn: str | None = None
    email_sender: str | None = None
    snapshots: bool = False
    copy_region: str | None = None
    volume_id: str | None = None
    alarm_prefix: str = "backup-agent"
    dashboard: str = "backup-agent"
    staging_bucket: str | None = None
    staging_prefix: str = "backup-agent-share/"
    restore_to_s3: bool = True
    recovery_buckets: tuple[str, ...] = ()
    record_tags: bool = True
    auto_grow: bool = False  # storage.auto_grow.enabled: ModifyVolume on the backup volume
    audit_log_group: str | None = None
    inventory_bucket: str | None = None
    inventory_prefix: str = "backup-agent-inventory/"
    # fleet.replicas > 1: every replica group's queue and the fan-out topic (bootstrap)
    replica_queue_arns: tuple[str, ...] = ()
    fan_out_topic_arn: str | None = None

    @classmethod
    def from_config(
        cls, config: Config, *, restore_to_s3: bool = True, volume_id: str | None = None
    ) -> PolicyScope:
        """`volume_id`: the backup volume when `storage.volume_id` is unset (`--volume-id`)."""
        region = config.aws.region
        partition = partition_for(region)
        queue = sqs_arn(config.queue.url, region, partition)
        if config.queue.dead_letter_url:
            dlq = sqs_arn(config.queue.dead_letter_url, region, partition)
        else:
            dlq = queue + "-dlq"  # QueueConfig.dead_letter_name
        email = config.alerts.email
        groups = replica_groups(config)
        group_arns: tuple[str, ...] = ()
        topic_arn = None
        if groups is not None:
            prefix = queue.rsplit(":", 1)[0]
            group_arns = tuple(f"{prefix}:{name}" for name in groups.queues)
            topic_arn = f"arn:{partition}:sns:{region}:{queue.split(':')[4]}:{groups.topic}"
        return cls(
            partition=partition,
            region=region,
            account=queue.split(":")[4],
            queue_arn=queue,
            dead_letter_arn=dlq,
            buckets=tuple(config.buckets),
            table=config.state.table,
            kms_key_arns=tuple(config.aws.kms_key_arns),
            metrics_namespace=config.metrics.namespace,
            cloudwatch_metrics=config.metrics.cloudwatch,
            sns_topic_arn=config.alerts.sns_topic_arn,
            email_sender=email.sender if email else None,
            snapshots=config.snapshots.enabled,
            copy_region=config.snapshots.copy_to_region if config.snapshots.enabled else None,
            volume_id=backup_volume_id(config, volume_id),
            alarm_prefix=config.alarms.name_prefix,
            dashboard=config.metrics.dashboard,
            staging_bucket=config.restore.staging_bucket,
            staging_prefix=config.restore.staging_prefix,
            restore_to_s3=restore_to_s3,
            recovery_buckets=tuple(config.restore.recovery_buckets),
            record_tags=config.storage.record_tags,
            auto_grow=config.storage.auto_grow.enabled,
            audit_log_group=config.audit.log_group,
            inventory_bucket=config.inventory.bucket,
            inventory_prefix=config.inventory.prefix,
            replica_queue_arns=group_arns,
            fan_out_topic_arn=topic_arn,
        )

    def arn(self, service: str, resource: str, *, region: str | None = None) -> str:
        """arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE (S3 and snapshots have no account)."""
        return f"arn:{self.partition}:{service}:{region or self.region}:{self.account}:{resource}"

    @property
    def table_arns(self) -> list[str]:
        table = self.arn("dynamodb", f"table/{self.table}")
        return [table, f"{table}/index/{KEY_INDEX}"]

    @property
    def snapshot_regions(self) -> list[str]:
        return [self.region] + ([self.copy_region] if self.copy_region else [])

    @property
    def volume_arn(self) -> str:
        """The backup volume (from_config refuses snapshots without its id)."""
        if not self.volume_id:
            raise ConfigError([VOLUME_ID_REQUIRED])
        return self.arn("ec2", f"volume/{self.volume_id}")

    def snapshot_arns(self, regions: list[str] | None = None) -> list[str]:
        return [f"arn:{self.partition}:ec2:{r}::snapshot/*" for r in regions or [self.region]]

    def bucket_arns(self, suffix: str = "") -> list[str]:
        return [f"arn:{self.partition}:s3:::{b}{suffix}" for b in self.buckets]

    def restore_target_arns(self, suffix: str = "") -> list[str]:
        """The backed-up buckets and the configured recovery buckets (restore --to-s3)."""
        extra = [b for b in self.recovery_buckets if b not in self.buckets]
        return self.bucket_arns(suffix) + [f"arn:{self.partition}:s3:::{b}{suffix}" for b in extra]


VOLUME_ID_REQUIRED = (
    "storage.volume_id: required for the snapshot statements (snapshots.enabled): set it, or"
    " pass --volume-id vol-… to iam-policy; without it the agent could snapshot every volume"
)
_VOLUME_ID = re.compile(r"vol-[0-9a-f]{8,17}")


AUTO_GROW_VOLUME_ID_REQUIRED = (
    "storage.volume_id: required for the auto-grow statement (storage.auto_grow.enabled): set"
    " it, or pass --volume-id vol-… to iam-policy; without it the agent could resize every volume"
)


def backup_volume_id(config: Config, given: str | None = None) -> str | None:
    """The backup volume the snapshot statements name; ConfigError when snapshots are on and
    neither `storage.volume_id` nor `given` (`--volume-id`) names it, or they disagree."""
    configured = config.storage.volume_id
    if given is not None:
        if not _VOLUME_ID.fullmatch(given):
            raise ConfigError([f"--volume-id: {given!r} is not an EBS volume id (vol-0123…)"])
        if configured and given != configured:
            raise ConfigError(
                [f"--volume-id: {given} is not storage.volume_id ({configured}) of this config"]
            )
        return given
    if config.snapshots.enabled and not configured:
        raise ConfigError([VOLUME_ID_REQUIRED])
    if config.storage.auto_grow.enabled and not configured:
        raise ConfigError([AUTO_GROW_VOLUME_ID_REQUIRED])
    return configured


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


# -- the agent's instance role ------------------------------------------------------------


def agent_statements(scope: PolicyScope) -> list[dict[str, Any]]:
    found = [
        _statement(
            "ConsumeBackupEvents",
            [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ],
            [scope.queue_arn],
        ),
        _statement(
            "WatchDeadLetterQueue",  # its depth metric and alert; the URL is looked up by name
            ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
            [scope.dead_letter_arn],
        ),
        _statement(
            "ReadObjects",  # backup, scrub heal, reconcile's HeadObject; tags: record_tags
            ["s3:GetObject", "s3:GetObjectVersion"]
            + (["s3:GetObjectTagging", "s3:GetObjectVersionTagging"] if scope.record_tags else []),
            scope.bucket_arns("/*"),
        ),
        _statement(
            "ListBucketsForReconcile",
            ["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketVersioning"],
            scope.bucket_arns(),
        ),
        _statement(
            "Ledger",  # PutItem: backups; DeleteItem: retention; Query/GetItem: everything
            ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"],
            scope.table_arns,
        ),
        _statement(
            "CheckBackupVolume",  # the encryption check and the volume id discovery
            ["ec2:DescribeVolumes"],
            ["*"],  # Describe* actions support no resource-level permissions
        ),
    ]
    if scope.fan_out_topic_arn:
        found.append(
            _statement(
                "RecordReplicaHolder",  # a second replica group names its volume: holders only
                ["dynamodb:UpdateItem"],
                scope.table_arns[:1],
                {"ForAllValues:StringEquals": {"dynamodb:Attributes": list(HOLDER_ATTRIBUTES)}},
            )
        )
    if scope.cloudwatch_metrics:
        found.append(
            _statement(
                "PublishMetrics",
                ["cloudwatch:PutMetricData"],
                ["*"],  # PutMetricData has no resource type; the namespace condition scopes it
                {"StringEquals": {"cloudwatch:namespace": scope.metrics_namespace}},
            )
        )
    if scope.kms_key_arns:
        found.append(
            _statement(
                "DecryptSseKmsObjects",
                ["kms:Decrypt"],
                list(scope.kms_key_arns),
                {"StringEquals": {"kms:ViaService": f"s3.{scope.region}.amazonaws.com"}},
            )
        )
    if scope.sns_topic_arn:
        found.append(_statement("AlertTopic", ["sns:Publish"], [scope.sns_topic_arn]))
    if scope.email_sender:
        found.append(
            _statement(
                "AlertEmail",
                ["ses:SendEmail"],  # the agent sends no raw (MIME) mail
                _identity_arns(scope, scope.email_sender),
                {"StringEquals": {"ses:FromAddress": scope.email_sender}},
            )
        )
    if scope.snapshots:
        found.extend(_snapshot_statements(scope))
    if scope.auto_grow:
        found.extend(_auto_grow_statements(scope))
    found.extend(_audit_statements(scope, "agent"))
    return found


def _audit_statements(scope: PolicyScope, role: str) -> list[dict[str, Any]]:
    """Both roles audit what they do (agent/audit/): records shipped to the audit log group's
    streams. The operator creates the group (bootstrap: retention, metric filters) and reads
    it (`backup-restore audit --cloudwatch`); the agent's inventory job writes under its
    prefix, nowhere else."""
    found = []
    if scope.audit_log_group:
        group = scope.arn("logs", f"log-group:{scope.audit_log_group}")
        found.append(
            _statement(
                "ShipAuditTrail",
                ["logs:CreateLogStream", "logs:PutLogEvents"],
                [f"{group}:log-stream:*"],
            )
        )
        if role == "operator":
            found.append(
                _statement(
                    "BootstrapAndReadAuditLogGroup",
                    [
                        "logs:CreateLogGroup",
                        "logs:PutRetentionPolicy",
                        "logs:PutMetricFilter",
                        "logs:FilterLogEvents",
                    ],
                    [group, f"{group}:*"],
                )
            )
    if scope.inventory_bucket and role == "agent":
        found.append(
            _statement(
                "ExportInventory",
                ["s3:PutObject"],
                [f"arn:{scope.partition}:s3:::{scope.inventory_bucket}/{scope.inventory_prefix}*"],
            )
        )
    return found


def _auto_grow_statements(scope: PolicyScope) -> list[dict[str, Any]]:
    """storage.auto_grow (issue 17): resize the backup volume and no other; watch it."""
    return [
        _statement("GrowBackupVolume", ["ec2:ModifyVolume"], [scope.volume_arn]),
        _statement(
            "WatchVolumeModifications",
            ["ec2:DescribeVolumesModifications"],
            ["*"],  # Describe* actions support no resource-level permissions
        ),
    ]


def _identity_arns(scope: PolicyScope, sender: str) -> list[str]:
    """SES authorises a send against the address identity or its domain's, whichever is verified."""
    identities = [scope.arn("ses", f"identity/{sender}")]
    domain = sender.rpartition("@")[2]
    if domain and domain != sender:
        identities.append(scope.arn("ses", f"identity/{domain}"))
    return identities


def _snapshot_statements(scope: PolicyScope) -> list[dict[str, Any]]:
    managed = {f"aws:RequestTag/{MANAGED_TAG}": "true"}
    found = [
        _statement(
            "SnapshotBackupVolume",  # this volume and no other
            ["ec2:CreateSnapshot"],
            [scope.volume_arn],
        ),
        _statement(
            "CreateOnlyManagedSnapshots",  # of the backup volume, carrying the agent's tag
            ["ec2:CreateSnapshot"],
            scope.snapshot_arns(),
            {"StringEquals": managed, "ArnEquals": {"ec2:ParentVolume": scope.volume_arn}},
        ),
        _statement(
            "TagSnapshotsAtCreation",  # snapshots only, only while CreateSnapshot/Copy allow it
            ["ec2:CreateTags"],
            scope.snapshot_arns(scope.snapshot_regions),
            {"StringEquals": {"ec2:CreateAction": ["CreateSnapshot", "CopySnapshot"]}},
        ),
        _statement("ListSnapshots", ["ec2:DescribeSnapshots"], ["*"]),
        _statement(
            "ExpireOnlyManagedSnapshots",
            ["ec2:DeleteSnapshot"],
            scope.snapshot_arns(scope.snapshot_regions),
            {"StringEquals": {f"aws:ResourceTag/{MANAGED_TAG}": "true"}},
        ),
        _statement(
            "RecordSnapshots",  # a deleted snapshot's ledger item is marked, not removed
            ["dynamodb:UpdateItem"],
            scope.table_arns[:1],
        ),
    ]
    if scope.copy_region:
        found[2:2] = [
            _statement(
                "CopyFromManagedSnapshots",  # the source must be a snapshot the agent took
                ["ec2:CopySnapshot"],
                scope.snapshot_arns(),
                {"StringEquals": {f"aws:ResourceTag/{MANAGED_TAG}": "true"}},
            ),
            _statement(
                "CopyToManagedSnapshots",  # the copy in the other region is tagged again
                ["ec2:CopySnapshot"],
                scope.snapshot_arns([scope.copy_region]),
                {"StringEquals": managed},
            ),
        ]
    return found


# -- the operator's role ------------------------------------------------------------------


def operator_statements(scope: PolicyScope) -> list[dict[str, Any]]:
    p = scope.partition
    queues = [scope.queue_arn, scope.dead_letter_arn]
    if scope.replica_queue_arns:  # every replica group's queue and dead-letter queue
        queues = [arn + suffix for arn in scope.replica_queue_arns for suffix in ("", "-dlq")]
    found = [
        _statement(
            "BootstrapQueues",
            [
                "sqs:GetQueueUrl",
                "sqs:CreateQueue",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
            ],
            queues,
        ),
        _statement(
            "BootstrapBucketNotifications",
            [
                "s3:GetBucketNotification",
                "s3:PutBucketNotification",
            ],
            scope.bucket_arns(),
        ),
        _statement(
            "BootstrapAndReindexTable",
            [
                "dynamodb:DescribeTable",
                "dynamodb:CreateTable",
                "dynamodb:PutItem",
                "dynamodb:DescribeTimeToLive",  # restore-job items expire (agent/restore/job.py)
                "dynamodb:UpdateTimeToLive",
            ],
            scope.table_arns[:1],
        ),
        _statement("ReadLedger", ["dynamodb:Query"], scope.table_arns),
    ]
    if scope.restore_to_s3:
        found.extend(
            [
                _statement(
                    "RestoreToS3",  # HeadObject of the target first (GetObject), then the upload
                    # with the object's tags (x-amz-tagging needs s3:PutObjectTagging too)
                    [
                        "s3:GetObject",
                        "s3:PutObject",
                        "s3:PutObjectTagging",
                        "s3:AbortMultipartUpload",
                    ],
                    scope.restore_target_arns("/*"),  # --bucket: a restore.recovery_buckets one
                ),
                _statement(
                    "RestoreToS3SeeMissingKeys",  # HeadObject of a missing key: 404, not 403
                    ["s3:ListBucket"],
                    scope.restore_target_arns(),
                ),
            ]
        )
    if scope.restore_to_s3 and scope.kms_key_arns:
        found.append(
            _statement(
                "EncryptRestoredObjects",  # SSE-KMS default encryption; Decrypt: multipart
                ["kms:GenerateDataKey", "kms:Decrypt"],
                list(scope.kms_key_arns),
                {"StringEquals": {"kms:ViaService": f"s3.{scope.region}.amazonaws.com"}},
            )
        )
    if scope.staging_bucket:
        staging = f"arn:{p}:s3:::{scope.staging_bucket}"
        found.extend(
            [
                _statement(
                    "PrepareShareStagingBucket",
                    [
                        "s3:ListBucket",
                        "s3:CreateBucket",
                        "s3:PutEncryptionConfiguration",
                        "s3:PutBucketPublicAccessBlock",
                        "s3:GetLifecycleConfiguration",
                        "s3:PutLifecycleConfiguration",
                    ],
                    [staging],
                ),
                _statement(
                    "ShareStagedFiles",  # GetObject: what the presigned URL is signed for
                    ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
                    [f"{staging}/{scope.staging_prefix}*"],
                ),
            ]
        )
    if scope.sns_topic_arn:
        found.append(
            _statement(
                "BootstrapAlertTopic",
                ["sns:GetTopicAttributes", "sns:CreateTopic"],
                [scope.sns_topic_arn],
            )
        )
    if scope.fan_out_topic_arn:
        found.extend(
            [
                _statement(
                    "BootstrapFanOutTopic",  # the topic, its policy, the groups' subscriptions
                    [
                        "sns:CreateTopic",
                        "sns:GetTopicAttributes",
                        "sns:SetTopicAttributes",
                        "sns:ListSubscriptionsByTopic",
                        "sns:Subscribe",
                    ],
                    [scope.fan_out_topic_arn],
                ),
                _statement(
                    "BootstrapFanOutRawDelivery",  # a subscription is no IAM resource type
                    ["sns:GetSubscriptionAttributes", "sns:SetSubscriptionAttributes"],
                    ["*"],
                ),
            ]
        )
    if scope.email_sender:
        found.append(
            _statement(
                "BootstrapAlertEmailIdentity",
                ["ses:GetIdentityVerificationAttributes", "ses:VerifyEmailIdentity"],
                ["*"],  # SES identity management supports no resource-level permissions
            )
        )
    found.extend(
        [
            _statement(
                "Alarms",
                ["cloudwatch:DescribeAlarms", "cloudwatch:PutMetricAlarm"],
                [scope.arn("cloudwatch", f"alarm:{scope.alarm_prefix}-*")],
            ),
            _statement(
                "Dashboard",
                ["cloudwatch:GetDashboard", "cloudwatch:PutDashboard"],
                [f"arn:{p}:cloudwatch::{scope.account}:dashboard/{scope.dashboard}"],
            ),
            _statement(
                "DiscoverDashboardMetrics",
                ["cloudwatch:ListMetrics"],
                ["*"],  # ListMetrics supports no resource-level permissions
            ),
        ]
    )
    if scope.snapshots:
        found.extend(_mount_snapshot_statements(scope))
    found.extend(_audit_statements(scope, "operator"))
    return found


def _mount_snapshot_statements(scope: PolicyScope) -> list[dict[str, Any]]:
    # restore-of is set only by the operator's CreateVolume (TagRestoreVolumeAtCreation); the
    # agent can tag nothing but its new snapshots, and neither role can tag an existing volume
    restore_volume = {f"aws:ResourceTag/{RESTORE_TAG}": "snap-*"}
    return [
        _statement(
            "FindSnapshotInstanceAndVolume",
            ["ec2:DescribeSnapshots", "ec2:DescribeInstances", "ec2:DescribeVolumes"],
            ["*"],  # Describe* actions support no resource-level permissions
        ),
        _statement(
            "VolumeFromManagedSnapshot",  # the agent's tag, and a snapshot of the backup volume
            ["ec2:CreateVolume"],
            scope.snapshot_arns(),
            {
                "StringEquals": {f"aws:ResourceTag/{MANAGED_TAG}": "true"},
                "ArnEquals": {"ec2:ParentVolume": scope.volume_arn},
            },
        ),
        _statement(
            "CreateRestoreVolume",  # the new volume must carry the restore-of tag
            ["ec2:CreateVolume"],
            [scope.arn("ec2", "volume/*")],
            {"StringLike": {f"aws:RequestTag/{RESTORE_TAG}": "snap-*"}},
        ),
        _statement(
            "TagRestoreVolumeAtCreation",
            ["ec2:CreateTags"],
            [scope.arn("ec2", "volume/*")],
            {"StringEquals": {"ec2:CreateAction": "CreateVolume"}},
        ),
        _statement(
            "UseOnlyRestoreVolumes",  # attach, then detach and delete when done: tagged ones
            ["ec2:AttachVolume", "ec2:DetachVolume", "ec2:DeleteVolume"],
            [scope.arn("ec2", "volume/*")],
            {"StringLike": restore_volume},
        ),
        _statement(
            "AttachAndDetachAtInstance",  # any instance: the volume statement is what limits it
            ["ec2:AttachVolume", "ec2:DetachVolume"],
            [scope.arn("ec2", "instance/*")],
        ),
    ]


# -- documents ----------------------------------------------------------------------------


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


def statements(scope: PolicyScope, role: str = "agent") -> list[dict[str, Any]]:
    if role == "agent":
        return agent_statements(scope)
    if role == "operator":
        return operator_statements(scope)
    raise ValueError(f"role: {role!r} is not one of {', '.join(ROLES)}")


def policy_document(
    config: Config,
    *,
    role: str = "agent",
    restore_to_s3: bool = True,
    volume_id: str | None = None,
) -> dict[str, Any]:
    scope = PolicyScope.from_config(config, restore_to_s3=restore_to_s3, volume_id=volume_id)
    return {"Version": VERSION, "Statement": statements(scope, role)}


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


_SQS_BATCH_ACTIONS = {"DeleteMessageBatch", "ChangeMessageVisibilityBatch", "SendMessageBatch"}


def iam_action(signing_name: str, operation: str, params: dict[str, Any]) -> str:
    """The IAM action an API call needs (s3 GetObject with a VersionId → s3:GetObjectVersion)."""
    prefix = _IAM_PREFIX.get(signing_name, signing_name)
    action = operation
    if prefix == "sqs" and operation in _SQS_BATCH_ACTIONS:
        action = operation.removesuffix("Batch")  # authorised as their one-message form
    if prefix == "s3":
        action = _S3_ACTIONS.get(operation, operation)
        if action in ("GetObject", "GetObjectTagging") and params.get("VersionId"):
            action = action.replace("GetObject", "GetObjectVersion")  # …VersionTagging
    return f"{prefix}:{action}"


def iam_actions(signing_name: str, operation: str, params: dict[str, Any]) -> list[str]:
    """Every IAM action an API call needs: `iam_action`, and s3:PutObjectTagging for a
    PutObject or CreateMultipartUpload that sets tags (the x-amz-tagging header;
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/tagging-and-policies.html)."""
    actions = [iam_action(signing_name, operation, params)]
    if signing_name == "s3" and operation in _TAGGING_UPLOADS and params.get("Tagging"):
        actions.append("s3:PutObjectTagging")
    return actions


_TAGGING_UPLOADS = {"PutObject", "CreateMultipartUpload"}
