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

from agent.audit.cloudwatch import METRIC_FILTERS
from agent.aws import error_code
from agent.config import Config, queue_name
from agent.fleet.member import FLEET_DIMENSION, MISSING_METRIC

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

WIDTH = 6
HEIGHT = 6
PER_LINE = 24 // WIDTH  # CloudWatch's grid is 24 units wide
ROW_LINES = 2  # lines of widgets per instance (space_cells start the second)


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


def space_cells(
    ns: str, dims: Mapping[str, str], days_until_full: float
) -> list[tuple[str, list[list[Any]], dict[str, Any]]]:
    """Low space handled (issue 17): is the consumer paused, and how soon is the volume full."""
    return [
        (
            "Paused (1) for no volume or no room",
            [_metric(ns, "Paused", dims, stat="Maximum")],
            {"yAxis": {"left": {"min": 0, "max": 1}}},
        ),
        (
            "Days until full (forecast)",
            [_metric(ns, "DaysUntilFull", dims, stat="Minimum")],
            {
                "annotations": {"horizontal": [{"label": "alert", "value": days_until_full}]},
                "yAxis": {"left": {"min": 0}},
            },
        ),
    ]


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
        2 * WIDTH,
        0,
        config.aws.region,
    )


def dashboard_body(config: Config, instances: list[dict[str, str]]) -> dict[str, Any]:
    """The dashboard JSON: a fleet row (dead-letter queue), then one row per instance."""
    ns = config.metrics.namespace
    region = config.aws.region
    dlq = config.queue.dead_letter_name
    queue = config.queue.name
    oldest_limit = config.alarms.oldest_message_minutes * 60
    widgets: list[dict[str, Any]] = [
        _widget(
            f"Dead-letter queue {dlq}",
            [_metric("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": dlq})],
            0,
            0,
            region,
            stat="Maximum",
        ),
        _widget(
            f"Oldest message in {queue} (s)",
            [_metric("AWS/SQS", "ApproximateAgeOfOldestMessage", {"QueueName": queue})],
            WIDTH,
            0,
            region,
            stat="Maximum",
            annotations={"horizontal": [{"label": "alarm", "value": oldest_limit}]},
        ),
        fleet_widget(config),
    ]
    no_backup_hours = config.alarms.no_backup_hours
    disk_limit = config.alarms.disk_used_percent or config.alerts.disk_used_percent
    ordered = sorted(instances, key=lambda d: sorted(d.items()))
    for row, dims in enumerate(ordered):
        y = HEIGHT + 1 + row * (ROW_LINES * HEIGHT + 1)
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
                (
                    {}
                    if no_backup_hours is None
                    else {
                        "annotations": {
                            "horizontal": [{"label": "no backup", "value": no_backup_hours * 3600}]
                        }
                    }
                ),
            ),
            *space_cells(ns, dims, config.alerts.days_until_full),
        ]
        for index, (title, metrics, extra) in enumerate(cells):
            line, column = divmod(index, PER_LINE)
            x = column * WIDTH
            widgets.append(_widget(title, metrics, x, y + line * HEIGHT, region, **extra))
    bottom = max((w["y"] + w["height"] for w in widgets), default=0) + 1
    widgets.extend(trend_widgets(config, ordered, bottom))
    return {"widgets": widgets}


def planned_body(config: Config, current: Mapping[str, str]) -> dict[str, Any]:
    """The body `dashboard --dry-run` prints, built without calling AWS: the fleet row and
    this instance's row (the other instances are found with ListMetrics when applied)."""
    return dashboard_body(config, [dict(current)])


def trend_widgets(config: Config, instances: list[dict[str, str]], y: int) -> list[dict[str, Any]]:
    """The trends below the instance rows: per instance, stored bytes and the dedup ratio
    (bytes backed up over bytes newly stored, per day) and backups per hour (days until
    full is on each instance's second line); for the fleet, restores, shares and removals
    per day, counted by the metric filters bootstrap puts on the audit log group
    (agent/audit/cloudwatch.py)."""
    ns = config.metrics.namespace
    region = config.aws.region
    widgets: list[dict[str, Any]] = []
    for row, dims in enumerate(instances):
        label = " ".join(dims.values())
        top = y + row * HEIGHT
        widgets.append(
            _widget(
                f"{label}: stored bytes and dedup ratio (per day)",
                [
                    _metric(ns, "BytesStored", dims, stat="Sum", id="stored"),
                    _metric(ns, "BytesBackedUp", dims, stat="Sum", id="backed", visible=False),
                    [
                        {
                            "expression": "IF(stored > 0, backed / stored, 0)",
                            "label": "dedup and compression ratio",
                            "id": "ratio",
                            "yAxis": "right",
                        }
                    ],
                ],
                0,
                top,
                region,
                period=86400,
            )
        )
        widgets.append(
            _widget(
                f"{label}: backups per hour",
                [_metric(ns, "BackupsSucceeded", dims, stat="Sum")],
                WIDTH,
                top,
                region,
                period=3600,
            )
        )
    if config.audit.log_group:
        widgets.append(
            _widget(
                "Restores, shares and removals per day (audit trail)",
                [
                    [ns, metric, {"stat": "Sum", "label": metric.removeprefix("Audit")}]
                    for metric, _pattern in METRIC_FILTERS.values()
                ],
                2 * WIDTH,
                y,
                region,
                period=86400,
            )
        )
    return widgets


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
