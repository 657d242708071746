"""`backup-agent alarms`: the CloudWatch alarms an operator needs, created idempotently.

Every alarm notifies the configured SNS topic on ALARM and on OK. Running the command
again changes nothing unless the config changed (alarms that already match are left
alone; others are overwritten with PutMetricAlarm, which is itself idempotent).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from agent.config import Config, queue_name
from agent.errors import ConfigError
from agent.fleet.member import FLEET_DIMENSION, MISSING_METRIC
from agent.monitoring.metrics import dimension_list
from agent.snapshots.metrics import snapshot_age_alarm

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

# Fields of DescribeAlarms' answer compared with what we would put.
COMPARED = (
    "AlarmDescription",
    "MetricName",
    "Namespace",
    "Statistic",
    "Dimensions",
    "Period",
    "EvaluationPeriods",
    "DatapointsToAlarm",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
    "AlarmActions",
    "OKActions",
    "ActionsEnabled",
)


@dataclass(frozen=True)
class Change:
    name: str
    action: str  # "created", "updated", "unchanged" (or "would create" … with --dry-run)


def alarm_specs(config: Config, dimensions: Mapping[str, str]) -> list[dict[str, Any]]:
    """PutMetricAlarm requests for this instance, its queue and its dead-letter queue."""
    topic = config.alerts.sns_topic_arn
    if not topic:
        raise ConfigError(["alerts.sns_topic_arn: required: every alarm notifies this topic"])
    alarms = config.alarms
    namespace = config.metrics.namespace
    prefix = f"{alarms.name_prefix}-{dimensions['InstanceId']}"
    dims = dimension_list(dimensions)
    period = alarms.period_seconds
    disk_threshold = alarms.disk_used_percent or config.alerts.disk_used_percent
    dlq = config.queue.dead_letter_name
    common: dict[str, Any] = {
        "ActionsEnabled": True,
        "AlarmActions": [topic],
        "OKActions": [topic],
        "ComparisonOperator": "GreaterThanThreshold",
    }
    specs = [
        {
            **common,
            "AlarmName": f"{prefix}-disk-space",
            "AlarmDescription": (
                f"Backup volume {dimensions['Volume']} more than {disk_threshold:g}% used"
                f" for {alarms.disk_periods} periods of {period} s."
            ),
            "Namespace": namespace,
            "MetricName": "DiskUsedPercent",
            "Dimensions": dims,
            "Statistic": "Maximum",
            "Period": period,
            "EvaluationPeriods": alarms.disk_periods,
            "Threshold": float(disk_threshold),
            "TreatMissingData": "missing",
        },
        {
            **common,
            "AlarmName": f"{prefix}-not-reporting",
            "AlarmDescription": (
                "The agent sent no metrics for a whole period: stopped, hung, or cut off from"
                " CloudWatch."
            ),
            "Namespace": namespace,
            "MetricName": "SecondsSinceLastBackup",  # sent with every sample, backups or not
            "Dimensions": dims,
            "Statistic": "SampleCount",
            "Period": period,
            "EvaluationPeriods": 1,
            "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",  # no datapoint is the very thing to alarm on
        },
        {
            **common,
            "AlarmName": f"{prefix}-failed-backups",
            "AlarmDescription": (
                f"More than {alarms.failed_backups} failed backup attempts in {period} s."
            ),
            "Namespace": namespace,
            "MetricName": "BackupsFailed",
            "Dimensions": dims,
            "Statistic": "Sum",
            "Period": period,
            "EvaluationPeriods": 1,
            "Threshold": float(alarms.failed_backups),
            "TreatMissingData": "notBreaching",
        },
        {
            **common,
            "AlarmName": f"{alarms.name_prefix}-{dlq}-messages",
            "AlarmDescription": (
                f"More than {alarms.dead_letter_messages} message(s) in the dead-letter queue"
                f" {dlq}: backups that failed for good."
            ),
            "Namespace": "AWS/SQS",
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Dimensions": [{"Name": "QueueName", "Value": dlq}],
            "Statistic": "Maximum",
            "Period": period,
            "EvaluationPeriods": 1,
            "Threshold": float(alarms.dead_letter_messages),
            "TreatMissingData": "notBreaching",
        },
    ]
    specs.append(oldest_message_alarm(config, common))
    if alarms.no_backup_hours is not None:
        specs.append(no_backup_alarm(config, prefix, dims, common, alarms.no_backup_hours))
    specs.append(days_until_full_alarm(config, prefix, dims, common, dimensions["Volume"]))
    specs.append(fleet_heartbeat_alarm(config, common))
    if config.snapshots.enabled:
        specs.append(
            snapshot_age_alarm(
                config.snapshots,
                alarm_name=f"{prefix}-snapshot-age",
                namespace=namespace,
                dimensions=dims,
                alarm_actions=[topic],
                period_seconds=period,
            )
        )
    return specs


def oldest_message_alarm(config: Config, common: Mapping[str, Any]) -> dict[str, Any]:
    """The backlog is stuck while the agent looks alive: the main queue's oldest message
    (AWS/SQS, so it alarms with the agent down too) is older than
    `alarms.oldest_message_minutes`. SQS sends the metric only while the queue is active and
    holds a message: no datapoint is an empty queue, not a problem."""
    minutes = config.alarms.oldest_message_minutes
    queue = config.queue.name
    return {
        **common,
        "AlarmName": f"{config.alarms.name_prefix}-{queue}-oldest-message",
        "AlarmDescription": (
            f"The oldest message in {queue} is more than {minutes:g} minutes old: backups are"
            " not keeping up, or not being taken."
        ),
        "Namespace": "AWS/SQS",
        "MetricName": "ApproximateAgeOfOldestMessage",
        "Dimensions": [{"Name": "QueueName", "Value": queue}],
        "Statistic": "Maximum",
        "Period": config.alarms.period_seconds,
        "EvaluationPeriods": 1,
        "Threshold": float(minutes * 60),
        "TreatMissingData": "notBreaching",
    }


def no_backup_alarm(
    config: Config,
    prefix: str,
    dims: list[dict[str, str]],
    common: Mapping[str, Any],
    hours: float,
) -> dict[str, Any]:
    """Opt-in (`alarms.no_backup_hours`): for buckets expected to change at least every N
    hours, silence is the symptom (a broken notification, a writer that stopped). Missing
    data is breaching: an agent that stopped reporting cannot vouch for its buckets."""
    return {
        **common,
        "AlarmName": f"{prefix}-no-backup",
        "AlarmDescription": (
            f"No object backed up for {hours:g} hours, though the buckets are expected to"
            " change at least that often (or the agent stopped reporting)."
        ),
        "Namespace": config.metrics.namespace,
        "MetricName": "SecondsSinceLastBackup",
        "Dimensions": dims,
        "Statistic": "Maximum",
        "Period": config.alarms.period_seconds,
        "EvaluationPeriods": 1,
        "Threshold": float(hours * 3600),
        "TreatMissingData": "breaching",
    }


def days_until_full_alarm(
    config: Config,
    prefix: str,
    dims: list[dict[str, str]],
    common: Mapping[str, Any],
    volume: str,
) -> dict[str, Any]:
    """The forecast alarm (agent/monitoring/forecast.py): it fires days before the
    percentage alarm would. No datapoint (too little history after a start) is not breaching."""
    days = config.alerts.days_until_full
    return {
        **common,
        "AlarmName": f"{prefix}-days-until-full",
        "AlarmDescription": (
            f"Backup volume {volume} forecast to reach its free-space floor within {days:g}"
            " days at its recent growth rate."
        ),
        "Namespace": config.metrics.namespace,
        "MetricName": "DaysUntilFull",
        "Dimensions": dims,
        "Statistic": "Minimum",
        "Period": config.alarms.period_seconds,
        "EvaluationPeriods": 1,
        "Threshold": float(days),
        "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": "notBreaching",
    }


def fleet_heartbeat_alarm(config: Config, common: Mapping[str, Any]) -> dict[str, Any]:
    """One alarm for the fleet on the queue: a member's heartbeat missing (its survivors
    publish how many; agent/fleet/), or no member publishing at all (missing is breaching).
    Every member's `backup-agent alarms` puts the same alarm."""
    fleet = queue_name(config.queue.url)
    return {
        **common,
        "AlarmName": f"{config.alarms.name_prefix}-fleet-{fleet}-heartbeat-missing",
        "AlarmDescription": (
            f"A member of the fleet on queue {fleet} stopped its heartbeat (or no member"
            " reports at all): see backup-agent status --fleet."
        ),
        "Namespace": config.metrics.namespace,
        "MetricName": MISSING_METRIC,
        "Dimensions": [{"Name": FLEET_DIMENSION, "Value": fleet}],
        "Statistic": "Maximum",
        "Period": config.alarms.period_seconds,
        "EvaluationPeriods": 1,
        "Threshold": 0.0,
        "TreatMissingData": "breaching",
    }


