"""`backup-agent dashboard`: one CloudWatch dashboard, one row of widgets per instance.

Instances are found from the metrics they published (ListMetrics on the namespace) plus
the instance running the command, so the dashboard shows the whole fleet. PutDashboard
overwrites; the command only calls it when the body would change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import botocore.exceptions

from agent.aws import error_code
from agent.config import Config, queue_name
from agent.fleet.member import FLEET_DIMENSION, MISSING_METRIC

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

WIDTH = 6
HEIGHT = 6


def discover(cloudwatch: CloudWatchClient, namespace: str) -> list[dict[str, str]]:
    """Dimension sets of every agent that published DiskUsedPercent (last two weeks)."""
    found: list[dict[str, str]] = []
    paginator = cloudwatch.get_paginator("list_metrics")
    for page in paginator.paginate(Namespace=namespace, MetricName="DiskUsedPercent"):
        for metric in page.get("Metrics", []):
            dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            if "InstanceId" in dims and dims not in found:
                found.append(dims)
    return found


def _metric(namespace: str, name: str, dims: Mapping[str, str], **options: Any) -> list[Any]:
    flat: list[Any] = [namespace, name]
    for key, value in dims.items():
        flat.extend([key, value])
    return [*flat, options] if options else flat


def _widget(
    title: str, metrics: list[list[Any]], x: int, y: int, region: str, **props: Any
) -> dict[str, Any]:
    return {
        "type": "metric",
        "x": x,
        "y": y,
        "width": WIDTH,
        "height": HEIGHT,
        "properties": {
            "title": title,
            "metrics": metrics,
            "region": region,
            "view": "timeSeries",
            "period": 300,
            **props,
        },
    }


def fleet_widget(config: Config) -> dict[str, Any]:
    """The fleet on the queue: members whose heartbeat is missing (agent/fleet/), and the
    backups of every member summed by metric math (SEARCH over the instances' metrics)."""
    ns = config.metrics.namespace
    fleet = queue_name(config.queue.url)
    search = f"SEARCH('{{{ns},InstanceId,Volume}} MetricName=\"BackupsSucceeded\"', 'Sum', 300)"
    return _widget(
        f"Fleet {fleet}: backups, members missing",
        [
            [{"expression": f"SUM({search})", "label": "backups, all members", "id": "fleet"}],
            _metric(ns, MISSING_METRIC, {FLEET_DIMENSION: fleet}, stat="Maximum", yAxis="right"),
        ],
        WIDTH,
        0,
        config.aws.region,
    )


def dashboard_body(config: Config, instances: list[dict[str, str]]) -> dict[str, Any]:
    """The dashboard JSON: a fleet row (dead-letter queue), then one row per instance."""
    ns = config.metrics.namespace
    region = config.aws.region
    dlq = config.queue.dead_letter_name
    widgets: list[dict[str, Any]] = [
        _widget(
            f"Dead-letter queue {dlq}",
            [_metric("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": dlq})],
            0,
            0,
            region,
            stat="Maximum",
        ),
        fleet_widget(config),
    ]
    no_backup = config.alarms.no_backup_hours * 3600
    disk_limit = config.alarms.disk_used_percent or config.alerts.disk_used_percent
    ordered = sorted(instances, key=lambda d: sorted(d.items()))
    for row, dims in enumerate(ordered):
        y = HEIGHT + 1 + row * (HEIGHT + 1)
        label = " ".join(dims.values())
        widgets.append(
            {
                "type": "text",
                "x": 0,
                "y": y - 1,
                "width": 24,
                "height": 1,
                "properties": {"markdown": f"### {label}"},
            }
        )
        cells = [
            (
                "Disk used % and free bytes",
                [
                    _metric(ns, "DiskUsedPercent", dims, stat="Maximum"),
                    _metric(ns, "DiskFreeBytes", dims, stat="Minimum", yAxis="right"),
                ],
                {"annotations": {"horizontal": [{"label": "alarm", "value": disk_limit}]}},
            ),
            (
                "Backups and failures",
                [
                    _metric(ns, "BackupsSucceeded", dims, stat="Sum"),
                    _metric(ns, "BackupsFailed", dims, stat="Sum"),
                    _metric(ns, "BackupsGaveUp", dims, stat="Sum"),
                ],
                {},
            ),
            (
                "Bytes backed up and stored",
                [
                    _metric(ns, "BytesBackedUp", dims, stat="Sum"),
                    _metric(ns, "BytesStored", dims, stat="Sum"),
                ],
                {},
            ),
            (
                "Lag and time since last backup (s)",
                [
                    _metric(ns, "BackupLagSeconds", dims, stat="Average"),
                    _metric(ns, "BackupLagSeconds", dims, stat="Maximum"),
                    _metric(ns, "SecondsSinceLastBackup", dims, stat="Maximum"),
                ],
                {"annotations": {"horizontal": [{"label": "no backup", "value": no_backup}]}},
            ),
        ]
        for column, (title, metrics, extra) in enumerate(cells):
            widgets.append(_widget(title, metrics, column * WIDTH, y, region, **extra))
    return {"widgets": widgets}


class Dashboard:
    def __init__(self, cloudwatch: CloudWatchClient, config: Config) -> None:
        self.cloudwatch = cloudwatch
        self.config = config
        self.name = config.metrics.dashboard

    def body(self, current: Mapping[str, str]) -> dict[str, Any]:
        instances = discover(self.cloudwatch, self.config.metrics.namespace)
        if dict(current) not in instances:
            instances.append(dict(current))
        return dashboard_body(self.config, instances)

    def apply(self, current: Mapping[str, str], *, dry_run: bool = False) -> str:
        """Returns created, updated or unchanged ("would be …" with `dry_run`)."""
        body = self.body(current)
        try:
            existing = self.cloudwatch.get_dashboard(DashboardName=self.name)
            previous = json.loads(existing["DashboardBody"])
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ResourceNotFound":
                raise
            previous = None
        if previous == body:
            return "unchanged"
        action = "created" if previous is None else "updated"
        if dry_run:
            return f"would be {action}"
        self.cloudwatch.put_dashboard(DashboardName=self.name, DashboardBody=json.dumps(body))
        return action
