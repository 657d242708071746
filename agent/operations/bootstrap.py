"""Create the AWS resources the agent needs; leave what exists. Safe to run again.

Queue + dead-letter queue with a redrive policy, the queue policy that lets S3 send,
the bucket notifications (`NOTIFIED_EVENTS`: created and removed objects, S3 Lifecycle
expirations, restores of archived objects), and the DynamoDB table. A notification of
an earlier release, with fewer event types, gets the missing ones added.
With `fleet.replicas: R` > 1 (docs/fleet.md "Replicas"): the fan-out instead of the one
queue: the SNS topic `<base>-fanout` (its policy lets S3 publish, from the configured
buckets of this account), R queues `<base>-1` … `<base>-R`, each with its dead-letter queue
and redrive policy, a queue policy that lets the topic send, and a raw-delivery
subscription; the buckets notify the topic (a direct notification of the agent's queue,
from `replicas: 1`, is replaced: S3 refuses two destinations for one event type).
When the config has an `alerts:` section: the SNS topic (`alerts.sns_topic_arn`) and the SES
verification of the sender (`alerts.email.sender`; SES mails the address a link to click).

With `dry_run`, only the reads are made: the report lists what a real run would create or
change, and nothing in AWS is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import botocore.exceptions

from agent.audit.cloudwatch import METRIC_FILTERS
from agent.aws import Clients, error_code
from agent.config import Config, ReplicaGroups, replica_groups
from agent.errors import ConfigError
from agent.restore.job import EXPIRES_AT
from agent.restore.share import ensure_staging, staging_bucket
from agent.storage.ledger import table_definition

if TYPE_CHECKING:
    from mypy_boto3_s3.literals import EventType
    from mypy_boto3_s3.type_defs import NotificationConfigurationTypeDef
    from mypy_boto3_sqs.literals import QueueAttributeNameType

NOTIFICATION_ID = "backup-agent"
# What the agent acts on (agent/events.py): S3 Lifecycle deletes are reported only as
# LifecycleExpiration:*, never as ObjectRemoved:*, and ObjectRestore:Completed says an
# archived version became readable. (notification-how-to-event-types-and-destinations.html)
NOTIFIED_EVENTS: tuple[EventType, ...] = (
    "s3:ObjectCreated:*",
    "s3:ObjectRemoved:*",
    "s3:LifecycleExpiration:*",
    "s3:ObjectRestore:Completed",
)
POLICY_SID = "AllowS3Notifications"
FAN_OUT_SID = "AllowFanOutTopic"  # in each replica group's queue policy
TOPIC_POLICY_SID = "AllowS3Publish"  # in the fan-out topic's policy
RETENTION_SECONDS = 14 * 24 * 3600


@dataclass
class Report:
    created: list[str] = field(default_factory=list)  # with dry_run: what would be
    existing: list[str] = field(default_factory=list)
    dry_run: bool = False

    def add(self, what: str, created: bool) -> None:
        (self.created if created else self.existing).append(what)


class Bootstrap:
    def __init__(self, config: Config, clients: Clients, *, dry_run: bool = False) -> None:
        self.config = config
        self.clients = clients
        self.dry_run = dry_run
        self.report = Report(dry_run=dry_run)
        self._not_yet: set[str] = set()  # dry run: buckets a real run would have created

    def run(self, *, create_buckets: bool = False) -> Report:
        if create_buckets:
            for bucket in self.config.buckets:
                self.ensure_bucket(bucket)
        groups = replica_groups(self.config)
        if groups is None:
            queue_url, queue_arn = self.ensure_group_queue(
                self.config.queue.name, self.config.queue.dead_letter_name
            )
            self.ensure_queue_policy(queue_url, queue_arn)
            for bucket in self.config.buckets:
                self.ensure_notification(bucket, queue_arn)
        else:
            self.ensure_fan_out(groups)
        self.ensure_table()
        self.ensure_alerting()
        if self.config.restore.staging_bucket:
            self.ensure_share_staging()
        if self.config.audit.log_group:
            self.ensure_audit_log_group(self.config.audit.log_group)
        return self.report

    def ensure_group_queue(self, name: str, dead_letter_name: str) -> tuple[str, str]:
        """A queue and its dead-letter queue, with the redrive policy and the settings of
        the `queue:` section (every replica group's queue alike)."""
        _dlq_url, dlq_arn = self.ensure_queue(dead_letter_name, {})
        return self.ensure_queue(
            name,
            {
                "RedrivePolicy": json.dumps(
                    {
                        "deadLetterTargetArn": dlq_arn,
                        "maxReceiveCount": str(self.config.queue.max_receive_count),
                    }
                ),
                "VisibilityTimeout": str(int(self.config.queue.visibility_timeout.total_seconds())),
                "ReceiveMessageWaitTimeSeconds": str(self.config.queue.wait_time_seconds),
            },
        )

    def ensure_fan_out(self, groups: ReplicaGroups) -> None:
        """Topic, one queue per replica group subscribed to it, the buckets notifying it."""
        topic_arn = self.ensure_fan_out_topic(groups.topic)
        for name in groups.queues:
            url, arn = self.ensure_group_queue(name, name + "-dlq")
            self.ensure_queue_policy(url, arn, topic_arn)
            self.ensure_subscription(topic_arn, name, arn)
        for bucket in self.config.buckets:
            self.ensure_notification(bucket, topic_arn, topic=True)

    def ensure_fan_out_topic(self, name: str) -> str:
        """The fan-out topic (CreateTopic returns an existing one's ARN) and the statement
        of its policy that lets S3 publish: only from the configured buckets, only for this
        account (aws:SourceAccount: bucket ARNs name no account). Other statements (the
        owner's default one) are kept. Not encrypted with SNS's AWS-managed key: S3 could
        not publish to it (that key's policy cannot grant S3 kms:GenerateDataKey)."""
        sns = self.clients.sns()
        arn = self._topic_arn(name)
        exists = self._exists(arn)
        self.report.add(f"topic {name}", not exists)
        if not exists and self.dry_run:
            self.report.add(f"topic policy for S3 ({name})", True)
            return arn
        if not exists:
            arn = sns.create_topic(Name=name)["TopicArn"]
        ours = {
            "Sid": TOPIC_POLICY_SID,
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "SNS:Publish",
            "Resource": arn,
            "Condition": {
                "ArnLike": {
                    "aws:SourceArn": [
                        f"arn:{self._partition}:s3:::{b}" for b in self.config.buckets
                    ]
                },
                "StringEquals": {"aws:SourceAccount": arn.split(":")[4]},
            },
        }
        current = sns.get_topic_attributes(TopicArn=arn)["Attributes"].get("Policy")
        policy = _with_statement(current, ours)
        if policy is None:
            self.report.add(f"topic policy for S3 ({name})", False)
            return arn
        if not self.dry_run:
            sns.set_topic_attributes(
                TopicArn=arn, AttributeName="Policy", AttributeValue=json.dumps(policy)
            )
        self.report.add(f"topic policy for S3 ({name})", True)
        return arn

    @property
    def _partition(self) -> str:
        region = self.config.aws.region
        if region.startswith("cn-"):
            return "aws-cn"
        return "aws-us-gov" if region.startswith("us-gov-") else "aws"

    def _topic_arn(self, name: str) -> str:
        """arn:PARTITION:sns:REGION:ACCOUNT:NAME, the account queue.url's."""
        account = self._queue_arn(name).split(":")[4]
        return f"arn:{self._partition}:sns:{self.config.aws.region}:{account}:{name}"

    def ensure_subscription(self, topic_arn: str, queue_name: str, queue_arn: str) -> None:
        """The group's queue subscribed to the topic with raw message delivery: the queue
        gets S3's own notification, as from a direct notification, not SNS's envelope
        (agent/events.py reads both)."""
        what = f"subscription {queue_name} → topic (raw delivery)"
        sns = self.clients.sns()
        found = None
        if not self.dry_run or self._exists(topic_arn):
            paginator = sns.get_paginator("list_subscriptions_by_topic")
            for page in paginator.paginate(TopicArn=topic_arn):
                for subscription in page.get("Subscriptions", []):
                    if subscription.get("Protocol") == "sqs" and (
                        subscription.get("Endpoint") == queue_arn
                    ):
                        found = subscription.get("SubscriptionArn")
        if found is None:
            if not self.dry_run:
                sns.subscribe(
                    TopicArn=topic_arn,
                    Protocol="sqs",
                    Endpoint=queue_arn,
                    Attributes={"RawMessageDelivery": "true"},
                    ReturnSubscriptionArn=True,
                )
            self.report.add(what, True)
            return
        raw = sns.get_subscription_attributes(SubscriptionArn=found)["Attributes"]
        if raw.get("RawMessageDelivery") == "true":
            self.report.add(what, False)
            return
        if not self.dry_run:
            sns.set_subscription_attributes(
                SubscriptionArn=found, AttributeName="RawMessageDelivery", AttributeValue="true"
            )
        self.report.add(what, True)

    def _exists(self, topic_arn: str) -> bool:
        try:
            self.clients.sns().get_topic_attributes(TopicArn=topic_arn)
        except botocore.exceptions.ClientError:
            return False
        return True

    def ensure_alerting(self) -> None:
        """The SNS topic and the SES sender identity, when the alerts section names them."""
        alerts = self.config.alerts
        if alerts.sns_topic_arn:
            self.ensure_topic(alerts.sns_topic_arn)
        if alerts.email is not None:
            self.ensure_email_identity(alerts.email.sender)

    def ensure_email_identity(self, sender: str) -> None:
        ses = self.clients.ses()
        attributes = ses.get_identity_verification_attributes(Identities=[sender])
        found = attributes["VerificationAttributes"].get(sender)
        status = found["VerificationStatus"] if found else None
        if status in {"Success", "Pending"}:
            self.report.add(f"SES identity {sender} ({status.lower()})", False)
            return
        if self.dry_run:
            self.report.add(f"SES identity {sender} (verification mail)", True)
            return
        ses.verify_email_identity(EmailAddress=sender)
        self.report.add(f"SES identity {sender} (verification mail sent)", True)

    def ensure_bucket(self, bucket: str) -> None:
        s3 = self.clients.s3
        try:
            s3.head_bucket(Bucket=bucket)
            self.report.add(f"bucket {bucket}", False)
        except botocore.exceptions.ClientError:
            if self.dry_run:
                self._not_yet.add(bucket)
                self.report.add(f"bucket {bucket}", True)
                return
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if self.config.aws.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.config.aws.region}
            s3.create_bucket(**kwargs)
            self.report.add(f"bucket {bucket}", True)

    def ensure_queue(
        self, name: str, attributes: dict[QueueAttributeNameType, str]
    ) -> tuple[str, str]:
        sqs = self.clients.sqs
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            created = False
        except botocore.exceptions.ClientError as exc:
            if "NonExistentQueue" not in error_code(exc):
                raise
            if self.dry_run:
                self.report.add(f"queue {name}", True)
                return "", self._queue_arn(name)
            url = sqs.create_queue(
                QueueName=name,
                Attributes={
                    "MessageRetentionPeriod": str(RETENTION_SECONDS),
                    "SqsManagedSseEnabled": "true",
                    **attributes,
                },
            )["QueueUrl"]
            created = True
        if not created and attributes:
            current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            changed = {k: v for k, v in attributes.items() if not _same(k, current.get(k), v)}
            if changed and self.dry_run:
                self.report.add(f"queue {name} attributes ({', '.join(sorted(changed))})", True)
            elif changed:  # only what differs: setting attributes is not free of side effects
                sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.report.add(f"queue {name}", created)
        return url, arn

    def _queue_arn(self, name: str) -> str:
        """The ARN a queue not yet created will have (dry run): the account is queue.url's."""
        parts = self.config.queue.url.rstrip("/").split("/")
        account = parts[-2] if len(parts) >= 2 else ""
        return f"arn:aws:sqs:{self.config.aws.region}:{account}:{name}"

    def ensure_queue_policy(
        self, queue_url: str, queue_arn: str, topic_arn: str | None = None
    ) -> None:
        """Add (or update) our statement; other statements in the policy are kept. It lets
        S3 send from the configured buckets or, for a replica group's queue, the fan-out
        topic `topic_arn` (nothing else) send."""
        if topic_arn is None:
            what = "queue policy for S3"
            ours: dict[str, Any] = {
                "Sid": POLICY_SID,
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {
                    "ArnLike": {"aws:SourceArn": [f"arn:aws:s3:::{b}" for b in self.config.buckets]}
                },
            }
        else:
            what = f"queue policy for the topic ({queue_arn.rsplit(':', 1)[-1]})"
            ours = {
                "Sid": FAN_OUT_SID,
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
            }
        if not queue_url:  # dry run: the queue does not exist yet
            self.report.add(what, True)
            return
        current = self.clients.sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["Policy"]
        ).get("Attributes", {})
        policy = _with_statement(current.get("Policy"), ours)
        if policy is None:
            self.report.add(what, False)
            return
        if self.dry_run:
            self.report.add(what, True)
            return
        self.clients.sqs.set_queue_attributes(
            QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)}
        )
        self.report.add(what, True)

    def ensure_notification(self, bucket: str, target_arn: str, *, topic: bool = False) -> None:
        """Our queue (or, with replicas, the fan-out topic) notified of every event type in
        NOTIFIED_EVENTS; other configurations of the bucket are kept
        (PutBucketNotificationConfiguration replaces them all). Our configuration of the
        other kind (`replicas` changed) is removed: S3 refuses overlapping ones."""
        s3 = self.clients.s3
        kind, other = ("Topic", "Queue") if topic else ("Queue", "Topic")
        what = f"notification {bucket} → {kind.lower()}"
        if bucket in self._not_yet:  # dry run: a bucket --create-buckets would create
            self.report.add(what, True)
            return
        try:
            answer = s3.get_bucket_notification_configuration(Bucket=bucket)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "NoSuchBucket":
                raise
            raise ConfigError(
                [f"buckets: {bucket}: no such bucket (create it, or run with --create-buckets)"]
            ) from None
        current: dict[str, Any] = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
        targets: list[dict[str, Any]] = list(current.get(f"{kind}Configurations", []))
        others: list[dict[str, Any]] = list(current.get(f"{other}Configurations", []))
        ours = [q for q in targets if q.get(f"{kind}Arn") == target_arn]
        replaced = [q for q in others if q.get("Id") == NOTIFICATION_ID]
        if ours:
            have = [e for q in ours for e in q.get("Events", [])]
            missing = [e for e in NOTIFIED_EVENTS if not any(covers(h, e) for h in have)]
            if not missing and not replaced:
                self.report.add(what, False)
                return
            # Into the configuration already pointing here (a second one with overlapping
            # events for the same queue would be refused by S3); its filter stays.
            target = next((q for q in ours if q.get("Id") == NOTIFICATION_ID), ours[0])
            target["Events"] = [*target.get("Events", []), *missing]
            if missing:
                what += f" (added {', '.join(missing)})"
        else:
            targets = [q for q in targets if q.get("Id") != NOTIFICATION_ID]
            targets.append(
                {"Id": NOTIFICATION_ID, f"{kind}Arn": target_arn, "Events": list(NOTIFIED_EVENTS)}
            )
        if replaced:
            what += f" (in place of the {other.lower()})"
        if self.dry_run:
            self.report.add(what, True)
            return
        current[f"{kind}Configurations"] = targets
        current[f"{other}Configurations"] = [q for q in others if q.get("Id") != NOTIFICATION_ID]
        configuration = cast("NotificationConfigurationTypeDef", current)
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=configuration
        )
        self.report.add(what, True)

    def ensure_table(self) -> None:
        db = self.clients.dynamodb
        name = self.config.state.table
        try:
            db.describe_table(TableName=name)
            self.report.add(f"table {name}", False)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            self.report.add(f"table {name}", True)
            if self.dry_run:
                self.report.add(f"time to live {name}.{EXPIRES_AT}", True)
                return
            db.create_table(**table_definition(name))
            db.get_waiter("table_exists").wait(TableName=name)
        self.ensure_time_to_live(name)

    def ensure_time_to_live(self, table: str) -> None:
        """DynamoDB TTL on `expires_at`: restore-job items (agent/restore/job.py) go some
        days after they expire. Asked first, enabled only when off: AWS refuses a second
        UpdateTimeToLive within the hour, and a table has one TTL attribute (one set to
        another attribute is left alone, and said)."""
        db = self.clients.dynamodb
        what = f"time to live {table}.{EXPIRES_AT}"
        described = db.describe_time_to_live(TableName=table).get("TimeToLiveDescription", {})
        status = described.get("TimeToLiveStatus", "DISABLED")
        attribute = described.get("AttributeName")
        if status in ("ENABLED", "ENABLING") and attribute == EXPIRES_AT:
            self.report.add(what, False)
            return
        if status != "DISABLED":  # on another attribute, or being turned off: not ours to change
            self.report.add(
                f"{what}: not set, the table's time to live is {status.lower()} on"
                f" {attribute} (restore-job items stay until deleted by hand)",
                False,
            )
            return
        if not self.dry_run:
            db.update_time_to_live(
                TableName=table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": EXPIRES_AT},
            )
        self.report.add(what, True)

    def ensure_topic(self, arn: str) -> None:
        """The alert topic named by alerts.sns_topic_arn (subscribing people is up to you)."""
        sns = self.clients.sns()
        try:
            sns.get_topic_attributes(TopicArn=arn)
            self.report.add(f"topic {arn}", False)
            return
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in ("NotFound", "NotFoundException"):
                raise
        if self.dry_run:
            self.report.add(f"topic {arn}", True)
            return
        created = sns.create_topic(Name=arn.rsplit(":", 1)[-1])["TopicArn"]
        if created != arn:
            raise ConfigError([f"alerts.sns_topic_arn: {arn} is not in this account/region"])
        self.report.add(f"topic {arn}", True)

    def ensure_share_staging(self) -> None:
        """The `share` staging bucket: encrypted, private, staged copies expire."""

        bucket = staging_bucket(self.config.restore, self.config.buckets)
        self.ensure_bucket(bucket)
        if self.dry_run:  # its encryption, public access block and lifecycle: set on a real run
            self.report.add(f"staging bucket {bucket} settings (set again on a real run)", True)
            return
        for what, changed in ensure_staging(self.clients.s3, self.config.restore, bucket):
            self.report.add(what, changed)

    def ensure_audit_log_group(self, group: str) -> None:
        """The audit trail's log group, its retention, and the metric filters that count
        restores, shares and removals for the dashboard (agent/audit/cloudwatch.py)."""
        logs = self.clients.logs()
        try:
            logs.create_log_group(logGroupName=group)
            self.report.add(f"log group {group}", True)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ResourceAlreadyExistsException":
                raise
            self.report.add(f"log group {group}", False)
        days = self.config.audit.log_retention_days
        logs.put_retention_policy(logGroupName=group, retentionInDays=days)
        for name, (metric, pattern) in METRIC_FILTERS.items():
            logs.put_metric_filter(
                logGroupName=group,
                filterName=name,
                filterPattern=pattern,
                metricTransformations=[
                    {
                        "metricName": metric,
                        "metricNamespace": self.config.metrics.namespace,
                        "metricValue": "1",
                        "defaultValue": 0,
                    }
                ],
            )


def _with_statement(current: str | None, ours: dict[str, Any]) -> dict[str, Any] | None:
    """The policy document `current` with `ours` in place of the statement of the same Sid,
    or None when it holds `ours` already."""
    policy = json.loads(current or '{"Version": "2012-10-17"}')
    statements = policy.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    if ours in statements:
        return None
    policy["Statement"] = [s for s in statements if s.get("Sid") != ours["Sid"]] + [ours]
    return dict(policy)


def covers(have: str, wanted: str) -> bool:
    """Does the configured event type `have` include `wanted` (s3:ObjectRestore:* does
    s3:ObjectRestore:Completed)?"""
    return have == wanted or (have.endswith(":*") and wanted.startswith(have[:-1]))


def _same(name: str, current: str | None, wanted: str) -> bool:
    if current is None:
        return False
    if name == "RedrivePolicy":
        have, want = json.loads(current), json.loads(wanted)
        return bool(
            have.get("deadLetterTargetArn") == want.get("deadLetterTargetArn")
            and str(have.get("maxReceiveCount")) == str(want.get("maxReceiveCount"))
        )
    return str(current) == wanted
