"""`backup-agent check-config --online`: the configuration checked against AWS and the volume.

Like `vector validate`: beyond the file, each thing the agent relies on is looked at, read
only, and each problem is one line naming its config key:

* credentials: STS GetCallerIdentity (when it fails nothing else is asked);
* the region: `aws.region` agrees with the queue URL's;
* the queue: exists and its attributes can be read; a redrive policy, its dead-letter queue
  existing and its maxReceiveCount equal to `queue.max_receive_count`;
* the table: exists, with the key schema and the by-key index `table_definition` creates;
* each bucket: reachable, and its notification sends this queue (with `fleet.replicas`
  above 1: the fan-out topic) every event type
  bootstrap subscribes (`NOTIFIED_EVENTS`); its versioning state is reported, not judged
  (the agent backs up unversioned buckets too);
* the volume: marker present, writable by this user.

No message is received (that would count against the redrive policy) and nothing is changed.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from agent.aws import Clients, error_code, known_regions
from agent.config import Config, replica_groups
from agent.errors import VolumeNotReady
from agent.operations.bootstrap import NOTIFIED_EVENTS, covers
from agent.storage.ledger import KEY_INDEX, table_definition
from agent.storage.volume import Volume

_QUEUE_HOST = re.compile(
    r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$|^([a-z0-9-]+)\.queue\.amazonaws"
)


@dataclass
class OnlineReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts worth showing, not problems


def _failed(exc: Exception) -> str:
    code = error_code(exc)
    text = str(exc)
    return text if code in text else f"{code}: {text}"


def queue_region(url: str) -> str | None:
    """The region in an SQS queue URL's host, or None (a custom endpoint, say)."""
    match = _QUEUE_HOST.match(urlparse(url).hostname or "")
    if not match:
        return None
    return match.group(1) or match.group(3)


def region_problem(config: Config) -> str | None:
    """`aws.region` against the region in queue.url's host and against the regions the
    installed botocore knows (neither for a custom endpoint): needs no AWS call, so
    `check-config` without --online says it too."""
    region = queue_region(config.queue.url)
    if region is not None and region != config.aws.region:
        return (
            f"aws.region: {config.aws.region}, but queue.url is in {region}: set aws.region"
            f" to {region}"
        )
    if config.aws.endpoint_url is None and config.aws.region not in known_regions():
        return (
            f"aws.region: {config.aws.region} is not a region this botocore knows"
            " (a region newer than it? upgrade the agent)"
        )
    return None


def check_online(config: Config, clients: Clients) -> OnlineReport:
    report = OnlineReport()
    try:
        identity = clients.sts().get_caller_identity()
    except Exception as exc:  # noqa: BLE001 - each failure is a line of the report
        report.problems.append(f"aws: credentials: STS GetCallerIdentity failed: {_failed(exc)}")
        return report  # every other call would fail the same way
    report.notes.append(f"aws: credentials of {identity.get('Arn')}")
    disagrees = region_problem(config)
    if disagrees:
        report.problems.append(disagrees)
    queue_arn = _check_queue(config, clients, report)
    _check_table(config, clients, report)
    for bucket in config.buckets:
        _check_bucket(config, clients, bucket, queue_arn, report)
    _check_volume(config, report)
    return report


def _check_queue(config: Config, clients: Clients, report: OnlineReport) -> str | None:
    url = config.queue.url
    try:
        attrs = clients.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn", "RedrivePolicy"]
        )["Attributes"]
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"queue.url: {url}: cannot read the queue: {_failed(exc)}")
        return None
    redrive = attrs.get("RedrivePolicy")
    if not redrive:
        report.problems.append(
            f"queue.url: {url} has no redrive policy: a message that always fails is retried"
            " for ever (run bootstrap-aws)"
        )
        return attrs.get("QueueArn")
    policy = json.loads(redrive)
    count = int(policy.get("maxReceiveCount", 0))
    if count != config.queue.max_receive_count:
        report.problems.append(
            f"queue.max_receive_count: {config.queue.max_receive_count}, but the queue's"
            f" redrive policy says {count} (run bootstrap-aws, or set it to {count})"
        )
    dlq_name = str(policy.get("deadLetterTargetArn", "")).rsplit(":", 1)[-1]
    try:
        clients.sqs.get_queue_url(QueueName=dlq_name)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(
            f"queue.url: the dead-letter queue {dlq_name} cannot be found: {_failed(exc)}"
        )
    return attrs.get("QueueArn")