def _comparable(alarm: Mapping[str, Any]) -> dict[str, Any]:
    picked = {key: alarm.get(key) for key in COMPARED if key != "DatapointsToAlarm"}
    picked["Dimensions"] = sorted((d["Name"], d["Value"]) for d in (alarm.get("Dimensions") or []))
    picked["Threshold"] = float(alarm.get("Threshold") or 0)
    return picked


class Alarms:
    def __init__(
        self, cloudwatch: CloudWatchClient, config: Config, dimensions: Mapping[str, str]
    ) -> None:
        self.cloudwatch = cloudwatch
        self.specs = alarm_specs(config, dimensions)

    def existing(self) -> dict[str, dict[str, Any]]:
        names = [spec["AlarmName"] for spec in self.specs]
        found = self.cloudwatch.describe_alarms(AlarmNames=names, AlarmTypes=["MetricAlarm"])
        return {
            alarm["AlarmName"]: cast("dict[str, Any]", alarm)
            for alarm in found.get("MetricAlarms", [])
        }

    def apply(self, *, dry_run: bool = False) -> list[Change]:
        current = self.existing()
        changes = []
        for spec in self.specs:
            name = spec["AlarmName"]
            if name in current and _comparable(current[name]) == _comparable(spec):
                changes.append(Change(name, "unchanged"))
                continue
            action = "updated" if name in current else "created"
            if dry_run:
                changes.append(Change(name, f"would be {action}"))
                continue
            self.cloudwatch.put_metric_alarm(**spec)
            changes.append(Change(name, action))
        return changes


def run(
    config: Config, cloudwatch: CloudWatchClient, dimensions: Mapping[str, str], dry_run: bool
) -> int:
    """The CLI command's body: apply (or plan) and print one line per alarm."""
    alarms = Alarms(cloudwatch, config, dimensions)
    if dry_run:
        print(json.dumps(alarms.specs, indent=2, sort_keys=True))
    for change in alarms.apply(dry_run=dry_run):
        print(f"{change.action:<16} {change.name}")
    return 0