def _keys(schema: Any) -> list[tuple[str, str]]:
    return [(k["AttributeName"], k["KeyType"]) for k in schema or []]


def _check_table(config: Config, clients: Clients, report: OnlineReport) -> None:
    name = config.state.table
    try:
        table = clients.dynamodb.describe_table(TableName=name)["Table"]
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"state.table: {name}: cannot describe it: {_failed(exc)}")
        return
    wanted = table_definition(name)
    if _keys(table.get("KeySchema")) != _keys(wanted["KeySchema"]):
        report.problems.append(
            f"state.table: {name} has keys {_keys(table.get('KeySchema'))}, expected"
            f" {_keys(wanted['KeySchema'])}: not a backup-agent table"
        )
    indexes = {i["IndexName"]: i for i in table.get("GlobalSecondaryIndexes", [])}
    want_index = wanted["GlobalSecondaryIndexes"][0]
    have_index = indexes.get(KEY_INDEX)
    if have_index is None or _keys(have_index.get("KeySchema")) != _keys(want_index["KeySchema"]):
        report.problems.append(
            f"state.table: {name} lacks the {KEY_INDEX} index"
            f" ({_keys(want_index['KeySchema'])}) that listing by key needs"
        )


def _check_bucket(
    config: Config, clients: Clients, bucket: str, queue_arn: str | None, report: OnlineReport
) -> None:
    owner: dict[str, Any] = {}
    if config.aws.expected_bucket_owner:
        owner["ExpectedBucketOwner"] = config.aws.expected_bucket_owner
    s3 = clients.s3
    try:
        s3.head_bucket(Bucket=bucket, **owner)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"buckets: {bucket}: not reachable: {_failed(exc)}")
        return
    try:
        versioning = s3.get_bucket_versioning(Bucket=bucket, **owner).get("Status", "never enabled")
        report.notes.append(f"buckets: {bucket}: versioning {versioning}")
        answer = s3.get_bucket_notification_configuration(Bucket=bucket, **owner)
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"buckets: {bucket}: cannot read its settings: {_failed(exc)}")
        return
    if queue_arn is None:
        return  # the queue's own problem is already said
    kind, target = "Queue", queue_arn
    groups = replica_groups(config)
    if groups is not None:  # replicas: the bucket notifies the fan-out topic instead
        arn = queue_arn.split(":")
        kind, target = "Topic", ":".join([*arn[:2], "sns", *arn[3:5], groups.topic])
    found: dict[str, Any] = dict(answer)
    configurations: list[dict[str, Any]] = found.get(f"{kind}Configurations", [])
    ours = [q for q in configurations if q.get(f"{kind}Arn") == target]
    have = [e for q in ours for e in q.get("Events", [])]
    missing = [e for e in NOTIFIED_EVENTS if not any(covers(h, e) for h in have)]
    if not ours:
        report.problems.append(
            f"buckets: {bucket}: no notification sends its events to {target} (run bootstrap-aws)"
        )
    elif missing:
        report.problems.append(
            f"buckets: {bucket}: the notification to the {kind.lower()} lacks"
            f" {', '.join(missing)} (run bootstrap-aws)"
        )


def _check_volume(config: Config, report: OnlineReport) -> None:
    volume = Volume(config.storage.root)
    try:
        volume.read_marker()
    except VolumeNotReady as exc:
        report.problems.append(f"storage.root: {exc}")
        return
    try:
        with tempfile.TemporaryFile(dir=volume.root, prefix=".check-config."):
            pass
    except OSError as exc:
        report.problems.append(
            f"storage.root: {volume.root} is not writable by this user"
            f" (uid {os.getuid()}): {exc.strerror}"
        )
